//! The test kit (`twopc-testkit`) as a user's test would use it: a cluster
//! started by the builder, typed failpoints, crash handles, settle with a
//! deadline and its typed error, cleanup on drop.

use std::time::Duration;

use twopc_client::{Decision, Outcome};
use twopc_testkit::{Action, Cluster, Failpoint, KitError, Pending, Target};

async fn cluster(partitions: u32) -> Cluster {
    Cluster::builder().binary(env!("CARGO_BIN_EXE_twopc")).partitions(partitions).start().await.expect("cluster")
}

/// C2 through the kit: the coordinator dies right after forcing COMMIT;
/// restarted on its data it commits everywhere, and the cluster settles.
#[tokio::test]
async fn coordinator_killed_after_its_decision_commits_after_restart() {
    let mut c = cluster(2).await;
    let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
    c.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let txn = c.client().begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    assert!(txn.commit().await.is_err(), "the coordinator died before answering");
    let status = c.wait_exit(Target::Coordinator, Duration::from_secs(20)).await.unwrap();
    assert!(!status.success(), "killed by the failpoint: {status:?}");
    c.restart(Target::Coordinator).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.client().status(txn.tid()).await.unwrap(), Decision::Committed);
    assert_eq!(c.client().read(b.as_bytes()).await.unwrap().as_deref(), Some(&b"2"[..]));
}

/// An open transaction keeps the cluster unsettled; the typed error names
/// the partition's open tid and lock and the coordinator's unfinished tid.
/// Aborting it settles the cluster.
#[tokio::test]
async fn settle_says_what_is_still_unsettled() {
    let c = cluster(2).await;
    let key = c.key_on(1, "held");
    let txn = c.client().begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(key.as_bytes(), b"x").await.unwrap();
    let err = c.settle(Duration::from_millis(300)).await.unwrap_err();
    assert!(err.pending.contains(&Pending::OpenTids { partition: 1, count: 1 }), "{err}");
    assert!(err.pending.contains(&Pending::LockedKeys { partition: 1, count: 1 }), "{err}");
    assert!(err.pending.contains(&Pending::Unfinished { tids: vec![txn.tid().to_string()] }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("the cluster did not settle within"), "{text}");
    assert!(text.contains("partition 1: 1 locked key(s)"), "{text}");
    txn.abort().await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
}

/// C5 through the kit: a participant killed after its prepared state is
/// durable; the coordinator aborts at its prepare timeout, the restarted
/// participant learns ABORTED and its data is unchanged.
#[tokio::test]
async fn participant_killed_after_its_vote_is_durable_aborts() {
    let mut c = Cluster::builder()
        .binary(env!("CARGO_BIN_EXE_twopc"))
        .partitions(2)
        .prepare_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
    c.arm(Target::Participant(1), Failpoint::AfterPrepareDurable, Action::Kill).await.unwrap();
    let txn = c.client().begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    assert!(matches!(txn.commit().await.unwrap(), Outcome::Aborted { .. }));
    c.wait_exit(Target::Participant(1), Duration::from_secs(20)).await.unwrap();
    c.restart(Target::Participant(1)).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.client().read(b.as_bytes()).await.unwrap(), None);
    assert_eq!(c.client().read(a.as_bytes()).await.unwrap(), None);
}

