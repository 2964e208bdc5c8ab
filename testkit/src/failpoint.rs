//! Typed failpoints: every named crash point of the coordinator and the
//! participant, with the protocol step it stops at and the crash-matrix row
//! (PROTOCOL.md, C1-C15) a crash there tests; and typed actions.
//!
//! The processes need a build with failpoints (the default `failpoints`
//! feature of the `twopc` binary); a production build has none and refuses
//! to arm them.

use std::fmt;
use std::time::Duration;

/// Which kind of process carries a failpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Participant,
}

/// A named crash point. Arm it with [`crate::Cluster::arm`]; its
/// [`Failpoint::name`] is what `FAILPOINTS` and `twopc failpoint` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failpoint {
    /// Coordinator, all votes YES, before its COMMIT record is durable.
    /// **C1**: no record, so the tid aborts everywhere; the client learns
    /// ABORTED (or UNAVAILABLE, then ABORTED when it asks).
    BeforeDecisionForced,
    /// Coordinator, COMMIT record durable, before any commit is sent.
    /// **C2** (and **C9** with a participant down too): after a restart
    /// every participant commits; the client asking hears COMMITTED.
    AfterDecisionForced,
    /// Coordinator, after one participant acknowledged its commit.
    /// **C3**: after a restart the rest commit.
    AfterCommitAcked,
    /// Coordinator, one-phase commit (a tid that touched one partition),
    /// before its DELEGATED record is durable. **C1** for one phase: the tid aborts.
    BeforeDelegationForced,
    /// Coordinator, one-phase commit, DELEGATED record durable, nothing
    /// sent. **C2** for one phase: recovery hands the decision over again.
    AfterDelegationForced,
    /// Participant, on prepare, before its prepared state is durable.
    /// **C4** (with [`Action::Sleep`], **C10**: a slow participant the
    /// coordinator times out): the tid aborts everywhere.
    BeforePrepareDurable,
    /// Participant, prepared state durable, before its YES vote is sent.
    /// **C5**: the coordinator times out and aborts; the restarted
    /// participant learns ABORTED and its data is unchanged.
    AfterPrepareDurable,
    /// Participant, voted YES, the decision COMMIT arrived, before it is
    /// applied. **C6**: in doubt; on restart it re-takes its locks, learns
    /// COMMIT and applies it.
    BeforeCommitApplied,
    /// Participant, commit applied, before acknowledging. **C7**: the
    /// coordinator re-sends; the participant acknowledges without applying twice.
    AfterCommitApplied,
    /// Participant, one-phase commit, before its commit is durable: the tid aborts.
    BeforeOnePhaseApplied,
    /// Participant, one-phase commit durable, answer not sent: the repeat
    /// answers COMMITTED from its record, never applying twice.
    AfterOnePhaseApplied,
    /// Participant, manual (heuristic) resolution, before it is durable:
    /// with [`Action::Error`] the write fails and the tid is in doubt again.
    BeforeHeuristicDurable,
    /// Participant, a put or delete applied to the tid's buffered writes,
    /// before its answer. With [`Action::Error`] the client hears an error
    /// for a write the participant holds: the client library then aborts
    /// the tid, so nothing of it commits (a failed operation aborts its
    /// transaction).
    AfterWriteApplied,
}

impl Failpoint {
    /// Every failpoint.
    pub const ALL: [Failpoint; 13] = [
        Failpoint::BeforeDecisionForced,
        Failpoint::AfterDecisionForced,
        Failpoint::AfterCommitAcked,
        Failpoint::BeforeDelegationForced,
        Failpoint::AfterDelegationForced,
        Failpoint::BeforePrepareDurable,
        Failpoint::AfterPrepareDurable,
        Failpoint::BeforeCommitApplied,
        Failpoint::AfterCommitApplied,
        Failpoint::BeforeOnePhaseApplied,
        Failpoint::AfterOnePhaseApplied,
        Failpoint::BeforeHeuristicDurable,
        Failpoint::AfterWriteApplied,
    ];

