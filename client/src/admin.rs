//! Operator calls: in-doubt listings, live transactions, failpoints, and
//! manual (heuristic) resolution of an in-doubt tid.
//!
//! These exist to look at a cluster that is partly broken, so they must
//! degrade rather than fail: `in_doubt` asks every participant in parallel
//! and reports an unreachable one as an error line for that partition, not
//! as a failure of the whole call.
//!
//! [`resolve_heuristically`] talks to one participant directly (the
//! coordinator may be gone): it is for disaster recovery only, when the
//! coordinator's decision log is lost. The participant refuses it without
//! the override flag, and refuses an outcome that contradicts a decision
//! the coordinator's log still holds (see `twopc_participant::heuristics`).

use std::str::FromStr;

use tonic::transport::Channel;
use twopc_leader::follow::Retry;
use twopc_proto::pb;
use twopc_proto::pb::participant_client::ParticipantClient;

use crate::client::{ADMIN_TIMEOUT, ConnectOptions, within};
use crate::{Client, ClientError};

/// A prepared tid that a participant holds without knowing its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubtTid {
    pub tid: String,
    pub prepared_for_ms: u64,
    /// How many times the participant asked the coordinator so far.
    pub asked: u32,
}

/// One partition's answer to `ListInDoubt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInDoubt {
    pub partition: u32,
    pub address: Option<String>,
    /// The in-doubt tids, or why the participant could not be asked.
    pub tids: Result<Vec<InDoubtTid>, String>,
    /// Outcomes an operator imposed there, oldest first (empty on error).
    pub heuristics: Vec<HeuristicOutcome>,
    /// The cluster id the participant's data belongs to (empty if unknown).
    pub cluster_id: String,
    /// Set while the participant is fenced: the coordinator answered with
    /// this other cluster id (its decision log is not the one the
    /// participant's prepared tids voted under).
    pub mismatched_cluster_id: Option<String>,
    /// In-doubt tids the participant left out of `tids`: its answer would
    /// have passed the message limit.
    pub omitted_tids: u32,
}

impl PartitionInDoubt {
    fn from_response(resp: pb::ListInDoubtResponse, partition: u32, address: Option<String>) -> Self {
        let tids = resp
            .tids
            .into_iter()
            .map(|t| InDoubtTid { tid: t.tid, prepared_for_ms: t.prepared_for_ms, asked: t.asked })
            .collect();
        let heuristics = resp
            .heuristics
            .into_iter()
            .map(|h| HeuristicOutcome {
                committed: h.outcome() == pb::Outcome::Committed,
                tid: h.tid,
                reason: h.reason,
                at_unix_ms: h.at_unix_ms,
                contradicted: h.contradicted,
            })
            .collect();
        let mismatched = Some(resp.mismatched_cluster_id).filter(|m| !m.is_empty());
        PartitionInDoubt {
            omitted_tids: resp.omitted_tids,
            partition,
            address,
            tids: Ok(tids),
            heuristics,
            cluster_id: resp.cluster_id,
            mismatched_cluster_id: mismatched,
        }
    }

    fn failed(partition: u32, address: Option<String>, why: String) -> Self {
        PartitionInDoubt {
            partition,
            address,
            tids: Err(why),
            heuristics: vec![],
            cluster_id: String::new(),
            mismatched_cluster_id: None,
            omitted_tids: 0,
        }
    }
}

/// An outcome an operator imposed on a tid at a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeuristicOutcome {
    pub tid: String,
    pub committed: bool,
    pub reason: String,
    pub at_unix_ms: u64,
    /// The coordinator's decision, arriving later, said the opposite.
    pub contradicted: bool,
}

/// The answer to a manual resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// false: the coordinator's log held the same outcome, which was applied
    /// as its decision (nothing heuristic was recorded).
    pub heuristic: bool,
    pub detail: String,
}

/// Asks the participant at `address` to end the in-doubt `tid` with
/// `commit` (true) or abort; `override_lost_log` states that the
/// coordinator's decision log is lost (see module docs).
pub async fn resolve_heuristically(
    address: &str,
    tid: uuid::Uuid,
    commit: bool,
    override_lost_log: bool,
    reason: &str,
    options: &ConnectOptions,
) -> Result<Resolution, ClientError> {
    let peer = || format!("participant at {address}");
    let mut client = crate::routing::participant_client(address, &options.tls, options.sizes)?;
    let req = options.admin_token.request(pb::ResolveHeuristicallyRequest {
        tid: tid.to_string(),
        commit,
        override_lost_log,
        reason: reason.to_string(),
    });
    let resp = match within(Some(ADMIN_TIMEOUT), peer, client.resolve_heuristically(req)).await {
        Ok(r) => r.into_inner(),
        // Called directly (no coordinator first): a TLS mismatch shows here.
        Err(s) => {
            let e = ClientError::from_rpc(s, peer);
            return Err(crate::error::tls_mismatch_probed(e, &peer(), address, options.tls.is_enabled()).await);
        }
    };
    Ok(Resolution { heuristic: resp.heuristic, detail: resp.detail })
}

/// Which process a failpoint is armed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailpointTarget {
    Coordinator,
    Partition(u32),
}

impl FromStr for FailpointTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("coordinator") {
            return Ok(FailpointTarget::Coordinator);
        }
        s.parse()
            .map(FailpointTarget::Partition)
            .map_err(|_| format!("{s:?} is not a failpoint target: use `coordinator` or a partition number"))
    }
}