/// Pause/resume, graceful termination, a failpoint in the wrong role, and
/// nothing left running once the cluster drops.
#[tokio::test]
async fn handles_and_cleanup() {
    let mut c = cluster(1).await;
    let err = c.arm(Target::Coordinator, Failpoint::AfterPrepareDurable, Action::Kill).await.unwrap_err();
    assert!(matches!(err, KitError::WrongRole { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "failpoint participant::after_prepare_durable lives in the Participant, not in coordinator"
    );

    c.pause(Target::Participant(0));
    let err = c.arm(Target::Participant(0), Failpoint::AfterPrepareDurable, Action::Kill).await.unwrap_err();
    assert!(matches!(err, KitError::Timeout(_)) && err.to_string().contains("no answer within 10s"), "{err}");
    let err = c.settle(Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(&err.pending[0], Pending::Unreachable { who, .. } if who.starts_with("partition 0")), "{err}");
    c.resume(Target::Participant(0));
    c.settle(Duration::from_secs(30)).await.unwrap();

    let status = c.terminate(Target::Participant(0), Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "SIGTERM is a graceful stop: {status:?}");
    c.restart(Target::Participant(0)).await.unwrap();
    let key = c.key_on(0, "k");
    let txn = c.client().begin(None).await.unwrap();
    txn.put(key.as_bytes(), b"v").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);

    let pids: Vec<u32> = [Target::Coordinator, Target::Participant(0)].iter().map(|&t| c.pid(t).unwrap()).collect();
    let dir = c.dir().to_path_buf();
    drop(c);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} outlived the cluster");
    }
    assert!(!dir.exists(), "the temporary directory outlived the cluster");
}

/// The typed TLS and admin-token settings: every process serves mutual TLS
/// and requires the token, and the kit's own client, failpoint arming and
/// settle go through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_admin_token_through_the_builder() {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair};
    let pki = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(pki.path().join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let mut node = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    node.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
    let node_key = KeyPair::generate().unwrap();
    let node_cert = node.signed_by(&node_key, &Issuer::new(ca, ca_key)).unwrap();
    std::fs::write(pki.path().join("node.pem"), node_cert.pem()).unwrap();
    std::fs::write(pki.path().join("node-key.pem"), node_key.serialize_pem()).unwrap();

    let files = twopc_testkit::TlsFiles {
        ca: pki.path().join("ca.pem"),
        cert: pki.path().join("node.pem"),
        key: pki.path().join("node-key.pem"),
        domain: None,
    };
    let mut c = Cluster::builder()
        .binary(env!("CARGO_BIN_EXE_twopc"))
        .partitions(2)
        .tls(files)
        .admin_token("kit-token")
        .start()
        .await
        .unwrap();
    assert!(c.connect_options().tls.is_enabled());
    let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
    c.arm(Target::Participant(1), Failpoint::BeforeCommitApplied, Action::Kill).await.unwrap();
    let txn = c.client().begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    c.wait_exit(Target::Participant(1), Duration::from_secs(20)).await.unwrap();
    c.restart(Target::Participant(1)).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.client().read(b.as_bytes()).await.unwrap().as_deref(), Some(&b"2"[..]));
}

/// HA through the builder: two coordinators on a kit-started etcd; the
/// leader SIGKILLed, the standby takes over, the client follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_cluster_through_the_builder_survives_its_leader() {
    let mut c = Cluster::builder().binary(env!("CARGO_BIN_EXE_twopc")).partitions(2).ha(2).start().await.unwrap();
    assert_eq!(c.local().coordinator_count(), 2);
    let leader = c.local().leader(Duration::from_secs(30)).await.unwrap();
    c.kill(Target::CoordinatorAt(leader));
    let key = c.key_on(1, "after-failover");
    let txn = c.client().begin(None).await.unwrap();
    txn.put(key.as_bytes(), b"v").await.unwrap();
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    c.restart(Target::CoordinatorAt(leader)).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    assert!(c.etcd().is_some());
}

/// A test that panics with a cluster up leaves no process and no
/// temporary directory behind; a directory the user gave is kept, with
/// the processes' logs in it.
#[test]
fn a_panicking_test_cleans_up_and_a_user_directory_is_kept() {
    let user_dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = user_dir.path().join("cluster");
    let given = kept.clone();
    let panicked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut temp = cluster(1).await;
            let mut kept =
                Cluster::builder().binary(env!("CARGO_BIN_EXE_twopc")).partitions(1).dir(given).start().await.unwrap();
            let pids: Vec<u32> = [Target::Coordinator, Target::Participant(0)]
                .iter()
                .flat_map(|&t| [temp.pid(t).unwrap(), kept.pid(t).unwrap()])
                .collect();
            tx.send((pids, temp.dir().to_path_buf())).unwrap();
            panic!("a failing user test");
        })
    })
    .join();
    assert!(panicked.is_err());
    let (pids, temp_dir) = rx.recv().unwrap();
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} outlived the panic");
    }
    assert!(!temp_dir.exists(), "the kit's temporary directory outlived the panic");
    assert!(
        kept.join("coordinator.log").exists() && kept.join("p0.log").exists(),
        "the user's directory keeps the logs"
    );
}