    /// The name the processes know it by (`coordinator::after_decision_forced`).
    pub fn name(self) -> &'static str {
        match self {
            Failpoint::BeforeDecisionForced => "coordinator::before_decision_forced",
            Failpoint::AfterDecisionForced => "coordinator::after_decision_forced",
            Failpoint::AfterCommitAcked => "coordinator::after_commit_acked",
            Failpoint::BeforeDelegationForced => "coordinator::before_delegation_forced",
            Failpoint::AfterDelegationForced => "coordinator::after_delegation_forced",
            Failpoint::BeforePrepareDurable => "participant::before_prepare_durable",
            Failpoint::AfterPrepareDurable => "participant::after_prepare_durable",
            Failpoint::BeforeCommitApplied => "participant::before_commit_applied",
            Failpoint::AfterCommitApplied => "participant::after_commit_applied",
            Failpoint::BeforeOnePhaseApplied => "participant::before_one_phase_applied",
            Failpoint::AfterOnePhaseApplied => "participant::after_one_phase_applied",
            Failpoint::BeforeHeuristicDurable => "participant::before_heuristic_durable",
            Failpoint::AfterWriteApplied => "participant::after_write_applied",
        }
    }

    /// Which process carries it.
    pub fn role(self) -> Role {
        if self.name().starts_with("coordinator::") { Role::Coordinator } else { Role::Participant }
    }

    /// The crash-matrix row(s) of PROTOCOL.md a crash here tests (`"-"`:
    /// none, e.g. manual resolution).
    pub fn crash_matrix_row(self) -> &'static str {
        match self {
            Failpoint::BeforeDecisionForced | Failpoint::BeforeDelegationForced => "C1",
            Failpoint::AfterDecisionForced | Failpoint::AfterDelegationForced => "C2",
            Failpoint::AfterCommitAcked => "C3",
            Failpoint::BeforePrepareDurable | Failpoint::BeforeOnePhaseApplied => "C4",
            Failpoint::AfterPrepareDurable => "C5",
            Failpoint::BeforeCommitApplied => "C6",
            Failpoint::AfterCommitApplied | Failpoint::AfterOnePhaseApplied => "C7",
            Failpoint::BeforeHeuristicDurable | Failpoint::AfterWriteApplied => "-",
        }
    }
}

impl fmt::Display for Failpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Failpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Failpoint::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Failpoint::ALL.iter().map(|f| f.name()).collect();
            format!("{s:?} is not a failpoint; known: {}", names.join(", "))
        })
    }
}

/// What an armed failpoint does when its step is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL the process on the spot, like `kill -9`: nothing is flushed.
    Kill,
    /// Make the step fail with an error (the process handles it).
    Error,
    /// Sleep this long (in whole milliseconds, rounded up), then go on: a
    /// slow disk or a slow peer.
    Sleep(Duration),
    /// Hold the step until the failpoint is disarmed (or re-armed). Only
    /// that step waits: the process keeps answering everything else, the
    /// disarm included (`twopc_proto::failpoint`). A `Sleep` likewise ends
    /// early when its point is disarmed.
    Pause,
    /// Do nothing (useful in a sequence: `Off.times(2).then(Kill)` kills at the third hit).
    Off,
    /// Do `action` at the next `n` hits only, then nothing.
    Times(u32, Box<Action>),
    /// Do the first until its count runs out, then the second.
    Then(Box<Action>, Box<Action>),
}

impl Action {
    /// This action at the next hit only.
    pub fn once(self) -> Action {
        self.times(1)
    }

    /// This action at the next `n` hits only.
    pub fn times(self, n: u32) -> Action {
        Action::Times(n, Box::new(self))
    }

    /// This action (give it a count), then `next`.
    pub fn then(self, next: Action) -> Action {
        Action::Then(Box::new(self), Box::new(next))
    }