/// Asks one participant directly for its in-doubt tids, without the
/// coordinator: this is how an operator looks while the coordinator is down.
pub async fn in_doubt_at_address(address: &str, options: &ConnectOptions) -> Result<PartitionInDoubt, ClientError> {
    let peer = || format!("participant at {address}");
    let mut client = crate::routing::participant_client(address, &options.tls, options.sizes)?;
    let request = options.admin_token.request(pb::ListInDoubtRequest {});
    let resp = match within(Some(ADMIN_TIMEOUT), peer, client.list_in_doubt(request)).await {
        Ok(r) => r.into_inner(),
        // Called directly (no coordinator first): a TLS mismatch shows here.
        Err(s) => {
            let e = ClientError::from_rpc(s, peer);
            return Err(crate::error::tls_mismatch_probed(e, &peer(), address, options.tls.is_enabled()).await);
        }
    };
    let partition = resp.partition;
    Ok(PartitionInDoubt::from_response(resp, partition, Some(address.to_string())))
}

impl Client {
    /// Every partition's in-doubt tids, asked in parallel over a fresh
    /// topology.
    pub async fn in_doubt(&self) -> Result<Vec<PartitionInDoubt>, ClientError> {
        let topology = self.topology().await?;
        let handles: Vec<_> = (0..topology.partitions)
            .map(|p| {
                let client = self.clone();
                tokio::spawn(async move { client.in_doubt_at(p).await })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for (p, handle) in (0..).zip(handles) {
            let address = topology.address(p).map(str::to_string);
            let answer = handle.await.unwrap_or_else(|e| Err(format!("asking partition {p} failed: {e}")));
            out.push(match answer {
                Ok(resp) => PartitionInDoubt::from_response(resp, p, address),
                Err(why) => PartitionInDoubt::failed(p, address, why),
            });
        }
        Ok(out)
    }

    async fn in_doubt_at(&self, p: u32) -> Result<pb::ListInDoubtResponse, String> {
        let route = self.route_partition(p).await.map_err(|e| e.to_string())?;
        let token = &self.options().admin_token;
        let call = |mut c: ParticipantClient<Channel>| async move {
            c.list_in_doubt(token.request(pb::ListInDoubtRequest {})).await
        };
        Ok(route.call(Some(ADMIN_TIMEOUT), &call).await.map_err(|s| route.error(s).to_string())?.into_inner())
    }

    /// The coordinator's live and unfinished transactions (the leader's).
    pub async fn transactions(&self) -> Result<Vec<pb::TransactionInfo>, ClientError> {
        Ok(self.transactions_listing().await?.0)
    }

    /// [`Client::transactions`], with how many the coordinator left out
    /// because its answer would have passed the message limit.
    pub async fn transactions_listing(&self) -> Result<(Vec<pb::TransactionInfo>, u32), ClientError> {
        let l = self.transaction_listing().await?;
        Ok((l.transactions, l.omitted))
    }

    /// The coordinator's whole listing: [`Client::transactions_listing`]
    /// and the count of tids reserved in blocks and not used yet.
    pub async fn transaction_listing(&self) -> Result<TransactionListing, ClientError> {
        let token = &self.options().admin_token;
        let policy = self.policy().attempts_within(ADMIN_TIMEOUT);
        let resp = self
            .coordinator_call("ListTransactions", policy, Retry::Idempotent, |mut c| async move {
                c.list_transactions(token.request(pb::ListTransactionsRequest {})).await
            })
            .await
            .map_err(|e| self.follow_error(e))?;
        Ok(TransactionListing { transactions: resp.transactions, omitted: resp.omitted, reserved: resp.reserved })
    }

    /// Arms failpoint `name` with `actions` in one process (the leading
    /// coordinator, or a partition); empty `actions` disarms it.
    pub async fn set_failpoint(&self, target: FailpointTarget, name: &str, actions: &str) -> Result<(), ClientError> {
        let req = pb::SetFailpointRequest { name: name.to_string(), actions: actions.to_string() };
        let token = &self.options().admin_token;
        match target {
            FailpointTarget::Coordinator => {
                let policy = self.policy().attempts_within(ADMIN_TIMEOUT);
                self.coordinator_call("SetFailpoint", policy, Retry::Idempotent, |mut c| {
                    let req = token.request(req.clone());
                    async move { c.set_failpoint(req).await }
                })
                .await
                .map_err(|e| self.follow_error(e))?;
            }
            FailpointTarget::Partition(p) => {
                // Bounded like every admin call: a frozen participant
                // (SIGSTOPped) must not hang the caller.
                let route = self.route_partition(p).await?;
                let call = |mut c: ParticipantClient<Channel>| {
                    let req = token.request(req.clone());
                    async move { c.set_failpoint(req).await }
                };
                route.call(Some(ADMIN_TIMEOUT), &call).await.map_err(|s| route.error(s))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoint_targets_parse() {
        assert_eq!("coordinator".parse(), Ok(FailpointTarget::Coordinator));
        assert_eq!("2".parse(), Ok(FailpointTarget::Partition(2)));
        assert!("p2".parse::<FailpointTarget>().is_err());
    }
}

/// What `twopc txns` shows ([`Client::transaction_listing`]).
#[derive(Debug, Clone)]
pub struct TransactionListing {
    /// The live and unfinished transactions, oldest first.
    pub transactions: Vec<pb::TransactionInfo>,
    /// How many the coordinator left out (its answer reached the message limit).
    pub omitted: u32,
    /// Tids reserved in blocks (a client's pool) and not used yet: they
    /// count against the open-transaction bound but are no transactions yet.
    pub reserved: u32,
}
