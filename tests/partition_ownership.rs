//! A participant serves only its own partition's keys (PROTOCOL.md rule
//! 12), and the key-to-partition function is the documented one
//! (README, "Key placement"; `twopc_proto::placement`).
//!
//! - The function, computed here independently from the XXH3 spec (not
//!   through the library the processes use), routes every key the same
//!   way the client and the participants do.
//! - Every keyed operation sent over the wire to a partition that does not
//!   own the key (Get, Get for update, Put, Delete, Read, and each kind of
//!   OperateBatch item) is answered FAILED_PRECONDITION naming the owner,
//!   and nothing is locked, enlisted or written: the transaction commits
//!   with nothing in it, and the store file holds no trace of the key.

mod common;

use std::time::Duration;

use common::*;
use twopc_client::{Outcome, partition_for};
use twopc_proto::pb::{self, participant_client::ParticipantClient};

/// XXH3-64 (seed 0, default secret) for inputs of 0 to 128 bytes, written
/// from the XXH3 specification (xxHash `doc/xxhash_spec.md`, "XXH3
/// algorithm description", short-input paths), independently of the
/// `xxhash-rust` crate the processes use. Keys are usually that short; the
/// longer paths (stripes over the secret) are not reimplemented.
mod spec {
    const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
    const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
    const PRIME_MX1: u64 = 0x1656_6791_9E37_79F9;
    const PRIME_MX2: u64 = 0x9FB2_1C65_1E98_DF25;

    /// The first 128 bytes of the spec's default secret (`kSecret`).
    const SECRET: [u8; 128] = [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4,
        0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e,
        0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43,
        0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb,
        0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19,
        0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7,
        0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78,
        0x73, 0x64,
    ];

    /// Little-endian reads, as the spec defines them on every platform.
    fn r32(b: &[u8], at: usize) -> u64 {
        u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
    }
    fn r64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn xxh64_avalanche(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(PRIME64_2);
        h ^= h >> 29;
        h = h.wrapping_mul(PRIME64_3);
        h ^ (h >> 32)
    }

    fn xxh3_avalanche(mut h: u64) -> u64 {
        h ^= h >> 37;
        h = h.wrapping_mul(PRIME_MX1);
        h ^ (h >> 32)
    }

    fn rrmxmx(mut h: u64, len: u64) -> u64 {
        h ^= h.rotate_left(49) ^ h.rotate_left(24);
        h = h.wrapping_mul(PRIME_MX2);
        h ^= (h >> 35).wrapping_add(len);
        h = h.wrapping_mul(PRIME_MX2);
        h ^ (h >> 28)
    }

    fn mul128_fold64(a: u64, b: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }

    fn mix16(input: &[u8], at: usize, secret_at: usize) -> u64 {
        mul128_fold64(r64(input, at) ^ r64(&SECRET, secret_at), r64(input, at + 8) ^ r64(&SECRET, secret_at + 8))
    }

    pub fn xxh3_64(input: &[u8]) -> u64 {
        let len = input.len();
        match len {
            0 => xxh64_avalanche(r64(&SECRET, 56) ^ r64(&SECRET, 64)),
            1..=3 => {
                let combined = (u64::from(input[0]) << 16)
                    | (u64::from(input[len >> 1]) << 24)
                    | u64::from(input[len - 1])
                    | ((len as u64) << 8);
                xxh64_avalanche(combined ^ (r32(&SECRET, 0) ^ r32(&SECRET, 4)))
            }
            4..=8 => {
                let input64 = r32(input, len - 4).wrapping_add(r32(input, 0) << 32);
                rrmxmx(input64 ^ (r64(&SECRET, 8) ^ r64(&SECRET, 16)), len as u64)
            }
            9..=16 => {
                let lo = r64(input, 0) ^ (r64(&SECRET, 24) ^ r64(&SECRET, 32));
                let hi = r64(input, len - 8) ^ (r64(&SECRET, 40) ^ r64(&SECRET, 48));
                let acc =
                    (len as u64).wrapping_add(lo.swap_bytes()).wrapping_add(hi).wrapping_add(mul128_fold64(lo, hi));
                xxh3_avalanche(acc)
            }
            17..=128 => {
                let mut acc = (len as u64).wrapping_mul(PRIME64_1);
                if len > 32 {
                    if len > 64 {
                        if len > 96 {
                            acc = acc.wrapping_add(mix16(input, 48, 96));
                            acc = acc.wrapping_add(mix16(input, len - 64, 112));
                        }
                        acc = acc.wrapping_add(mix16(input, 32, 64));
                        acc = acc.wrapping_add(mix16(input, len - 48, 80));
                    }
                    acc = acc.wrapping_add(mix16(input, 16, 32));
                    acc = acc.wrapping_add(mix16(input, len - 32, 48));
                }
                acc = acc.wrapping_add(mix16(input, 0, 0));
                acc = acc.wrapping_add(mix16(input, len - 16, 16));
                xxh3_avalanche(acc)
            }
            _ => unimplemented!("inputs over 128 bytes are not reimplemented here"),
        }
    }
}

