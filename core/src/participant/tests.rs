use super::*;
use uuid::Uuid;

fn tid(n: u128) -> Tid {
    Uuid::from_u128(n)
}

fn part() -> Participant {
    Participant::new(0, Limits::default())
}

#[test]
fn write_prepare_commit_releases_locks_only_after_apply() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(b"1".to_vec()), 0).unwrap();
    assert_eq!(p.get(t, b"a", 0), Ok(ReadPlan::Own(Some(b"1".to_vec()))));
    assert_eq!(p.get(t, b"b", 0), Ok(ReadPlan::Store));
    let PrepareStep::Persist(ws) = p.prepare(t, 1) else { panic!("expected persist") };
    assert_eq!(ws.len(), 1);
    // No YES before the record is durable; after, a repeat answers YES.
    p.prepared_durable(t, 2).unwrap();
    assert_eq!(p.prepare(t, 3), PrepareStep::Yes);
    // Operations after prepare are refused.
    assert_eq!(p.write(t, b"c", None, 3), Err(OpError::NotActive("prepared")));
    assert_eq!(p.in_doubt().len(), 1);
    assert!(matches!(p.commit(t), Ok(CommitStep::Apply(_))));
    assert_eq!(p.locked_keys(), 2, "locks held while the commit is applied");
    p.commit_applied(t);
    assert_eq!(p.locked_keys(), 0);
    // A repeated commit for a forgotten tid is acknowledged.
    assert_eq!(p.commit(t), Ok(CommitStep::Ack));
}

#[test]
fn read_only_and_unknown_votes() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.get(t, b"a", 0).unwrap();
    assert_eq!(p.prepare(t, 1), PrepareStep::ReadOnly);
    assert_eq!(p.locked_keys(), 0);
    assert!(matches!(p.prepare(tid(2), 1), PrepareStep::No(_)));
}

#[test]
fn wait_die_older_waits_younger_dies() {
    let mut p = part();
    let (old, young) = (tid(1), tid(2));
    p.enlisted(old, 100).unwrap();
    p.enlisted(young, 100).unwrap();
    p.write(old, b"a", Some(vec![1]), 0).unwrap();
    p.write(young, b"b", Some(vec![1]), 0).unwrap();
    // The older tid waits for the younger holder; nothing changes.
    assert_eq!(p.write(old, b"b", Some(vec![2]), 0), Err(OpError::MustWait { holder: young }));
    assert!(p.knows(old));
    // The younger one asking for the older one's key dies and releases b.
    assert_eq!(p.get(young, b"a", 0), Err(OpError::LockConflict { holder: old }));
    assert!(!p.knows(young));
    assert!(p.aborted_here(young));
    // A later operation on it is refused rather than starting it afresh.
    assert!(matches!(p.enlisted(young, 100), Err(OpError::AlreadyAborted(_))));
    assert!(matches!(p.prepare(young, 1), PrepareStep::No(_)));
    // Now the older one gets b.
    p.write(old, b"b", Some(vec![2]), 0).unwrap();
    assert_eq!(p.locked_keys(), 2);
}

#[test]
fn deadline_aborts_unprepared_but_never_prepared_tids() {
    let mut p = part();
    let (t1, t2) = (tid(1), tid(2));
    p.enlisted(t1, 10).unwrap();
    p.enlisted(t2, 10).unwrap();
    p.write(t1, b"a", Some(vec![1]), 0).unwrap();
    p.write(t2, b"b", Some(vec![1]), 0).unwrap();
    assert!(matches!(p.prepare(t2, 5), PrepareStep::Persist(_)));
    p.prepared_durable(t2, 5).unwrap();
    assert_eq!(p.expire(10), vec![t1]);
    assert!(p.knows(t2), "a prepared tid waits for its decision (rule 10)");
    assert_eq!(p.locked_keys(), 1);
    // Deadline passed at prepare: NO.
    let t3 = tid(3);
    p.enlisted(t3, 10).unwrap();
    assert!(matches!(p.prepare(t3, 11), PrepareStep::No(_)));
}

#[test]
fn abort_while_persisting_makes_the_record_be_deleted() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(vec![1]), 0).unwrap();
    assert!(matches!(p.prepare(t, 1), PrepareStep::Persist(_)));
    assert_eq!(p.abort(t), Ok(AbortStep::Ack));
    // A duplicate prepare meanwhile is told to wait, never persisted twice.
    assert!(matches!(p.prepare(t, 1), PrepareStep::No(_)));
    assert_eq!(p.locked_keys(), 1, "locks stay until the stale record is deleted");
    assert!(p.prepared_durable(t, 2).is_err());
    p.prepare_failed(t, "write failed".into());
    assert_eq!(p.locked_keys(), 0);
    assert!(p.aborted_here(t));
}

