use super::*;
use uuid::Uuid;

fn tid(n: u128) -> Tid {
    Uuid::from_u128(n)
}

fn coord_with(parts: &[PartitionId]) -> (Coordinator, Tid) {
    let mut c = Coordinator::new(100, 100);
    let t = tid(1);
    c.begin(t, 0, 1_000).unwrap();
    for &p in parts {
        assert_eq!(c.enlist(t, p, 7, 10).0, Ok(1_000));
    }
    (c, t)
}

#[test]
fn all_yes_forces_commit_before_anyone_hears_committed() {
    let (mut c, t) = coord_with(&[0, 1]);
    let a = c.commit_requested(t, 20, true).unwrap();
    assert_eq!(a, vec![Action::SendPrepare(t, 0), Action::SendPrepare(t, 1)]);
    assert_eq!(c.vote(t, 0, Vote::Yes), vec![]);
    // The last YES asks for the record to be forced; no reply, no commit yet.
    assert_eq!(c.vote(t, 1, Vote::Yes), vec![Action::ForceCommit(t, vec![0, 1])]);
    assert_eq!(c.decision(t), DecisionAnswer::Pending);
    let a = c.commit_durable(t);
    assert_eq!(
        a,
        vec![
            Action::Reply(t, Outcome::Committed),
            Action::SendCommit(t, 0),
            Action::SendCommit(t, 1),
            Action::Decided(t, Outcome::Committed)
        ]
    );
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
    assert_eq!(c.commit_acked(t, 0), vec![]);
    assert_eq!(c.commit_acked(t, 1), vec![Action::LogFinished(t)]);
    assert_eq!(c.live_count(), 0);
    // Repeated commit and question after finishing: same answer (rule 11).
    assert_eq!(c.commit_requested(t, 30, true).unwrap(), vec![Action::Reply(t, Outcome::Committed)]);
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
}

#[test]
fn a_no_vote_aborts_and_tells_the_others() {
    let (mut c, t) = coord_with(&[0, 1, 2]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::Yes);
    let a = c.vote(t, 1, Vote::No("deadline passed".into()));
    assert_eq!(a[0], Action::SendAbort(t, 0));
    assert_eq!(a[1], Action::SendAbort(t, 2));
    assert!(matches!(&a[2], Action::Reply(_, Outcome::Aborted(why)) if why.contains("partition 1 voted NO")));
    // A late vote changes nothing.
    assert_eq!(c.vote(t, 2, Vote::Yes), vec![]);
    assert!(matches!(c.decision(t), DecisionAnswer::Aborted(_)));
    assert!(matches!(c.commit_requested(t, 30, true).unwrap()[0], Action::Reply(_, Outcome::Aborted(_))));
}

#[test]
fn read_only_votes_need_no_record_and_no_phase_two() {
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::ReadOnly);
    assert_eq!(
        c.vote(t, 1, Vote::ReadOnly),
        vec![Action::Reply(t, Outcome::Committed), Action::Decided(t, Outcome::Committed)]
    );
    // One writer among readers: the record names only the writer.
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::ReadOnly);
    assert_eq!(c.vote(t, 1, Vote::Yes), vec![Action::ForceCommit(t, vec![1])]);
}

#[test]
fn prepare_timeout_aborts() {
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::Yes);
    let a = c.prepare_timed_out(t, 1);
    assert!(a.contains(&Action::SendAbort(t, 0)));
    assert!(a.contains(&Action::SendAbort(t, 1)));
}

#[test]
fn abort_is_refused_once_the_decision_is_commit() {
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::Yes);
    c.vote(t, 1, Vote::Yes);
    assert_eq!(c.abort_requested(t, "client"), Err(Refusal::AlreadyCommitted));
    c.commit_durable(t);
    assert_eq!(c.abort_requested(t, "client"), Err(Refusal::AlreadyCommitted));
    c.commit_acked(t, 0);
    c.commit_acked(t, 1);
    assert_eq!(c.abort_requested(t, "client"), Err(Refusal::AlreadyCommitted));
}