/// The README's function: `xxh3_64(key) % partitions`, from the spec.
fn documented_partition(key: &[u8], partitions: u32) -> u32 {
    (spec::xxh3_64(key) % u64::from(partitions)) as u32
}

#[test]
fn the_key_to_partition_function_is_the_documented_one() {
    // Published XXH3-64 vector (empty input, seed 0) and the README's examples.
    assert_eq!(spec::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    assert_eq!(documented_partition(b"", 3), 1);
    assert_eq!(documented_partition(b"account-17", 3), 2);
    // Every length from 0 to 128 bytes (each of the spec's short-input
    // paths), textual and binary keys, over 1 to 16 partitions.
    let mut checked = 0;
    for len in 0..=128usize {
        for variant in 0..8u8 {
            let key: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(variant * 17)).collect();
            let text: Vec<u8> = format!("user-{variant}-{}", "x".repeat(len)).into_bytes();
            for k in [&key, &text] {
                if k.len() > 128 {
                    continue;
                }
                for n in 1..=16 {
                    assert_eq!(partition_for(k, n), documented_partition(k, n), "key {k:?} over {n} partitions");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 20_000, "{checked}");
}

/// A raw gRPC client of partition `p` (no routing: whatever it sends is sent there).
async fn raw(tc: &TestCluster, p: u32) -> ParticipantClient<tonic::transport::Channel> {
    let addr = tc.cluster.participants[p as usize].addr.to_string();
    let channel = tc.cluster.connect_options().tls.endpoint(&addr).unwrap().connect().await.unwrap();
    ParticipantClient::new(channel)
}

fn assert_names_owner(status: &tonic::Status, owner: u32, here: u32, what: &str) {
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{what}: {status:?}");
    let want = format!("key belongs to partition {owner}, not to partition {here}");
    assert!(status.message().contains(&want), "{what}: {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_operations_are_refused_naming_the_owner_and_nothing_is_written() {
    let tc = TestCluster::three().await;
    let key = tc.key_on(1, "misrouted");
    let owned_here = tc.key_on(0, "owned");
    let mut p0 = raw(&tc, 0).await;
    // Shared (enlist first): the raw operations below are not declared,
    // and the library's commit of it declares nothing.
    let txn = tc.client.begin_shared(Some(Duration::from_secs(30))).await.unwrap();
    let tid = txn.tid().to_string();
    let k = key.as_bytes().to_vec();

    let e = p0
        .put(pb::PutRequest { tid: tid.clone(), key: k.clone(), value: b"lost".to_vec(), ..Default::default() })
        .await
        .unwrap_err();
    assert_names_owner(&e, 1, 0, "Put");
    let e = p0
        .get(pb::GetRequest { tid: tid.clone(), key: k.clone(), for_update: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_names_owner(&e, 1, 0, "Get");
    let e = p0
        .get(pb::GetRequest { tid: tid.clone(), key: k.clone(), for_update: true, ..Default::default() })
        .await
        .unwrap_err();
    assert_names_owner(&e, 1, 0, "Get for update");
    let e = p0.delete(pb::DeleteRequest { tid: tid.clone(), key: k.clone(), ..Default::default() }).await.unwrap_err();
    assert_names_owner(&e, 1, 0, "Delete");
    let e = p0.read(pb::ReadRequest { key: k.clone() }).await.unwrap_err();
    assert_names_owner(&e, 1, 0, "Read");

    // In a batch each misrouted item is refused on its own; an owned key in
    // the same batch is served.
    use pb::operation::Kind;
    let op = |kind: Kind, key: &[u8]| pb::Operation {
        tid: tid.clone(),
        kind: kind as i32,
        key: key.to_vec(),
        value: b"lost".to_vec(),
        ..Default::default()
    };
    let kinds = [Kind::Get, Kind::GetForUpdate, Kind::Put, Kind::Delete];
    let mut operations: Vec<pb::Operation> = kinds.iter().map(|&kind| op(kind, &k)).collect();
    operations.push(op(Kind::Get, owned_here.as_bytes()));
    let results = p0.operate_batch(pb::OperationBatch { operations }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), 5);
    for (r, kind) in results.iter().zip(kinds) {
        let status = tonic::Status::new(tonic::Code::from(r.code), r.message.clone());
        assert_names_owner(&status, 1, 0, &format!("batched {kind:?}"));
    }
    assert_eq!(results[4].code, 0, "the owned key is served: {:?}", results[4]);
    assert!(!results[4].found);

    // Nothing of the misrouted writes reached anything: the transaction
    // (which read one owned key at partition 0) commits, and the key is
    // nowhere, neither where it belongs nor in partition 0's store file.
    assert_eq!(txn.commit().await.unwrap(), Outcome::Committed);
    tc.wait_settled().await;
    assert_eq!(tc.read(&key).await, None);
    let db = rusqlite::Connection::open_with_flags(
        tc.cluster.dir.join("p0").join("partition.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let stored: i64 = db.query_row("SELECT count(*) FROM kv WHERE key = ?1", [&k], |r| r.get(0)).unwrap();
    assert_eq!(stored, 0, "the misrouted Put reached partition 0's store");

    // The same operations, routed right, are served.
    let (_, outcome) = tc.write_txn(&[(&key, "v")]).await;
    assert_eq!(outcome, Outcome::Committed);
    tc.wait_value(&key, Some("v")).await;
    let mut p1 = raw(&tc, 1).await;
    let got = p1.read(pb::ReadRequest { key: k.clone() }).await.unwrap().into_inner();
    assert!(got.found && got.value == b"v");
    // Every partition refuses it but partition 1.
    let mut p2 = raw(&tc, 2).await;
    let e = p2.read(pb::ReadRequest { key: k }).await.unwrap_err();
    assert_names_owner(&e, 1, 2, "Read at partition 2");
}

/// Before its first registration a participant does not know the partition
/// count, so it cannot tell its own keys: every keyed call (each RPC, each
/// batch item) is answered UNAVAILABLE (retry), never served or stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_participant_answers_keyed_calls_unavailable() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::Builder::new().prefix("twopc-unregistered-").tempdir().unwrap();
    // A coordinator address where nobody listens: it never registers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let coordinator = dead.local_addr().unwrap().to_string();
    drop(dead);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_twopc"))
        .args(["participant", "--partition", "0", "--listen", "127.0.0.1:0", "--coordinator", &coordinator])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("FAILPOINTS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let child = Kill(child);
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let mut p = ParticipantClient::connect(format!("http://{addr}")).await.unwrap();

    let unavailable = |s: tonic::Status, what: &str| {
        assert_eq!(s.code(), tonic::Code::Unavailable, "{what}: {s:?}");
        assert!(s.message().contains("has not registered with the coordinator yet"), "{what}: {s:?}");
    };
    let tid = uuid::Uuid::now_v7().to_string();
    let key = b"k".to_vec();
    unavailable(p.read(pb::ReadRequest { key: key.clone() }).await.unwrap_err(), "Read");
    unavailable(
        p.put(pb::PutRequest { tid: tid.clone(), key: key.clone(), value: b"v".to_vec(), ..Default::default() })
            .await
            .unwrap_err(),
        "Put",
    );
    unavailable(
        p.get(pb::GetRequest { tid: tid.clone(), key: key.clone(), for_update: true, ..Default::default() })
            .await
            .unwrap_err(),
        "Get",
    );
    unavailable(
        p.delete(pb::DeleteRequest { tid: tid.clone(), key: key.clone(), ..Default::default() }).await.unwrap_err(),
        "Delete",
    );
    let op =
        pb::Operation { tid, kind: pb::operation::Kind::Put as i32, key, value: b"v".to_vec(), ..Default::default() };
    let results = p.operate_batch(pb::OperationBatch { operations: vec![op] }).await.unwrap().into_inner().results;
    unavailable(tonic::Status::new(tonic::Code::from(results[0].code), results[0].message.clone()), "batched Put");
    drop(child);
}

/// The partition count learned at registration is kept in the store: a
/// participant restarted while the coordinator is down checks its keys at
/// once, serving committed reads of its own keys and refusing others,
/// instead of answering UNAVAILABLE until it can register.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_participant_checks_keys_before_it_can_register() {
    let mut tc = TestCluster::three().await;
    let (mine, theirs) = (tc.key_on(0, "kept"), tc.key_on(1, "kept"));
    assert_eq!(tc.write_txn(&[(&mine, "v")]).await.1, Outcome::Committed);
    tc.wait_settled().await;
    tc.cluster.coordinator.kill();
    tokio::task::block_in_place(|| tc.cluster.restart_participant(0, &[]).unwrap());
    let mut p0 = raw(&tc, 0).await;
    let got =
        p0.read(pb::ReadRequest { key: mine.clone().into_bytes() }).await.expect("a committed read of its own key");
    let got = got.into_inner();
    assert!(got.found && got.value == b"v", "{got:?}");
    let e = p0.read(pb::ReadRequest { key: theirs.into_bytes() }).await.unwrap_err();
    assert_names_owner(&e, 1, 0, "Read at partition 0 before registering");
}