#[test]
fn recovered_prepared_tids_retake_locks_and_ask_with_backoff() {
    let mut p = part();
    let t = tid(1);
    let mut ws = WriteSet::new();
    ws.insert(b"a".to_vec(), Some(vec![1]));
    p.recover_prepared(t, ws, 1_000);
    assert_eq!(p.locked_keys(), 1);
    let t2 = tid(2);
    p.enlisted(t2, 10_000).unwrap();
    // The prepared holder is done operating: the newcomer waits for it.
    assert_eq!(p.write(t2, b"a", None, 1_000), Err(OpError::MustWait { holder: t }));
    assert_eq!(p.due_questions(1_000), vec![t]);
    assert_eq!(p.due_questions(1_100), Vec::<Tid>::new());
    assert_eq!(p.due_questions(1_200), vec![t]);
    assert_eq!(p.due_questions(1_500), Vec::<Tid>::new(), "second backoff is 400 ms");
    assert_eq!(p.due_questions(1_600), vec![t]);
    assert_eq!(p.abort(t), Ok(AbortStep::DeletePrepared));
    assert_eq!(p.locked_keys(), 0);
}

#[test]
fn limits() {
    let mut p = Participant::new(0, Limits { max_ops_per_tid: 2, max_open_tids: 1, ..Limits::default() });
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    assert_eq!(p.enlisted(tid(2), 100), Err(OpError::TooManyTids(1)));
    p.write(t, b"a".as_slice(), None, 0).unwrap();
    p.write(t, b"b".as_slice(), None, 0).unwrap();
    assert_eq!(p.write(t, b"c".as_slice(), None, 0), Err(OpError::TooManyOps(2)));
}

#[test]
fn anyone_waits_for_a_prepared_holder_instead_of_dying() {
    let mut p = part();
    let (old, young) = (tid(1), tid(2));
    p.enlisted(old, 100).unwrap();
    p.enlisted(young, 100).unwrap();
    p.write(old, b"a", Some(vec![1]), 0).unwrap();
    assert!(matches!(p.prepare(old, 1), PrepareStep::Persist(_)));
    // The younger tid would die under plain wait-die; the holder is done
    // operating, so it waits for phase 2 instead.
    assert_eq!(p.write(young, b"a", Some(vec![2]), 1), Err(OpError::MustWait { holder: old }));
    assert!(p.knows(young));
    p.prepared_durable(old, 2).unwrap();
    assert!(matches!(p.commit(old), Ok(CommitStep::Apply(_))));
    p.commit_applied(old);
    p.write(young, b"a", Some(vec![2]), 3).unwrap();
}

#[test]
fn a_duplicate_prepare_while_persisting_is_not_persisted_again() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(vec![1]), 0).unwrap();
    assert!(matches!(p.prepare(t, 1), PrepareStep::Persist(_)));
    assert_eq!(p.prepare(t, 1), PrepareStep::InProgress);
    p.prepared_durable(t, 2).unwrap();
    assert_eq!(p.prepare(t, 3), PrepareStep::Yes);
}

#[test]
fn an_abort_for_an_unknown_tid_is_remembered() {
    let mut p = part();
    let t = tid(1);
    assert_eq!(p.abort(t), Ok(AbortStep::Ack));
    // The enlistment reply arriving afterwards must not start it afresh.
    assert!(matches!(p.enlisted(t, 100), Err(OpError::AlreadyAborted(_))));
}

#[test]
fn one_phase_commit_applies_an_active_tid_and_keeps_locks_until_durable() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(b"1".to_vec()), 0).unwrap();
    let OnePhaseStep::Apply(ws) = p.commit_one_phase(t, 1) else { panic!("expected apply") };
    assert_eq!(ws.len(), 1);
    assert_eq!(p.write(t, b"b", None, 2), Err(OpError::NotActive("committing")));
    assert_eq!(p.locked_keys(), 1, "locks held while the commit is applied");
    // A repeat while applying applies again (the store makes it a no-op).
    assert!(matches!(p.commit_one_phase(t, 2), OnePhaseStep::Apply(_)));
    assert_eq!(p.abort(t), Err(ResolveError::Committing), "no abort once the decision is being applied");
    p.commit_applied(t);
    assert_eq!(p.locked_keys(), 0);
    // Gone from memory: the shell answers from the store's record.
    assert_eq!(p.commit_one_phase(t, 3), OnePhaseStep::Unknown);
}

