//! The `twopc.v1.Participant` gRPC service: validates requests and hands
//! them to the [`Node`].

use std::sync::Arc;

use tonic::{Request, Response, Status};
use twopc_proto::pb::{self, participant_server::Participant as ParticipantRpc};
use twopc_proto::{failpoint, now_unix_ms, tid};

use crate::node::{Node, VoteReply};

/// Input limits, checked before anything else.
#[derive(Debug, Clone)]
pub struct InputLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

pub struct ParticipantService {
    pub node: Arc<Node>,
    pub limits: InputLimits,
}

type Reply<T> = Result<Response<T>, Status>;

impl ParticipantService {
    fn check_key(&self, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key is empty: keys must be 1 or more bytes"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key is {} bytes, over the limit of {} (--max-key-bytes)",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes, over the limit of {} (--max-value-bytes)",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ParticipantRpc for ParticipantService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Reply<pb::GetResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        let value = self.node.get(tid, &req.key).await?;
        Ok(Response::new(pb::GetResponse { found: value.is_some(), value: value.unwrap_or_default() }))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Reply<pb::PutResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        self.check_value(&req.value)?;
        self.node.write(tid, &req.key, Some(req.value)).await?;
        Ok(Response::new(pb::PutResponse {}))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Reply<pb::DeleteResponse> {
        let req = req.into_inner();
        let tid = tid::parse(&req.tid)?;
        self.check_key(&req.key)?;
        self.node.write(tid, &req.key, None).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn read(&self, req: Request<pb::ReadRequest>) -> Reply<pb::GetResponse> {
        let req = req.into_inner();
        self.check_key(&req.key)?;
        let value = self.node.read(&req.key)?;
        Ok(Response::new(pb::GetResponse { found: value.is_some(), value: value.unwrap_or_default() }))
    }

    async fn prepare(&self, req: Request<pb::PrepareRequest>) -> Reply<pb::PrepareResponse> {
        let tid = tid::parse(&req.into_inner().tid)?;
        let (vote, reason) = match self.node.prepare(tid).await? {
            VoteReply::Yes => (pb::Vote::Yes, String::new()),
            VoteReply::ReadOnly => (pb::Vote::ReadOnly, String::new()),
            VoteReply::No(why) => (pb::Vote::No, why),
        };
        Ok(Response::new(pb::PrepareResponse { vote: vote as i32, reason }))
    }

    async fn commit(&self, req: Request<pb::ResolveRequest>) -> Reply<pb::ResolveResponse> {
        let tid = tid::parse(&req.into_inner().tid)?;
        self.node.commit(tid).await?;
        Ok(Response::new(pb::ResolveResponse {}))
    }

    async fn abort(&self, req: Request<pb::ResolveRequest>) -> Reply<pb::ResolveResponse> {
        let tid = tid::parse(&req.into_inner().tid)?;
        self.node.abort(tid).await?;
        Ok(Response::new(pb::ResolveResponse {}))
    }

    async fn list_in_doubt(&self, _req: Request<pb::ListInDoubtRequest>) -> Reply<pb::ListInDoubtResponse> {
        let now = now_unix_ms();
        let core = self.node.core();
        let tids = core
            .in_doubt()
            .into_iter()
            .map(|d| pb::InDoubtTid {
                tid: d.tid.to_string(),
                prepared_for_ms: now.saturating_sub(d.since),
                asked: d.asked,
            })
            .collect();
        Ok(Response::new(pb::ListInDoubtResponse {
            partition: self.node.partition,
            tids,
            open_tids: core.open_tids() as u32,
            locked_keys: core.locked_keys() as u32,
        }))
    }

    async fn set_failpoint(&self, req: Request<pb::SetFailpointRequest>) -> Reply<pb::SetFailpointResponse> {
        failpoint::set_from_rpc(req.into_inner())?;
        Ok(Response::new(pb::SetFailpointResponse {}))
    }
}