#[test]
fn one_participant_commits_in_one_phase_after_the_delegation_is_durable() {
    let (mut c, t) = coord_with(&[3]);
    // No vote: the delegation is forced first, nothing is sent before.
    assert_eq!(c.commit_requested(t, 20, true).unwrap(), vec![Action::ForceDelegation(t, 3)]);
    assert_eq!(c.decision(t), DecisionAnswer::Pending);
    assert_eq!(c.abort_requested(t, "operator"), Err(Refusal::Delegated(3)));
    assert_eq!(c.delegation_durable(t), vec![Action::SendCommitOnePhase(t, 3)]);
    // Repeats change nothing; the participant's answer is the decision.
    assert_eq!(c.delegation_durable(t), vec![]);
    assert_eq!(c.commit_requested(t, 30, true).unwrap(), vec![]);
    assert_eq!(c.expire(5_000), vec![], "a delegated tid never expires: the participant decides");
    assert_eq!(c.decision(t), DecisionAnswer::Pending);
    let a = c.one_phase_outcome(t, Outcome::Committed);
    assert_eq!(
        a,
        vec![Action::Reply(t, Outcome::Committed), Action::LogFinished(t), Action::Decided(t, Outcome::Committed)]
    );
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
    assert_eq!(c.one_phase_outcome(t, Outcome::Aborted("late".into())), vec![], "a late answer changes nothing");
    assert_eq!(c.abort_requested(t, "client"), Err(Refusal::AlreadyCommitted));
}

#[test]
fn a_one_phase_abort_drops_the_delegation_and_recovery_asks_again() {
    let (mut c, t) = coord_with(&[0]);
    c.commit_requested(t, 20, true).unwrap();
    c.delegation_durable(t);
    let a = c.one_phase_outcome(t, Outcome::Aborted("lost in a restart".into()));
    assert!(matches!(&a[0], Action::Reply(_, Outcome::Aborted(_))));
    assert_eq!(a[1], Action::LogForget(t));
    assert!(matches!(c.decision(t), DecisionAnswer::Aborted(_)));
    // After a crash the record leads to asking again, never to presuming abort.
    let mut c = Coordinator::new(10, 10);
    assert_eq!(c.recover_delegated(t, 0, 0), vec![Action::SendCommitOnePhase(t, 0)]);
    assert_eq!(c.decision(t), DecisionAnswer::Pending);
    c.one_phase_outcome(t, Outcome::Committed);
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
}

#[test]
fn a_transaction_that_only_read_votes_instead_of_committing_in_one_phase() {
    // The client says it wrote nothing: a READ_ONLY vote costs no fsync,
    // where one phase would cost two. (A client that is wrong about it only
    // picks the slower path: its participant then votes YES.)
    let (mut c, t) = coord_with(&[0]);
    assert_eq!(c.commit_requested(t, 20, false).unwrap(), vec![Action::SendPrepare(t, 0)]);
    assert_eq!(
        c.vote(t, 0, Vote::ReadOnly),
        vec![Action::Reply(t, Outcome::Committed), Action::Decided(t, Outcome::Committed)]
    );
}

#[test]
fn one_phase_can_be_turned_off() {
    let mut c = Coordinator::new(10, 10).with_one_phase(false);
    let t = tid(1);
    c.begin(t, 0, 1_000).unwrap();
    c.enlist(t, 0, 7, 10).0.unwrap();
    assert_eq!(c.commit_requested(t, 20, true).unwrap(), vec![Action::SendPrepare(t, 0)]);
}

#[test]
fn enlist_rules() {
    let (mut c, t) = coord_with(&[0]);
    // Unknown tid.
    assert_eq!(c.enlist(tid(9), 0, 7, 10).0, Err(Refusal::UnknownTid));
    // Past the deadline.
    // Past the deadline: the tid aborts (in a coordinator of its own here).
    let (mut late, lt) = coord_with(&[0]);
    let (r, a) = late.enlist(lt, 1, 7, 1_000);
    assert!(matches!(r, Err(Refusal::Aborted(why)) if why.contains("deadline")));
    assert!(a.contains(&Action::SendAbort(lt, 0)));
    // Same partition, new incarnation: it lost the tid, which aborts.
    let (r, a) = c.enlist(t, 0, 8, 10);
    assert!(matches!(r, Err(Refusal::Aborted(_))));
    assert!(a.contains(&Action::SendAbort(t, 0)));
    assert!(matches!(c.decision(t), DecisionAnswer::Aborted(_)));
    // Once preparing, no new enlistments.
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    assert_eq!(c.enlist(t, 2, 7, 10).0, Err(Refusal::NotActive("preparing")));
    // Nor once delegated.
    let (mut c, t) = coord_with(&[0]);
    c.commit_requested(t, 20, true).unwrap();
    assert_eq!(c.enlist(t, 1, 7, 10).0, Err(Refusal::NotActive("delegating")));
}