#[test]
fn one_phase_commit_of_a_lost_or_aborted_tid_is_an_abort_that_sticks() {
    let mut p = part();
    // Past its deadline: aborted here, and stays aborted.
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", None, 0).unwrap();
    assert!(matches!(p.commit_one_phase(t, 100), OnePhaseStep::Aborted(_)));
    assert_eq!(p.locked_keys(), 0);
    assert!(matches!(p.commit_one_phase(t, 101), OnePhaseStep::Aborted(_)));
    // Unknown (lost in a restart): the shell aborts it, which is remembered,
    // so a late enlistment cannot start it afresh.
    let u = tid(2);
    assert_eq!(p.commit_one_phase(u, 0), OnePhaseStep::Unknown);
    assert_eq!(p.abort(u), Ok(AbortStep::Ack));
    assert!(matches!(p.enlisted(u, 100), Err(OpError::AlreadyAborted(_))));
    assert!(matches!(p.commit_one_phase(u, 1), OnePhaseStep::Aborted(_)));
    // A prepared tid belongs to two-phase commit.
    let v = tid(3);
    p.enlisted(v, 100).unwrap();
    p.write(v, b"v", None, 0).unwrap();
    let _ = p.prepare(v, 1);
    assert!(matches!(p.commit_one_phase(v, 2), OnePhaseStep::Refused(_)));
}

/// A tid that wrote key `a` and is prepared (in doubt).
fn prepared(p: &mut Participant, t: Tid) {
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(b"1".to_vec()), 0).unwrap();
    assert!(matches!(p.prepare(t, 1), PrepareStep::Persist(_)));
    p.prepared_durable(t, 2).unwrap();
}

#[test]
fn heuristic_commit_holds_locks_until_durable_and_fences_the_coordinator_meanwhile() {
    let mut p = part();
    let t = tid(1);
    assert!(!p.has_prepared());
    prepared(&mut p, t);
    assert!(p.has_prepared());
    let ws = p.resolve_heuristically(t, true).unwrap().expect("a commit applies the write set");
    assert_eq!(ws.get(&b"a"[..]), Some(&Some(b"1".to_vec())));
    // Not in doubt any more, but the locks stay until the outcome is durable.
    assert!(p.in_doubt().is_empty());
    assert_eq!(p.locked_keys(), 1);
    // The coordinator's messages wait for the outcome (they are refused now,
    // acknowledged once it is applied); a repeat gives the same step; the
    // opposite outcome is refused.
    assert_eq!(p.commit(t), Err(ResolveError::Heuristic));
    assert_eq!(p.abort(t), Err(ResolveError::Heuristic));
    assert_eq!(p.prepare(t, 3), PrepareStep::Yes);
    assert_eq!(p.resolve_heuristically(t, true), Ok(Some(ws)));
    assert!(matches!(p.resolve_heuristically(t, false), Err(HeuristicError::Busy(_))));
    p.heuristic_applied(t);
    assert_eq!(p.locked_keys(), 0);
    assert!(!p.knows(t) && !p.has_prepared());
    assert_eq!(p.commit(t), Ok(CommitStep::Ack));
    assert!(matches!(p.resolve_heuristically(t, true), Err(HeuristicError::NotPrepared("unknown"))));
}

#[test]
fn a_heuristic_whose_write_failed_is_prepared_and_in_doubt_again() {
    let mut p = part();
    let t = tid(1);
    prepared(&mut p, t);
    let since = p.in_doubt()[0].since;
    assert_eq!(p.due_questions(since + 5_000), vec![t]);
    let ws = p.resolve_heuristically(t, false).unwrap();
    assert!(p.in_doubt().is_empty() && p.due_questions(since + 60_000).is_empty());
    p.heuristic_failed(t, since + 60_000);
    // Listed again as it was, still locked, asking at once.
    assert_eq!(p.in_doubt(), vec![InDoubt { tid: t, since, asked: 1 }]);
    assert_eq!(p.locked_keys(), 1);
    assert_eq!(p.due_questions(since + 60_000), vec![t]);
    // Open to the coordinator's decision, or to either outcome by hand.
    assert_eq!(p.resolve_heuristically(t, true).map(|w| w.is_some()), Ok(true));
    p.heuristic_failed(t, since + 60_000);
    assert_eq!(p.resolve_heuristically(t, false), Ok(ws));
    p.heuristic_failed(t, since + 60_000);
    assert!(matches!(p.commit(t), Ok(CommitStep::Apply(_))));
    // Only a tid resolving heuristically is touched.
    p.heuristic_failed(t, since + 60_000);
    assert!(matches!(p.abort(t), Err(ResolveError::Committing)));
}

