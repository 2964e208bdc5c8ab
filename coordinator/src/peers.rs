//! The partition map: where each participant serves, with one reusable
//! gRPC channel per participant. Updated when a participant registers
//! (possibly at a new address after a restart).
//!
//! Every client here sends the cluster's peer token (if configured) on
//! every call, through an interceptor: the participants refuse Prepare,
//! Commit, Abort and one-phase commits without it
//! (`twopc_proto::token`), so no call path to a participant can forget it.
//!
//! Bulkhead: each participant has a bounded number of prepare and commit
//! calls in flight (a semaphore per partition). A slow or dead participant
//! therefore ties up at most that many calls, and the transactions touching
//! it wait or time out, while transactions on other participants proceed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::transport::Endpoint;

use twopc_core::PartitionId;
use twopc_proto::batch::Batcher;
use twopc_proto::limits::SizeLimits;
use twopc_proto::pb::{self, participant_client::ParticipantClient};
use twopc_proto::tls::ClientTls;
use twopc_proto::token::{PeerChannel, PeerToken};

pub struct Peers {
    map: Mutex<HashMap<PartitionId, (String, ParticipantClient<PeerChannel>)>>,
    inflight: Mutex<HashMap<PartitionId, Arc<Semaphore>>>,
    batchers: Mutex<HashMap<PartitionId, Arc<PeerBatchers>>>,
    max_inflight: usize,
    /// TLS (or plaintext) for the channels to participants.
    tls: ClientTls,
    /// Sent on every call to participants.
    peer_token: PeerToken,
}

/// Prepare, commit, abort and one-phase commit calls to one participant, each batched
/// ([`twopc_proto::batch`]): one RPC carries every tid queued meanwhile.
pub struct PeerBatchers {
    pub prepare: Arc<Batcher<PeerTid, pb::PrepareResponse>>,
    pub commit: Arc<Batcher<PeerTid, ()>>,
    pub abort: Arc<Batcher<PeerTid, ()>>,
    pub one_phase: Arc<Batcher<PeerTid, pb::OnePhaseResult>>,
}

/// One tid of a batch to a participant, with the count of operations its
/// client declared there (0: not declared): `TidBatch.tids` and
/// `TidBatch.declared_operations` are built from these. A prost message
/// only so that the batcher can size it.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PeerTid {
    #[prost(string, tag = "1")]
    pub tid: String,
    #[prost(uint64, tag = "2")]
    pub declared: u64,
}

impl PeerTid {
    /// The batch these items make: declared counts only if any is set, so
    /// a batch without declarations is what older participants expect.
    pub fn batch(items: Vec<PeerTid>) -> pb::TidBatch {
        let declared_operations =
            if items.iter().any(|i| i.declared > 0) { items.iter().map(|i| i.declared).collect() } else { vec![] };
        pb::TidBatch { tids: items.into_iter().map(|i| i.tid).collect(), declared_operations }
    }
}

/// Most tids in one batch RPC, and batch RPCs in flight per kind and participant.
const MAX_BATCH: usize = 256;
const BATCHES_IN_FLIGHT: usize = 2;

impl Peers {
    /// `max_inflight`: prepare/commit calls allowed in flight per
    /// participant; `tls`: how channels to participants are opened;
    /// `peer_token`: sent on every call to them.
    pub fn new(max_inflight: usize, tls: ClientTls, peer_token: PeerToken) -> Self {
        Self {
            map: Mutex::default(),
            inflight: Mutex::default(),
            batchers: Mutex::default(),
            max_inflight: max_inflight.max(1),
            tls,
            peer_token,
        }
    }

    /// The batchers of `partition` (kept across re-registrations).
    pub fn batchers(&self, partition: PartitionId) -> Arc<PeerBatchers> {
        // Tid batches: bounded by the participants' least message limit,
        // the default (`twopc_proto::limits`, rule 2).
        let budget = SizeLimits::default().batch_budget();
        let mut m = self.batchers.lock().unwrap();
        m.entry(partition)
            .or_insert_with(|| {
                Arc::new(PeerBatchers {
                    prepare: Batcher::new(MAX_BATCH, budget, BATCHES_IN_FLIGHT),
                    commit: Batcher::new(MAX_BATCH, budget, BATCHES_IN_FLIGHT),
                    abort: Batcher::new(MAX_BATCH, budget, BATCHES_IN_FLIGHT),
                    one_phase: Batcher::new(MAX_BATCH, budget, BATCHES_IN_FLIGHT),
                })
            })
            .clone()
    }

    /// The in-flight limit of `partition` (kept across re-registrations).
    pub fn slots(&self, partition: PartitionId) -> Arc<Semaphore> {
        let mut m = self.inflight.lock().unwrap();
        m.entry(partition).or_insert_with(|| Arc::new(Semaphore::new(self.max_inflight))).clone()
    }

    /// Whether `address` can be dialled (as `set` would), without setting it.
    pub fn check_address(&self, address: &str) -> Result<(), String> {
        self.endpoint(address).map(drop)
    }

    fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        Ok(self
            .tls
            .endpoint(address)
            .map_err(|e| format!("bad participant address {address:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true))
    }

    /// Sets (or replaces) the address of `partition`.
    pub fn set(&self, partition: PartitionId, address: &str) -> Result<(), String> {
        let limit = SizeLimits::default().message_limit();
        let client =
            ParticipantClient::with_interceptor(self.endpoint(address)?.connect_lazy(), self.peer_token.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit);
        let mut map = self.map.lock().unwrap();
        if map.get(&partition).is_some_and(|(a, _)| a == address) {
            return Ok(());
        }
        map.insert(partition, (address.to_string(), client));
        Ok(())
    }

    pub fn client(&self, partition: PartitionId) -> Option<ParticipantClient<PeerChannel>> {
        self.map.lock().unwrap().get(&partition).map(|(_, c)| c.clone())
    }

    pub fn contains(&self, partition: PartitionId) -> bool {
        self.map.lock().unwrap().contains_key(&partition)
    }

    pub fn addresses(&self) -> Vec<(PartitionId, String)> {
        let mut v: Vec<_> = self.map.lock().unwrap().iter().map(|(&p, (a, _))| (p, a.clone())).collect();
        v.sort();
        v
    }
}