#[test]
fn expiry_aborts_only_active_tids_past_their_deadline() {
    let (mut c, t) = coord_with(&[0]);
    assert_eq!(c.expire(999), vec![]);
    let a = c.expire(1_000);
    assert_eq!(a[0], Action::SendAbort(t, 0));
    assert!(matches!(c.decision(t), DecisionAnswer::Aborted(_)));
}

#[test]
fn recovery_redrives_phase_two() {
    let mut c = Coordinator::new(10, 10);
    let t = tid(5);
    assert_eq!(c.recover_commit(t, &[0, 2], 0), vec![Action::SendCommit(t, 0), Action::SendCommit(t, 2)]);
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
    c.commit_acked(t, 2);
    assert_eq!(c.commit_acked(t, 0), vec![Action::LogFinished(t)]);
    // Unknown tids are presumed aborted.
    assert!(matches!(c.decision(tid(6)), DecisionAnswer::Aborted(_)));
}

#[test]
fn open_transactions_are_bounded_and_finished_outcomes_too() {
    let mut c = Coordinator::new(2, 2);
    c.begin(tid(1), 0, 10).unwrap();
    c.begin(tid(2), 0, 10).unwrap();
    assert_eq!(c.begin(tid(3), 0, 10), Err(Refusal::TooManyOpen(2)));
    for n in 1..=2 {
        c.commit_requested(tid(n), 1, true).unwrap();
    }
    c.begin(tid(3), 0, 10).unwrap();
    c.commit_requested(tid(3), 1, true).unwrap();
    // Only the last two outcomes are remembered; the forgotten commit is
    // not presumed aborted (rule 6).
    assert_eq!(c.decision(tid(1)), DecisionAnswer::Forgotten);
    assert_eq!(c.decision(tid(3)), DecisionAnswer::Committed);
}

#[test]
fn a_forgotten_commit_is_never_answered_aborted_to_a_client() {
    let mut c = Coordinator::new(10, 1);
    for n in 1..=3 {
        c.begin(tid(n), 0, 10).unwrap();
        c.commit_requested(tid(n), 1, true).unwrap();
    }
    assert_eq!(c.forgotten_through(), Some(tid(2)));
    for old in [tid(1), tid(2)] {
        assert_eq!(c.decision(old), DecisionAnswer::Forgotten);
        assert_eq!(c.commit_requested(old, 2, true), Err(Refusal::Forgotten));
        assert_eq!(c.abort_requested(old, "operator"), Err(Refusal::Forgotten));
        assert_eq!(c.enlist(old, 0, 1, 2).0, Err(Refusal::Forgotten));
        // A participant asking about its YES vote still hears presumed abort.
        assert_eq!(c.decision_for_voter(old), DecisionAnswer::Aborted(presumed()));
    }
    assert_eq!(c.decision(tid(3)), DecisionAnswer::Committed);
    // Unknown and newer than the mark: presumed abort, the same answer
    // whether asked with GetDecision or Commit.
    assert_eq!(c.decision(tid(9)), DecisionAnswer::Aborted(presumed()));
    assert_eq!(c.commit_requested(tid(9), 2, true), Ok(vec![Action::Reply(tid(9), Outcome::Aborted(presumed()))]));
    assert_eq!(c.abort_requested(tid(9), "operator"), Ok(vec![]));
}

