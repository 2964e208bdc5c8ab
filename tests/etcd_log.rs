//! The decision log in etcd, on a real three-member etcd cluster: group
//! commit within etcd's default limits, read back by the next leader, the
//! keyspace bounded, and fencing: a deposed leader's write is refused by
//! etcd itself (PROTOCOL.md rule 14).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use twopc::etcd_cluster::EtcdCluster;
use twopc_coordinator::decision_log::DecisionLog;
use twopc_coordinator::decision_log::etcd::EtcdLog;
use twopc_coordinator::leadership::Leadership;
use twopc_etcd::Etcd;
use uuid::Uuid;

const PREFIX: &str = "/twopc/test/";

fn client(etcd: &EtcdCluster) -> Arc<Etcd> {
    let endpoints: Vec<String> = etcd.endpoints().split(',').map(str::to_string).collect();
    Arc::new(Etcd::new(&endpoints, Duration::from_secs(2)).unwrap())
}

/// A coordinator's leadership, elected (the first one wins at once).
async fn elect(etcd: &Arc<Etcd>, me: &str) -> (Arc<Leadership>, i64) {
    let l = Arc::new(Leadership::new(etcd.clone(), PREFIX, me.into(), Duration::from_secs(3)));
    l.start().await.unwrap();
    tokio::spawn(l.clone().keep_alive());
    let epoch = tokio::time::timeout(Duration::from_secs(20), l.campaign()).await.expect("elected in time");
    (l, epoch)
}

fn log_of(etcd: &Arc<Etcd>, l: &Leadership, epoch: i64, deposed: Arc<AtomicBool>) -> EtcdLog {
    EtcdLog {
        etcd: etcd.clone(),
        prefix: PREFIX.into(),
        leader_key: l.key().to_vec(),
        epoch,
        on_deposed: Arc::new(move |_why: String| deposed.store(true, Ordering::SeqCst)),
        compact_every: Duration::ZERO,
    }
}

#[tokio::test]
async fn concurrent_forced_records_share_transactions_within_etcds_limits_and_the_next_leader_reads_them() {
    let cluster = EtcdCluster::start_in_temp(3).expect("etcd");
    let etcd = client(&cluster);
    let (l, epoch) = elect(&etcd, "127.0.0.1:1").await;
    let deposed = Arc::new(AtomicBool::new(false));
    let (log, rec) = DecisionLog::open_etcd(log_of(&etcd, &l, epoch, deposed.clone()), 3, 100_000).await.unwrap();
    assert!(rec.unfinished.is_empty() && rec.members.is_empty());
    assert_eq!(rec.term, epoch as u64);
    // 1,000 records at once: far more than etcd's 128 operations per
    // transaction, which etcd (started with its defaults) would refuse.
    let tids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    let writes = tids.iter().map(|&t| log.force_commit(t, vec![0, 2]));
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    log.register(1, "127.0.0.1:9".into()).await.unwrap();
    log.register_store(2, "127.0.0.1:10".into(), "store-2".into()).await.unwrap();
    // Without a store id, the recorded one is kept.
    log.register(2, "127.0.0.1:11".into()).await.unwrap();
    let stats = log.stats();
    let batches = stats.forced_batches.load(Ordering::Relaxed);
    assert_eq!(stats.forced_records.load(Ordering::Relaxed), 1003);
    assert!(batches <= 20, "1,000 concurrent records took {batches} group commits");
    assert!(!deposed.load(Ordering::SeqCst));
    // A second open (as the next leader would) finds every record.
    let (_log2, rec) = DecisionLog::open_etcd(log_of(&etcd, &l, epoch, deposed), 3, 100_000).await.unwrap();
    assert_eq!(rec.unfinished.len(), 1000);
    assert!(rec.unfinished.iter().all(|(_, p)| p == &vec![0, 2]));
    assert_eq!(rec.members, vec![(1, "127.0.0.1:9".to_string()), (2, "127.0.0.1:11".to_string())]);
    assert_eq!(rec.store_ids, vec![(2, "store-2".to_string())], "store ids are read back (crate::store_ids)");
    // Another partition count is refused, naming both.
    let err = DecisionLog::open_etcd(log_of(&etcd, &l, epoch, Arc::default()), 4, 10).await.err().unwrap();
    assert!(err.to_string().contains("3 partitions, not 4"), "{err}");
}

#[tokio::test]
async fn a_deposed_leaders_write_is_refused_by_etcd_and_deposes_it() {
    let cluster = EtcdCluster::start_in_temp(3).expect("etcd");
    let etcd = client(&cluster);
    let (old, old_epoch) = elect(&etcd, "127.0.0.1:1").await;
    let deposed = Arc::new(AtomicBool::new(false));
    let (old_log, _) = DecisionLog::open_etcd(log_of(&etcd, &old, old_epoch, deposed.clone()), 2, 100).await.unwrap();
    let before = Uuid::now_v7();
    old_log.force_commit(before, vec![0, 1]).await.unwrap();
    // The old leader's lease ends (as if it had been paused past it); a
    // standby is elected with a larger epoch.
    old.resign().await;
    let (new, new_epoch) = elect(&etcd, "127.0.0.1:2").await;
    assert!(new_epoch > old_epoch);
    // The old leader still believes it leads and writes: etcd refuses.
    let late = Uuid::now_v7();
    assert!(old_log.force_commit(late, vec![0, 1]).await.is_err());
    assert!(deposed.load(Ordering::SeqCst), "a refused write deposes the writer");
    let (_l, rec) = DecisionLog::open_etcd(log_of(&etcd, &new, new_epoch, Arc::default()), 2, 100).await.unwrap();
    assert_eq!(rec.unfinished, vec![(before, vec![0, 1])], "the late record must not exist");
    assert_eq!(rec.term, new_epoch as u64);
}

#[tokio::test]
async fn finished_records_are_trimmed_to_the_keep_bound() {
    let cluster = EtcdCluster::start_in_temp(1).expect("etcd");
    let etcd = client(&cluster);
    let (l, epoch) = elect(&etcd, "127.0.0.1:1").await;
    let (log, _) = DecisionLog::open_etcd(log_of(&etcd, &l, epoch, Arc::default()), 1, 10).await.unwrap();
    let tids: Vec<Uuid> = (0..600).map(|_| Uuid::now_v7()).collect();
    for &t in &tids {
        log.force_commit(t, vec![0]).await.unwrap();
        log.finished(t);
    }
    // Marks are written by a task of their own, unforced: wait until the
    // last one and the trim have landed in etcd.
    let log_keys = format!("{PREFIX}log/").into_bytes();
    let end = twopc_etcd::prefix_end(&log_keys);
    let last = format!("{PREFIX}log/{}", tids[599]).into_bytes();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let kept = etcd.range(&log_keys, &end, 0).await.unwrap().kvs.len();
        let last_mark = etcd.range(&last, &[], 1).await.unwrap().kvs.first().map(|kv| kv.value.clone());
        if kept < 10 + 256 && last_mark.as_deref() == Some(b"F".as_slice()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kept} records kept, last mark {last_mark:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(log);
    let (_l, rec) = DecisionLog::open_etcd(log_of(&etcd, &l, epoch, Arc::default()), 1, 10).await.unwrap();
    assert!(rec.finished.len() >= 10 && rec.finished.len() < 10 + 256, "{} finished kept", rec.finished.len());
    assert_eq!(rec.finished.last(), Some(&tids[599]), "the newest are kept");
    assert!(rec.unfinished.is_empty());
}