#[test]
fn heuristic_abort_drops_the_write_set_and_is_remembered_as_aborted() {
    let mut p = part();
    let t = tid(1);
    prepared(&mut p, t);
    assert_eq!(p.resolve_heuristically(t, false), Ok(None));
    assert!(matches!(p.prepare(t, 3), PrepareStep::No(_)));
    p.heuristic_applied(t);
    assert_eq!(p.locked_keys(), 0);
    assert!(p.aborted_here(t));
    // Another tid can take the key now.
    let u = tid(2);
    p.enlisted(u, 100).unwrap();
    p.write(u, b"a", None, 3).unwrap();
}

#[test]
fn heuristics_only_for_prepared_tids() {
    let mut p = part();
    let (active, committing) = (tid(1), tid(2));
    p.enlisted(active, 100).unwrap();
    p.write(active, b"x", None, 0).unwrap();
    assert_eq!(p.resolve_heuristically(active, true), Err(HeuristicError::NotPrepared("active")));
    prepared(&mut p, committing);
    assert!(matches!(p.commit(committing), Ok(CommitStep::Apply(_))));
    assert!(matches!(p.resolve_heuristically(committing, false), Err(HeuristicError::Busy(_))));
    // heuristic_applied for a tid not resolving heuristically changes nothing.
    p.heuristic_applied(committing);
    assert!(p.knows(committing));
}

#[test]
fn a_newer_coordinator_term_aborts_unprepared_tids_of_older_terms_only() {
    let mut p = part();
    let (old, prepared, new) = (tid(1), tid(2), tid(3));
    assert!(p.coordinator_term(5).is_empty());
    p.enlisted_under(old, 1_000, 5).unwrap();
    p.write(old, b"k", Some(b"1".to_vec()), 0).unwrap();
    p.enlisted_under(prepared, 1_000, 5).unwrap();
    p.write(prepared, b"p", Some(b"1".to_vec()), 0).unwrap();
    let PrepareStep::Persist(_) = p.prepare(prepared, 1) else { panic!("expected persist") };
    p.prepared_durable(prepared, 2).unwrap();
    // The same term, or an older one, changes nothing.
    assert!(p.coordinator_term(5).is_empty());
    assert!(p.coordinator_term(4).is_empty());
    // A failover (or restart) to term 9: the unprepared tid is aborted and
    // its lock released at once; the prepared one stays in doubt (rule 10).
    assert_eq!(p.coordinator_term(9), vec![old]);
    assert!(p.aborted_here(old));
    assert_eq!(p.in_doubt().len(), 1);
    p.enlisted_under(new, 1_000, 9).unwrap();
    assert_eq!(p.write(new, b"k", Some(b"2".to_vec()), 3), Ok(()), "the old tid's lock is gone");
    // An enlistment answered late by the replaced coordinator is refused.
    assert_eq!(p.enlisted_under(tid(4), 1_000, 5), Err(OpError::CoordinatorReplaced));
    assert!(p.aborted_here(tid(4)));
}

#[test]
fn a_one_phase_commit_not_written_aborts_and_releases_its_locks() {
    let mut p = part();
    let t = tid(1);
    p.enlisted(t, 100).unwrap();
    p.write(t, b"a", Some(b"1".to_vec()), 0).unwrap();
    assert!(matches!(p.commit_one_phase(t, 1), OnePhaseStep::Apply(_)));
    assert!(p.committing(t));
    assert!(p.one_phase_not_written(t, "full".into()));
    assert_eq!(p.locked_keys(), 0);
    assert!(p.aborted_here(t), "a repeat hears the same answer");
    assert!(matches!(p.commit_one_phase(t, 2), OnePhaseStep::Aborted(_)));
    // Only a tid being committed: a prepared one (two-phase) is untouched.
    let t2 = tid(2);
    p.enlisted(t2, 100).unwrap();
    p.write(t2, b"b", Some(b"1".to_vec()), 0).unwrap();
    let PrepareStep::Persist(_) = p.prepare(t2, 1) else { panic!("expected persist") };
    p.prepared_durable(t2, 2).unwrap();
    assert!(!p.one_phase_not_written(t2, "full".into()));
    assert_eq!(p.prepare(t2, 3), PrepareStep::Yes);
}