/// C9 through the kit: the coordinator and a participant die around the
/// decision; the participant is restarted first (nothing to register with
/// yet), then the coordinator, and the commit lands everywhere.
#[tokio::test]
async fn coordinator_and_participant_down_together_restart_in_any_order() {
    let mut c = cluster(2).await;
    let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
    c.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill).await.unwrap();
    let txn = c.client().begin(None).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    assert!(txn.commit().await.is_err(), "the coordinator died before answering");
    c.wait_exit(Target::Coordinator, Duration::from_secs(20)).await.unwrap();
    // With the coordinator down, a short settle fails soon, naming it.
    let started = std::time::Instant::now();
    let err = c.settle(Duration::from_millis(200)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(8), "settle overran its deadline: {:?}", started.elapsed());
    assert!(err.pending.iter().any(|p| matches!(p, Pending::Unreachable { who, .. } if who == "coordinator")), "{err}");
    c.kill(Target::Participant(1));
    assert!(!c.is_running(Target::Participant(1)));
    c.restart(Target::Participant(1)).await.unwrap();
    c.restart(Target::Coordinator).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.client().status(txn.tid()).await.unwrap(), Decision::Committed);
    assert_eq!(c.client().read(b.as_bytes()).await.unwrap().as_deref(), Some(&b"2"[..]));
}

/// `Action::Pause` holds a step until `disarm`: partition 1 blocks before
/// its prepared state is durable, partition 0 is seen in doubt (prepared,
/// waiting for the decision), and disarming lets the commit finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_step_until_disarmed() {
    let c = Cluster::builder()
        .binary(env!("CARGO_BIN_EXE_twopc"))
        .partitions(2)
        .prepare_timeout(Duration::from_secs(60))
        // The paused step blocks its thread: another must serve the disarm.
        .participant_arg("--worker-threads")
        .participant_arg("2")
        .start()
        .await
        .unwrap();
    let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
    c.arm(Target::Participant(1), Failpoint::BeforePrepareDurable, Action::Pause).await.unwrap();
    let txn = c.client().begin(Some(Duration::from_secs(60))).await.unwrap();
    txn.put(a.as_bytes(), b"1").await.unwrap();
    txn.put(b.as_bytes(), b"2").await.unwrap();
    let commit = tokio::spawn({
        let txn = txn.clone();
        async move { txn.commit().await }
    });
    let tid = txn.tid().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = c.pending().await;
        if pending.iter().any(|p| matches!(p, Pending::InDoubt { partition: 0, tids } if tids.contains(&tid))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "partition 0 never in doubt: {pending:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!commit.is_finished(), "the commit waits for partition 1's paused prepare");
    c.disarm(Target::Participant(1), Failpoint::BeforePrepareDurable).await.unwrap();
    assert_eq!(commit.await.unwrap().unwrap(), Outcome::Committed);
    c.settle(Duration::from_secs(30)).await.unwrap();
}

/// A paused (SIGSTOPped) process acts on SIGTERM only once it runs again:
/// `terminate` resumes it, as `twopc cluster stop` does, so a graceful stop
/// of a frozen process ends in time instead of timing out.
#[tokio::test]
async fn terminate_stops_a_paused_process_gracefully() {
    let mut c = cluster(2).await;
    c.pause(Target::Participant(1));
    let status = c.terminate(Target::Participant(1), Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "SIGTERM is a graceful stop: {status:?}");
    c.restart(Target::Participant(1)).await.unwrap();
    c.settle(Duration::from_secs(30)).await.unwrap();
}