#[test]
fn forgotten_aborts_move_no_mark_and_the_mark_only_grows() {
    let mut c = Coordinator::new(10, 1);
    for n in 1..=3 {
        c.begin(tid(n), 0, 10).unwrap();
        c.abort_requested(tid(n), "client").unwrap();
    }
    assert_eq!(c.forgotten_through(), None);
    assert!(matches!(c.decision(tid(1)), DecisionAnswer::Aborted(_)));
    c.forgot_through(tid(5));
    c.forgot_through(tid(4));
    assert_eq!(c.forgotten_through(), Some(tid(5)));
    assert_eq!(c.decision(tid(1)), DecisionAnswer::Forgotten, "the log's mark covers it");
    // A remembered outcome is answered whatever the mark.
    assert!(matches!(c.decision(tid(3)), DecisionAnswer::Aborted(_)));
    c.begin(tid(4), 0, 10).unwrap();
    assert_eq!(c.decision(tid(4)), DecisionAnswer::Pending, "a live tid is known");
}

#[test]
fn forget_finished_forgets_one_tid_at_once() {
    let mut c = Coordinator::new(10, 10);
    c.begin(tid(1), 0, 10).unwrap();
    c.commit_requested(tid(1), 1, true).unwrap();
    c.forget_finished(tid(1));
    assert_eq!(c.decision(tid(1)), DecisionAnswer::Forgotten);
    let mut dishonest = Coordinator::new(10, 10).with_dishonest_forgotten_answers();
    dishonest.recover_finished(tid(1));
    dishonest.forget_finished(tid(1));
    assert!(matches!(dishonest.decision(tid(1)), DecisionAnswer::Aborted(_)), "the bug the model must catch");
}

#[test]
fn aborts_never_push_out_remembered_commits() {
    let mut c = Coordinator::new(10, 2);
    c.begin(tid(1), 0, 10).unwrap();
    c.commit_requested(tid(1), 1, true).unwrap();
    for n in 2..20 {
        c.begin(tid(n), 0, 10).unwrap();
        c.abort_requested(tid(n), "client").unwrap();
    }
    assert_eq!(c.decision(tid(1)), DecisionAnswer::Committed);
}

#[test]
fn a_record_certainly_not_written_aborts_the_tid_and_tells_the_yes_voters() {
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::Yes);
    c.vote(t, 1, Vote::ReadOnly);
    let full = AbortReason::new(AbortKind::DiskFull, "the disk is full");
    let a = c.record_not_written(t, full.clone());
    let aborted = Outcome::Aborted(full.clone());
    assert_eq!(a, vec![Action::SendAbort(t, 0), Action::Reply(t, aborted.clone()), Action::Decided(t, aborted)]);
    assert_eq!(c.decision(t), DecisionAnswer::Aborted(full.clone()));
    // A late durability report (impossible, but idempotent) changes nothing.
    assert_eq!(c.commit_durable(t), vec![]);
    // One-phase: the DELEGATED record was not written, the participant never heard.
    let (mut c, t) = coord_with(&[0]);
    assert_eq!(c.commit_requested(t, 20, true).unwrap(), vec![Action::ForceDelegation(t, 0)]);
    let a = c.record_not_written(t, full.clone());
    let aborted = Outcome::Aborted(full.clone());
    assert_eq!(a, vec![Action::SendAbort(t, 0), Action::Reply(t, aborted.clone()), Action::Decided(t, aborted)]);
    // Once the record is durable, the tid is committed: this event cannot abort it.
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.vote(t, 0, Vote::Yes);
    c.vote(t, 1, Vote::Yes);
    c.commit_durable(t);
    assert_eq!(c.record_not_written(t, full), vec![]);
    assert_eq!(c.decision(t), DecisionAnswer::Committed);
}