    /// Whether the processes can be armed with exactly this action.
    /// fail-rs actions are a flat chain `[cnt*]task->[cnt*]task->...`, so a
    /// count around a count or around a chain cannot be written (and
    /// `Error.then(Kill).times(2)` would render as `2*return(error)->return(abort)`,
    /// which means "error twice, then kill", not what the value says), and a
    /// step without a count before `then` never ends, so what follows it
    /// would never run. [`crate::Cluster::arm`] refuses such actions with
    /// this message instead of arming something else.
    pub fn check(&self) -> Result<(), String> {
        fn steps<'a>(a: &'a Action, out: &mut Vec<&'a Action>) {
            match a {
                Action::Then(first, next) => {
                    steps(first, out);
                    steps(next, out);
                }
                other => out.push(other),
            }
        }
        let mut chain = vec![];
        steps(self, &mut chain);
        let bad = |why: &str| Err(format!("action {:?} cannot be armed: {why}", self.spec()));
        for (i, step) in chain.iter().enumerate() {
            match step {
                Action::Times(_, inner) if matches!(**inner, Action::Times(..) | Action::Then(..)) => {
                    return bad(
                        "a count applies to one action, not to a counted action or a sequence (fail-rs chains \
                         are flat: write a.times(n).then(b.times(m)))",
                    );
                }
                Action::Times(..) => {}
                _ if i + 1 < chain.len() => {
                    return bad("every action before `then` needs a count (.once() or .times(n)), or it never ends");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The fail-rs action string (`return(abort)`, `1*sleep(500)`, ...).
    pub fn spec(&self) -> String {
        match self {
            Action::Kill => "return(abort)".into(),
            Action::Error => "return(error)".into(),
            // Whole milliseconds, rounded up: a sub-millisecond sleep
            // must not silently become no sleep at all.
            Action::Sleep(d) => format!("sleep({})", d.as_nanos().div_ceil(1_000_000)),
            Action::Pause => "pause".into(),
            Action::Off => "off".into(),
            Action::Times(n, a) => format!("{n}*{}", a.spec()),
            Action::Then(a, b) => format!("{}->{}", a.spec(), b.spec()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed names are exactly the servers' protocol-step failpoints
    /// (`twopc_coordinator::FAILPOINTS`, `twopc_participant::FAILPOINTS`,
    /// each checked there against its sources; the test hooks of another
    /// prefix, e.g. `store::max_page_count`, are not crash points): the
    /// enum cannot drift from the code.
    #[test]
    fn names_match_the_servers_lists() {
        for f in Failpoint::ALL {
            let list = match f.role() {
                Role::Coordinator => twopc_coordinator::FAILPOINTS,
                Role::Participant => twopc_participant::FAILPOINTS,
            };
            assert!(list.contains(&f.name()), "{} is not a failpoint of its role", f.name());
            assert_eq!(f.name().parse::<Failpoint>().unwrap(), f);
        }
        for name in twopc_coordinator::FAILPOINTS.iter().chain(twopc_participant::FAILPOINTS) {
            if name.starts_with("coordinator::") || name.starts_with("participant::") {
                assert!(name.parse::<Failpoint>().is_ok(), "failpoint {name} has no variant");
            }
        }
    }

    #[test]
    fn actions_render_as_fail_rs_specs() {
        assert_eq!(Action::Kill.spec(), "return(abort)");
        assert_eq!(Action::Sleep(Duration::from_millis(500)).once().spec(), "1*sleep(500)");
        assert_eq!(Action::Off.times(2).then(Action::Kill).spec(), "2*off->return(abort)");
        assert_eq!(Action::Sleep(Duration::from_micros(400)).spec(), "sleep(1)", "never rounded down to no sleep");
        assert_eq!(Action::Sleep(Duration::from_micros(1500)).spec(), "sleep(2)");
        assert_eq!(Action::Sleep(Duration::ZERO).spec(), "sleep(0)");
        assert_eq!(Failpoint::AfterPrepareDurable.role(), Role::Participant);
        assert_eq!(Failpoint::AfterDecisionForced.crash_matrix_row(), "C2");
    }

    /// fail-rs chains are flat (`[cnt*]task->...`): a count around a count
    /// or around a chain cannot be written, and `2*error->kill` would mean
    /// `(2*error)->kill`, not `Times(2, Then(Error, Kill))`; an uncounted
    /// step before `then` never ends, so its successor never runs. Such
    /// actions are refused before anything is sent.
    #[test]
    fn unrepresentable_actions_are_refused() {
        for bad in [
            Action::Kill.once().times(2),
            Action::Error.then(Action::Kill).times(2),
            Action::Kill.then(Action::Error),
            Action::Error.once().then(Action::Sleep(Duration::from_millis(5))).then(Action::Kill),
        ] {
            let e = bad.check().unwrap_err();
            assert!(e.contains(&bad.spec()), "{bad:?}: {e}");
        }
        for good in [
            Action::Kill,
            Action::Kill.once(),
            Action::Off.times(2).then(Action::Kill),
            Action::Pause.once().then(Action::Error.once()).then(Action::Off),
            Action::Sleep(Duration::from_millis(5)).times(3).then(Action::Kill.once().then(Action::Off)),
        ] {
            assert_eq!(good.check(), Ok(()), "{good:?}");
        }
    }
}