/// A target the cluster does not have is refused with a message naming
/// what it has, never armed elsewhere (coordinator 2 of a one-coordinator
/// cluster used to arm coordinator 0) and never an index panic.
#[tokio::test]
async fn targets_the_cluster_does_not_have_are_refused() {
    let mut c = cluster(2).await;
    for target in [Target::CoordinatorAt(2), Target::Participant(5)] {
        let fp = if matches!(target, Target::Participant(_)) {
            Failpoint::AfterPrepareDurable
        } else {
            Failpoint::AfterDecisionForced
        };
        let err = c.arm(target, fp, Action::Kill).await.unwrap_err();
        assert!(matches!(err, KitError::Invalid(_)), "{target}: {err:?}");
        assert!(err.to_string().contains("1 coordinator(s) and partitions 0..=1"), "{err}");
    }
    let err =
        c.arm(Target::Coordinator, Failpoint::AfterDecisionForced, Action::Kill.once().times(2)).await.unwrap_err();
    assert!(matches!(err, KitError::Invalid(_)) && err.to_string().contains("2*1*return(abort)"), "{err}");
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.kill(Target::Participant(5)))).unwrap_err();
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("no p5 in this cluster"), "{msg}");
    c.settle(Duration::from_secs(30)).await.unwrap();
}

/// A cluster started on a thread that then ends (a cluster shared by
/// several tests, set up by whichever test came first, on its own thread)
/// keeps running: the parent-death signal fires when the *thread* that
/// forked a child exits, so the kit forks from one thread that lives as
/// long as the process. (Every process used to die with its starting thread.)
#[test]
fn a_cluster_outlives_the_thread_that_started_it() {
    let (mut c, rt) = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = rt.block_on(cluster(2));
        (c, rt)
    })
    .join()
    .unwrap();
    rt.block_on(async {
        let (a, b) = (c.key_on(0, "a"), c.key_on(1, "b"));
        let txn = c.client().begin(None).await.unwrap();
        txn.put(a.as_bytes(), b"1").await.unwrap();
        txn.put(b.as_bytes(), b"2").await.unwrap();
        assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
        // A restart from yet another short-lived thread: the new process stays too.
        // (The process only: a client made on that thread's runtime would die with it.)
        std::thread::scope(|s| {
            s.spawn(|| c.local_mut().restart_participant(1, &[]).unwrap());
        });
        c.local().wait_registered(Duration::from_secs(30)).await.unwrap();
        c.settle(Duration::from_secs(30)).await.unwrap();
    });
    for t in [Target::Coordinator, Target::Participant(0), Target::Participant(1)] {
        assert!(c.is_running(t), "{t} died with the thread that started it");
    }
    drop(c);
}

/// Process logs are files, read back by people and printed as tails when a
/// test fails: plain text, without terminal color codes.
#[tokio::test]
async fn process_logs_are_plain_text() {
    let c = cluster(1).await;
    for t in [Target::Coordinator, Target::Participant(0)] {
        let log = std::fs::read_to_string(c.log_path(t)).unwrap();
        assert!(log.contains("registered"), "{t}: {log}");
        assert!(!log.contains('\u{1b}'), "{t} logs color codes: {log:?}");
    }
}

/// `settle` keeps close to its deadline with several processes frozen:
/// they are asked at once, each look bounded, not one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_with_frozen_processes_keeps_its_deadline() {
    let mut c = cluster(3).await;
    let all = [Target::Coordinator, Target::Participant(0), Target::Participant(1), Target::Participant(2)];
    for t in all {
        c.pause(t);
    }
    let started = std::time::Instant::now();
    let err = c.settle(Duration::from_millis(100)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.pending.len(), 4, "{err}");
    assert!(matches!(&err.pending[0], Pending::Unreachable { who, .. } if who.starts_with("partition 0")), "{err}");
    assert!(took < Duration::from_secs(4), "settle(100ms) took {took:?}");
    for t in all {
        c.resume(t);
    }
    c.settle(Duration::from_secs(30)).await.unwrap();
}