/// Rule 4: a participant's own abort keeps its real reason (kind and
/// words, naming the partition) for its vote, its one-phase answer and any
/// later operation; a coordinator's later abort does not replace it.
#[test]
fn local_aborts_keep_their_real_reason() {
    use crate::reason::AbortKind;
    let mut p = Participant::new(3, Limits::default());
    let (old, young) = (tid(1), tid(2));
    p.enlisted(old, 100).unwrap();
    p.enlisted(young, 100).unwrap();
    p.write(old, b"k", Some(vec![1]), 0).unwrap();
    assert_eq!(p.write(young, b"k", Some(vec![2]), 0), Err(OpError::LockConflict { holder: old }));
    let why = p.abort_reason(young).unwrap().clone();
    assert_eq!(why.kind, AbortKind::Conflict);
    assert!(why.contains("lock conflict") && why.contains(&old.to_string()) && why.contains("\"k\""), "{why}");
    assert_eq!(p.abort(young), Ok(AbortStep::Ack));
    assert_eq!(p.prepare(young, 1), PrepareStep::No(why.clone()), "the coordinator's abort kept the cause");
    assert_eq!(p.commit_one_phase(young, 1), OnePhaseStep::Aborted(why.clone()));
    assert_eq!(p.write(young, b"j", None, 1), Err(OpError::AlreadyAborted(why)));

    // Deadline.
    let t = tid(5);
    p.enlisted(t, 10).unwrap();
    assert_eq!(p.expire(10), vec![t]);
    let PrepareStep::No(why) = p.prepare(t, 11) else { panic!("not NO") };
    assert_eq!(why.kind, AbortKind::Deadline);

    // A tid begun before this process started is one a restart lost.
    let before = Uuid::now_v7();
    let mut restarted = Participant::new(0, Limits::default()).with_start(twopc_now() + 1);
    let PrepareStep::No(why) = restarted.prepare(before, 1) else { panic!("not NO") };
    assert_eq!(why.kind, AbortKind::ParticipantRestarted, "{why}");
    assert_eq!(restarted.commit_one_phase(before, 1), OnePhaseStep::Aborted(why));
    // One begun after the start that it does not know is not blamed on a restart.
    let after = Uuid::now_v7();
    let mut fresh = Participant::new(0, Limits::default()).with_start(0);
    let PrepareStep::No(why) = fresh.prepare(after, 1) else { panic!("not NO") };
    assert_eq!(why.kind, AbortKind::Other, "{why}");

    // Shutdown: unprepared tids abort, prepared ones stay.
    let mut p = part();
    let (a, b) = (tid(7), tid(8));
    p.enlisted(a, 100).unwrap();
    p.enlisted(b, 100).unwrap();
    p.write(a, b"a", Some(vec![1]), 0).unwrap();
    p.write(b, b"b", Some(vec![1]), 0).unwrap();
    let PrepareStep::Persist(_) = p.prepare(b, 1) else { panic!("expected persist") };
    p.prepared_durable(b, 2).unwrap();
    let shutdown = crate::reason::AbortReason::new(AbortKind::Shutdown, "the participant is shutting down");
    assert_eq!(p.abort_unprepared(&shutdown), vec![a]);
    assert_eq!(p.abort_reason(a), Some(&shutdown));
    assert_eq!(p.prepare(b, 3), PrepareStep::Yes);
}

fn twopc_now() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as Millis
}

mod declared {
    use super::*;

    fn tid(n: u128) -> Tid {
        uuid::Uuid::from_u128(n)
    }

    #[test]
    fn a_declared_operation_applies_at_once_and_prepare_waits_for_the_enlistment() {
        let mut p = Participant::new(0, Limits::default());
        let t = tid(1);
        assert_eq!(p.begin_declared(t, 500, 10), Ok(true), "new here: enlist in the background");
        p.write(t, b"k", Some(b"v".to_vec()), 11).unwrap();
        assert_eq!(p.begin_declared(t, 500, 12), Ok(false), "known: nothing to send");
        p.write(t, b"k2", Some(b"v".to_vec()), 12).unwrap();
        assert_eq!(p.applied_ops(t), Some(2));
        assert_eq!(p.prepare_declared(t, 20, Some(2)), PrepareStep::AwaitEnlistment);
        assert_eq!(p.commit_one_phase_declared(t, 20, Some(2)), OnePhaseStep::AwaitEnlistment);
        p.enlist_confirmed(t, 400, 0).unwrap();
        assert!(matches!(p.prepare_declared(t, 20, Some(2)), PrepareStep::Persist(_)));
    }

