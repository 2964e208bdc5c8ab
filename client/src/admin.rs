//! Operator calls: in-doubt listings, live transactions, failpoints.
//!
//! These exist to look at a cluster that is partly broken, so they must
//! degrade rather than fail: `in_doubt` asks every participant in parallel
//! and reports an unreachable one as an error line for that partition, not
//! as a failure of the whole call.

use std::str::FromStr;

use tonic::transport::Channel;
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
    let mut client = ParticipantClient::new(crate::routing::endpoint(address, &options.tls)?.connect_lazy());
    let request = options.admin_token.request(pb::ListInDoubtRequest {});
    let resp = within(Some(ADMIN_TIMEOUT), peer, client.list_in_doubt(request))
        .await
        .map_err(|s| ClientError::from_rpc(s, peer))?
        .into_inner();
    let tids = resp
        .tids
        .into_iter()
        .map(|t| InDoubtTid { tid: t.tid, prepared_for_ms: t.prepared_for_ms, asked: t.asked })
        .collect();
    Ok(PartitionInDoubt { partition: resp.partition, address: Some(address.to_string()), tids: Ok(tids) })
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
            let tids = handle.await.unwrap_or_else(|e| Err(format!("asking partition {p} failed: {e}")));
            out.push(PartitionInDoubt { partition: p, address: topology.address(p).map(str::to_string), tids });
        }
        Ok(out)
    }

    async fn in_doubt_at(&self, p: u32) -> Result<Vec<InDoubtTid>, String> {
        let route = self.route_partition(p).await.map_err(|e| e.to_string())?;
        let token = &self.options().admin_token;
        let call = |mut c: ParticipantClient<Channel>| async move {
            c.list_in_doubt(token.request(pb::ListInDoubtRequest {})).await
        };
        let resp = route.call(Some(ADMIN_TIMEOUT), &call).await.map_err(|s| route.error(s).to_string())?.into_inner();
        Ok(resp
            .tids
            .into_iter()
            .map(|t| InDoubtTid { tid: t.tid, prepared_for_ms: t.prepared_for_ms, asked: t.asked })
            .collect())
    }

    /// The coordinator's live and unfinished transactions.
    pub async fn transactions(&self) -> Result<Vec<pb::TransactionInfo>, ClientError> {
        let mut coordinator = self.coordinator();
        let resp = within(
            Some(ADMIN_TIMEOUT),
            || self.coordinator_peer(),
            coordinator.list_transactions(self.options().admin_token.request(pb::ListTransactionsRequest {})),
        )
        .await
        .map_err(|s| self.coordinator_error(s))?;
        Ok(resp.into_inner().transactions)
    }

    /// Arms failpoint `name` with `actions` in one process; empty `actions`
    /// disarms it.
    pub async fn set_failpoint(&self, target: FailpointTarget, name: &str, actions: &str) -> Result<(), ClientError> {
        let req = pb::SetFailpointRequest { name: name.to_string(), actions: actions.to_string() };
        let req = self.options().admin_token.request(req);
        match target {
            FailpointTarget::Coordinator => {
                self.coordinator().set_failpoint(req).await.map_err(|s| self.coordinator_error(s))?;
            }
            FailpointTarget::Partition(p) => {
                let route = self.route_partition(p).await?;
                route.client.clone().set_failpoint(req).await.map_err(|s| route.error(s))?;
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