/// Rule 4 and counting: the participant's reason keeps its kind through the
/// vote, and an outcome is `Decided` once per tid, never for a repeat.
#[test]
fn the_real_reason_is_kept_and_each_outcome_is_decided_once() {
    use crate::reason::{AbortKind, AbortReason};
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    let conflict = AbortReason::new(AbortKind::Conflict, "partition 1: lock conflict on key \"k\" with older tid x");
    let a = c.vote(t, 1, Vote::No(conflict));
    let decided: Vec<_> = a.iter().filter(|a| matches!(a, Action::Decided(..))).collect();
    assert_eq!(decided.len(), 1, "{a:?}");
    let DecisionAnswer::Aborted(why) = c.decision(t) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::Conflict);
    assert!(why.contains("partition 1 voted NO") && why.contains("lock conflict"), "{why}");
    // Repeats: a Reply with the same reason, no new Decided; a later abort
    // (the client's) does not replace the reason.
    for _ in 0..3 {
        let a = c.commit_requested(t, 30, true).unwrap();
        assert!(matches!(&a[..], [Action::Reply(_, Outcome::Aborted(w))] if w.kind == AbortKind::Conflict), "{a:?}");
        assert_eq!(c.abort_requested(t, AbortReason::new(AbortKind::Client, "client")), Ok(vec![]));
    }
    // A committed tid: Decided once, at the durable record.
    let (mut c, t) = coord_with(&[0]);
    c.commit_requested(t, 20, false).unwrap();
    c.vote(t, 0, Vote::Yes);
    let a = c.commit_durable(t);
    assert_eq!(a.iter().filter(|a| matches!(a, Action::Decided(_, Outcome::Committed))).count(), 1);
    assert!(c.commit_requested(t, 30, false).unwrap().iter().all(|a| !matches!(a, Action::Decided(..))));
    c.commit_acked(t, 0);
    assert_eq!(c.commit_requested(t, 30, false).unwrap(), vec![Action::Reply(t, Outcome::Committed)]);
    // A failed prepare is the coordinator's own reason: unreachable.
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    c.prepare_timed_out(t, 0);
    let DecisionAnswer::Aborted(why) = c.decision(t) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::ParticipantUnreachable);
    // Deadline, and a restarted participant at enlistment.
    let (mut c, t) = coord_with(&[0]);
    c.expire(1_000);
    let DecisionAnswer::Aborted(why) = c.decision(t) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::Deadline);
    let (mut c, t) = coord_with(&[0]);
    let _ = c.enlist(t, 0, 8, 10);
    let DecisionAnswer::Aborted(why) = c.decision(t) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::ParticipantRestarted);
}

/// A presumed abort of a tid begun before this coordinator started says
/// its coordinator restarted (or was replaced); a later unknown tid is
/// only unknown.
#[test]
fn a_predecessors_tid_is_presumed_aborted_because_the_coordinator_restarted() {
    use crate::reason::AbortKind;
    let before = Uuid::now_v7();
    let start = before.get_timestamp().unwrap().to_unix().0 * 1000 + 1_000;
    let c = Coordinator::new(10, 10).with_start(start);
    let DecisionAnswer::Aborted(why) = c.decision(before) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::CoordinatorRestarted, "{why}");
    let c = Coordinator::new(10, 10).with_start(0);
    let DecisionAnswer::Aborted(why) = c.decision(before) else { panic!("not aborted") };
    assert_eq!(why.kind, AbortKind::Unknown, "{why}");
}

/// The presumed abort of an unknown tid newer than the mark, from a
/// coordinator that did not restart since it was begun.
fn presumed() -> crate::reason::AbortReason {
    crate::reason::AbortReason::new(crate::reason::AbortKind::Unknown, PRESUMED)
}

#[test]
fn a_reserved_tid_counts_against_the_bound_and_starts_its_deadline_at_first_use() {
    let mut c = Coordinator::new(4, 100);
    let block = [tid(10), tid(11), tid(12)];
    c.reserve(&block, 0, 500, false).unwrap();
    assert_eq!((c.live_count(), c.reserved_count()), (0, 3));
    // A block that does not fit whole is refused; so is a Begin past the bound.
    assert_eq!(c.reserve(&[tid(20), tid(21)], 0, 500, false), Err(Refusal::TooManyOpen(4)));
    c.begin(tid(1), 0, 100_000).unwrap();
    assert_eq!(c.begin(tid(2), 0, 100_000), Err(Refusal::TooManyOpen(4)));
    let too_big: Vec<Tid> = (100..100 + MAX_BLOCK as u128 + 1).map(tid).collect();
    assert_eq!(Coordinator::new(1_000, 10).reserve(&too_big, 0, 5, false), Err(Refusal::TooManyOpen(1_000)));
    // Known: PENDING, not presumed aborted.
    assert_eq!(c.decision(tid(10)), DecisionAnswer::Pending);
    assert!(c.remembers(tid(10)));
    // The first enlistment starts the deadline: 500 after it, not after the reservation.
    assert_eq!(c.enlist(tid(10), 0, 1, 10_000).0, Ok(10_500));
    assert_eq!((c.live_count(), c.reserved_count()), (2, 2));
    assert!(c.expire(10_499).is_empty());
    assert!(matches!(c.expire(10_500).as_slice(), [Action::SendAbort(..), Action::Reply(..), Action::Decided(..)]));
    // A commit is a first use too (nothing enlisted: trivially committed).
    assert_eq!(c.commit_requested(tid(11), 10_600, false).unwrap()[0], Action::Reply(tid(11), Outcome::Committed));
    // So is an abort, which is remembered with its reason.
    assert_eq!(c.abort_requested(tid(12), AbortReason::new(AbortKind::Client, "no")).unwrap().len(), 2);
    assert!(matches!(c.decision(tid(12)), DecisionAnswer::Aborted(why) if why.kind == AbortKind::Client));
    assert_eq!(c.reserved_count(), 0);
}