    #[test]
    fn a_count_mismatch_votes_no_and_releases_the_locks() {
        let mut p = Participant::new(0, Limits::default());
        let t = tid(1);
        p.begin_declared(t, 500, 10).unwrap();
        p.write(t, b"k", Some(b"v".to_vec()), 11).unwrap();
        p.enlist_confirmed(t, 1_000, 0).unwrap();
        let PrepareStep::No(why) = p.prepare_declared(t, 20, Some(2)) else { panic!() };
        assert_eq!(why.kind, AbortKind::DeclarationMismatch);
        assert!(why.contains("declared 2") && why.contains("applied 1"), "{why}");
        assert_eq!(p.locked_keys(), 0);
        // Not declared (an older coordinator, or an attached client): no check.
        let t2 = tid(2);
        p.enlisted(t2, 1_000).unwrap();
        p.write(t2, b"k", Some(b"v".to_vec()), 11).unwrap();
        assert!(matches!(p.prepare_declared(t2, 20, None), PrepareStep::Persist(_)));
        // Declared operations, but no count (a one-phase commit recovered
        // from the log): aborted, never committed unchecked.
        let t5 = tid(5);
        p.begin_declared(t5, 500, 10).unwrap();
        p.enlist_confirmed(t5, 1_000, 0).unwrap();
        p.write(t5, b"m", None, 11).unwrap();
        assert!(
            matches!(p.commit_one_phase_declared(t5, 20, None), OnePhaseStep::Aborted(w) if w.kind == AbortKind::DeclarationMismatch)
        );
        // Unknown here (lost in a restart) with a declared count: NO.
        assert!(matches!(p.prepare_declared(tid(3), 20, Some(1)), PrepareStep::No(_)));
        // One phase: the same check.
        let t4 = tid(4);
        p.enlisted(t4, 1_000).unwrap();
        p.write(t4, b"j", None, 11).unwrap();
        assert!(
            matches!(p.commit_one_phase_declared(t4, 20, Some(3)), OnePhaseStep::Aborted(w) if w.kind == AbortKind::DeclarationMismatch)
        );
    }

    #[test]
    fn a_refused_enlistment_aborts_an_unprepared_tid_and_the_deadline_is_capped() {
        let limits = Limits { max_timeout_ms: 100, ..Limits::default() };
        let mut p = Participant::new(0, limits);
        let t = tid(1);
        p.begin_declared(t, 1_000_000, 0).unwrap();
        p.write(t, b"k", Some(b"v".to_vec()), 1).unwrap();
        assert_eq!(p.expire(100), vec![t], "the request's deadline is capped at max_timeout_ms");
        let t2 = tid(2);
        p.begin_declared(t2, 500, 0).unwrap();
        p.write(t2, b"k", Some(b"v".to_vec()), 1).unwrap();
        assert!(p.enlist_refused(t2, AbortReason::new(AbortKind::Unknown, "unknown tid")));
        assert!(p.aborted_here(t2) && p.locked_keys() == 0);
        assert!(matches!(p.begin_declared(t2, 500, 2), Err(OpError::AlreadyAborted(_))), "never started afresh");
        // An enlistment answered under an older term than heard of: refused.
        let t3 = tid(3);
        p.coordinator_term(5);
        p.begin_declared(t3, 500, 0).unwrap();
        assert_eq!(p.enlist_confirmed(t3, 500, 4), Err(OpError::CoordinatorReplaced));
        assert!(p.aborted_here(t3));
        // A newer term does not sweep an enlisting tid: its answer's term decides.
        let t4 = tid(4);
        p.begin_declared(t4, 500, 0).unwrap();
        assert_eq!(p.coordinator_term(6), Vec::<Tid>::new());
        p.enlist_confirmed(t4, 500, 6).unwrap();
        assert!(p.knows(t4) && !p.enlisting(t4));
    }

    #[test]
    fn a_read_not_answered_in_its_batch_is_not_counted() {
        let mut p = Participant::new(0, Limits::default());
        let t = tid(1);
        p.begin_declared(t, 500, 0).unwrap();
        p.get(t, b"k", 1).unwrap();
        p.op_not_answered(t);
        p.get(t, b"k", 2).unwrap();
        assert_eq!(p.applied_ops(t), Some(1));
    }
}