/// A pool draws a tid up to half the unused bound after its reservation
/// and uses it until its timeout after that: with a long timeout the tid
/// is kept that long.
#[test]
fn an_unused_reserved_tid_with_a_long_timeout_is_kept_until_a_late_draw_times_out() {
    let mut c = Coordinator::new(10, 100);
    c.reserve(&[tid(10)], 1_000, 60_000, false).unwrap();
    let until = 1_000 + RESERVED_UNUSED_MS / 2 + 60_000;
    assert!(c.expire(until - 1).is_empty());
    assert_eq!(c.reserved_count(), 1);
    assert_eq!(c.enlist(tid(10), 0, 1, until - 1).0, Ok(until - 1 + 60_000));
    let mut c = Coordinator::new(10, 100);
    c.reserve(&[tid(10)], 1_000, 60_000, false).unwrap();
    assert!(c.expire(until).is_empty());
    assert_eq!(c.reserved_count(), 0);
}

#[test]
fn an_unused_reserved_tid_is_dropped_silently_and_then_presumed_aborted() {
    let mut c = Coordinator::new(10, 100);
    c.reserve(&[tid(10), tid(11)], 1_000, 500, false).unwrap();
    assert!(c.expire(1_000 + RESERVED_UNUSED_MS - 1).is_empty());
    assert_eq!(c.reserved_count(), 2);
    // Dropped: no action (no abort sent, no decision counted or logged).
    assert!(c.expire(1_000 + RESERVED_UNUSED_MS).is_empty());
    assert_eq!((c.reserved_count(), c.live_count()), (0, 0));
    assert!(matches!(c.decision(tid(10)), DecisionAnswer::Aborted(why) if why.kind == AbortKind::Unknown));
    assert_eq!(c.enlist(tid(10), 0, 1, 40_000).0, Err(Refusal::UnknownTid));
    assert!(matches!(c.commit_requested(tid(11), 40_000, true).unwrap()[0], Action::Reply(_, Outcome::Aborted(_))));
    // The bound is free again.
    c.reserve(&(20..30).map(tid).collect::<Vec<_>>(), 40_000, 500, false).unwrap();
}

fn declared(parts: &[(PartitionId, u64)]) -> BTreeMap<PartitionId, u64> {
    parts.iter().copied().collect()
}

#[test]
fn a_declared_commit_prepares_declared_and_enlisted_partitions_with_their_counts() {
    let mut c = Coordinator::new(100, 100);
    let t = tid(1);
    c.begin_declaring(t, 0, 1_000, true).unwrap();
    // Partition 0 enlisted in the background already; 1 has not yet.
    c.enlist(t, 0, 7, 5).0.unwrap();
    let a = c.commit_declared(t, 20, true, Some(&declared(&[(0, 2), (1, 1)]))).unwrap();
    assert_eq!(a, vec![Action::SendPrepare(t, 0), Action::SendPrepare(t, 1)]);
    assert_eq!((c.declared_count(t, 0), c.declared_count(t, 1)), (Some(2), Some(1)));
    // Partition 1's enlistment lands during prepare: accepted, not refused.
    assert_eq!(c.enlist(t, 1, 9, 25).0, Ok(1_000));
    // An undeclared partition is refused during prepare, as before.
    assert_eq!(c.enlist(t, 2, 7, 25).0, Err(Refusal::NotActive("preparing")));
    c.vote(t, 0, Vote::Yes);
    assert_eq!(c.vote(t, 1, Vote::Yes), vec![Action::ForceCommit(t, vec![0, 1])]);
    // Another incarnation of a declared partition while preparing: it
    // restarted and lost the tid, which aborts at once with that cause.
    let t2 = tid(2);
    c.begin_declaring(t2, 0, 1_000, true).unwrap();
    c.enlist(t2, 0, 7, 5).0.unwrap();
    c.commit_declared(t2, 20, true, Some(&declared(&[(0, 1), (1, 1)]))).unwrap();
    let (r, a) = c.enlist(t2, 0, 8, 25);
    assert!(matches!(r, Err(Refusal::Aborted(why)) if why.kind == AbortKind::ParticipantRestarted));
    assert!(a.contains(&Action::SendAbort(t2, 0)) && a.contains(&Action::SendAbort(t2, 1)), "{a:?}");
}

#[test]
fn a_partition_enlisted_but_not_declared_aborts_the_commit() {
    let mut c = Coordinator::new(100, 100);
    let t = tid(1);
    c.begin_declaring(t, 0, 1_000, true).unwrap();
    c.enlist(t, 0, 7, 5).0.unwrap();
    c.enlist(t, 1, 7, 5).0.unwrap();
    let a = c.commit_declared(t, 20, true, Some(&declared(&[(0, 1)]))).unwrap();
    assert!(a.contains(&Action::SendAbort(t, 0)) && a.contains(&Action::SendAbort(t, 1)), "{a:?}");
    let DecisionAnswer::Aborted(why) = c.decision(t) else { panic!("{:?}", c.decision(t)) };
    assert_eq!(why.kind, AbortKind::DeclarationMismatch);
    assert!(why.contains("[1]"), "{why}");
}

#[test]
fn a_declaring_tid_refuses_a_commit_without_a_declaration() {
    let mut c = Coordinator::new(100, 100);
    let t = tid(1);
    c.begin_declaring(t, 0, 1_000, true).unwrap();
    c.enlist(t, 0, 7, 5).0.unwrap();
    assert_eq!(c.commit_requested(t, 20, true), Err(Refusal::MustDeclare));
    assert_eq!(c.decision(t), DecisionAnswer::Pending, "still open: its client may commit it");
    // A tid begun without `declares` commits without one, as before.
    let (mut c, t) = coord_with(&[0, 1]);
    assert_eq!(c.commit_requested(t, 20, true).unwrap().len(), 2);
}

#[test]
fn a_declared_single_partition_not_yet_enlisted_commits_in_one_phase() {
    let mut c = Coordinator::new(100, 100);
    let t = tid(1);
    c.begin_declaring(t, 0, 1_000, true).unwrap();
    assert_eq!(
        c.commit_declared(t, 20, true, Some(&declared(&[(3, 4)]))).unwrap(),
        vec![Action::ForceDelegation(t, 3)]
    );
    assert_eq!(c.declared_count(t, 3), Some(4));
    // Its enlistment may land while delegated.
    assert_eq!(c.enlist(t, 3, 7, 25).0, Ok(1_000));
    // Nothing declared and nothing enlisted: trivially committed.
    let t2 = tid(2);
    c.begin_declaring(t2, 0, 1_000, true).unwrap();
    assert!(
        c.commit_declared(t2, 20, true, Some(&declared(&[]))).unwrap().contains(&Action::Reply(t2, Outcome::Committed))
    );
}

#[test]
fn a_repeated_enlistment_while_preparing_is_refused_not_taken_for_a_restart() {
    // Rule 11: the same incarnation enlisting again (a retried EnlistBatch,
    // two first operations at once) changes nothing; only another
    // incarnation means the partition restarted.
    let (mut c, t) = coord_with(&[0, 1]);
    c.commit_requested(t, 20, true).unwrap();
    assert_eq!(c.enlist(t, 0, 7, 25), (Err(Refusal::NotActive("preparing")), vec![]));
    assert_eq!(c.decision(t), DecisionAnswer::Pending);
    let (r, a) = c.enlist(t, 0, 8, 25);
    assert!(matches!(r, Err(Refusal::Aborted(why)) if why.kind == AbortKind::ParticipantRestarted));
    assert!(a.contains(&Action::SendAbort(t, 1)), "{a:?}");
}
