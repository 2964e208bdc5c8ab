//! One transaction, by tid.
//!
//! A `Txn` holds no state beyond its tid: the participants hold the locks
//! and writes, and enlist themselves with the coordinator (PROTOCOL.md rule
//! 2), so commit needs no list of touched partitions and a clone, or another
//! process attached by tid, is the same transaction. An error from any
//! operation leaves the tid to be aborted; `commit` is safe to repeat.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twopc_leader::follow::{FollowError, Policy, Retry};
use twopc_proto::Backoff;
use twopc_proto::pb;
use twopc_proto::pb::operation::Kind;
use uuid::Uuid;

use crate::{Client, ClientError, Decision};

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Why, in the coordinator's words (which participant, what happened).
    Aborted {
        reason: String,
    },
    /// The coordinator no longer knows the outcome: the tid is older than
    /// the oldest decision its log keeps, so it may have committed or
    /// aborted; check the data (PROTOCOL.md rule 6). Only a commit of an
    /// old tid by tid (e.g. `twopc commit --tid`) can hear it.
    Forgotten {
        reason: String,
    },
}

/// A transaction handle; clones refer to the same transaction.
#[derive(Debug, Clone)]
pub struct Txn {
    client: Client,
    tid: Uuid,
    deadline_unix_ms: u64,
    /// Whether a put or delete was sent: tells the coordinator whether a
    /// transaction on one participant may commit in one phase (see
    /// `CommitRequest.wrote`; a handle attached by tid does not know).
    wrote: Arc<AtomicBool>,
}

impl Txn {
    pub(crate) fn new(client: Client, tid: Uuid, deadline_unix_ms: u64) -> Self {
        Txn { client, tid, deadline_unix_ms, wrote: Arc::default() }
    }

    pub fn tid(&self) -> Uuid {
        self.tid
    }

    /// When the coordinator will abort this transaction if it is still
    /// open; 0 when unknown (attached by tid).
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_unix_ms
    }

    /// How long an operation may wait (e.g. for a lock): until a little
    /// after the deadline, when the coordinator aborts the tid anyway.
    /// Unlimited when the deadline is unknown.
    fn limit(&self) -> Option<Duration> {
        const GRACE: Duration = Duration::from_secs(2);
        (self.deadline_unix_ms > 0).then(|| {
            let left = self.deadline_unix_ms.saturating_sub(twopc_proto::now_unix_ms());
            Duration::from_millis(left) + GRACE
        })
    }

    /// Reads `key` under a shared lock.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, false).await
    }

    /// Reads `key` under an exclusive lock, for a key this transaction is
    /// about to write (read-modify-write): two transactions doing the same
    /// then queue instead of both taking shared locks and one dying on the
    /// upgrade.
    pub async fn get_for_update(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.read(key, true).await
    }

    async fn read(&self, key: &[u8], for_update: bool) -> Result<Option<Vec<u8>>, ClientError> {
        let kind = if for_update { Kind::GetForUpdate } else { Kind::Get };
        let resp = self.operate(kind, key, vec![]).await?;
        Ok(resp.found.then_some(resp.value))
    }

    /// Writes `key` under an exclusive lock.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.wrote.store(true, Ordering::Relaxed);
        self.operate(Kind::Put, key, value.to_vec()).await.map(drop)
    }

    /// Deletes `key` under an exclusive lock.
    pub async fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        self.wrote.store(true, Ordering::Relaxed);
        self.operate(Kind::Delete, key, vec![]).await.map(drop)
    }

    /// Sends the operation batched with other transactions' operations; if
    /// it has to wait for a lock (a batch never waits), resends it alone
    /// with its unary call, which waits.
    async fn operate(&self, kind: Kind, key: &[u8], value: Vec<u8>) -> Result<pb::OperationResult, ClientError> {
        let tid = self.tid.to_string();
        let op = pb::Operation { tid: tid.clone(), kind: kind as i32, key: key.to_vec(), value: value.clone() };
        let done = self.client.operate(key, op, self.limit()).await?;
        if !done.must_wait {
            return Ok(done);
        }
        let limit = self.limit();
        let key_vec = key.to_vec();
        match kind {
            Kind::Get | Kind::GetForUpdate => {
                let req = pb::GetRequest { tid, key: key_vec, for_update: kind == Kind::GetForUpdate };
                let r = self
                    .client
                    .on_key(key, false, limit, move |mut c| {
                        let req = req.clone();
                        async move { c.get(req).await }
                    })
                    .await?;
                Ok(pb::OperationResult { found: r.found, value: r.value, ..Default::default() })
            }
            Kind::Unspecified => Err(ClientError::InvalidArgument("operation kind is missing".into())),
            Kind::Put | Kind::Delete => {
                let (put, del) = (
                    pb::PutRequest { tid: tid.clone(), key: key_vec.clone(), value },
                    pb::DeleteRequest { tid, key: key_vec },
                );
                self.client
                    .on_key(key, false, limit, move |mut c| {
                        let (put, del) = (put.clone(), del.clone());
                        async move {
                            if kind == Kind::Put {
                                c.put(put).await.map(|r| r.map(drop))
                            } else {
                                c.delete(del).await.map(|r| r.map(drop))
                            }
                        }
                    })
                    .await?;
                Ok(pb::OperationResult::default())
            }
        }
    }

    /// Asks the coordinator to run two-phase commit. COMMITTED is only
    /// answered once the decision is durable.
    ///
    /// Following the leader (PROTOCOL.md rule 16; what any other client
    /// must do too): a Commit is resent only where it certainly did
    /// nothing (a standby's answer, a connection never made). When it was
    /// cut off mid-flight (a transport error after it left, an UNAVAILABLE
    /// without a leader's address, no answer in time) its outcome is
    /// unknown: then the leader, whoever it is now, is asked GetDecision
    /// until it says COMMITTED or ABORTED. A new leader answers ABORTED for
    /// a tid it has no record of, which is honest because the old leader is
    /// fenced (rule 14) and can no longer write one; COMMITTED if the
    /// record was replicated; FORGOTTEN (returned as [`Outcome::Forgotten`])
    /// only for a tid older than the oldest decision its log keeps. While the answer is PENDING the leader holds
    /// the tid live: either deciding it (a repeated Commit joins and waits
    /// for the same outcome, rule 11) or it never received the Commit (the
    /// repeat starts it), so the Commit is repeated there. All of it within
    /// [`crate::ConnectOptions::call_budget`]; if that runs out the error is
    /// UNAVAILABLE saying the outcome is unknown: ask [`Client::status`].
    pub async fn commit(&self) -> Result<Outcome, ClientError> {
        let started = Instant::now();
        let req = pb::CommitRequest { tid: self.tid.to_string(), wrote: self.wrote.load(Ordering::Relaxed) };
        let mut cut_off = match self.commit_once(&req, self.client.commit_policy_since(started)).await {
            Ok(outcome) => return outcome,
            Err(e @ FollowError::Uncertain { .. }) => self.client.follow_error(e),
            Err(e) => return Err(self.client.follow_error(e)),
        };
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        // Why the last round learned nothing, for the final error.
        let mut last = String::from("no answer");
        loop {
            tracing::debug!(tid = %self.tid, error = %cut_off, "commit cut off: asking the leader for the outcome");
            let asked = if self.client.options().call_budget <= started.elapsed() {
                Some(format!("the call budget ran out before a leader said COMMITTED or ABORTED (last: {last})"))
            } else {
                match self.client.decision(self.tid, self.client.policy_since(started)).await {
                    Ok(Decision::Committed) => return Ok(Outcome::Committed),
                    Ok(Decision::Aborted { reason }) => return Ok(Outcome::Aborted { reason }),
                    Ok(Decision::Forgotten { reason }) => return Ok(Outcome::Forgotten { reason }),
                    Ok(Decision::Pending) => {
                        match self.commit_once(&req, self.client.commit_policy_since(started)).await {
                            Ok(outcome) => return outcome,
                            Err(e @ FollowError::Uncertain { .. }) => {
                                cut_off = self.client.follow_error(e);
                                last = "the leader said PENDING".into();
                                None
                            }
                            // A coordinator of an older version that has no
                            // record of the tid (today's answer ABORTED, as
                            // GetDecision): it answers GetDecision ABORTED,
                            // asked next round.
                            Err(FollowError::Status { status, .. }) if status.code() == tonic::Code::NotFound => None,
                            Err(e @ FollowError::Exhausted { .. }) => {
                                last = e.to_string();
                                None
                            }
                            Err(e) => Some(format!("repeating the commit failed: {}", self.client.follow_error(e))),
                        }
                    }
                    // No leader answered within that call's hops; the
                    // budget decides when to give up.
                    Err(e @ FollowError::Exhausted { .. }) => {
                        last = e.to_string();
                        None
                    }
                    Err(e) => Some(format!("asking for its outcome failed: {}", self.client.follow_error(e))),
                }
            };
            let Some(why) = asked else {
                let left = self.client.options().call_budget.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.next_delay().min(left)).await;
                continue;
            };
            let cut_off = match cut_off {
                ClientError::Unavailable(why) => why,
                e => e.to_string(),
            };
            return Err(ClientError::Unavailable(format!(
                "{cut_off}; {why}; the outcome of tid {tid} is unknown: ask with `twopc status {tid}` once a \
                 coordinator leads",
                tid = self.tid
            )));
        }
    }

    /// One Commit call, resent only where it did nothing; the outcome, or
    /// an error (`Uncertain`: cut off, outcome unknown).
    async fn commit_once(
        &self,
        req: &pb::CommitRequest,
        policy: Policy,
    ) -> Result<Result<Outcome, ClientError>, FollowError> {
        let resp = self
            .client
            .coordinator_call("Commit", policy, Retry::UntouchedOnly, |mut c| {
                let req = req.clone();
                async move { c.commit(req).await }
            })
            .await?;
        Ok(match resp.outcome() {
            pb::Outcome::Committed => Ok(Outcome::Committed),
            pb::Outcome::Aborted => Ok(Outcome::Aborted { reason: resp.reason }),
            pb::Outcome::Forgotten => Ok(Outcome::Forgotten { reason: resp.reason }),
            pb::Outcome::Unspecified => {
                Err(tonic::Status::unknown("the coordinator answered Commit without an outcome").into())
            }
        })
    }

    /// Aborts the transaction, at whoever leads. Fails with
    /// FAILED_PRECONDITION if it already committed, or if its outcome is
    /// forgotten (older than the oldest decision the log keeps: it may have
    /// committed; [`ClientError::is_forgotten`] tells).
    pub async fn abort(&self) -> Result<(), ClientError> {
        let tid = self.tid.to_string();
        self.client
            .coordinator_call("Abort", self.client.policy(), Retry::Idempotent, |mut c| {
                let tid = tid.clone();
                async move { c.abort(pb::AbortRequest { tid }).await }
            })
            .await
            .map_err(|e| self.client.follow_error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Callers spawn transactions on tokio tasks, so the futures must be Send.
    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(t: Txn, c: Client) {
        assert_send(&t.get(b"k"));
        assert_send(&t.put(b"k", b"v"));
        assert_send(&t.commit());
        assert_send(&c.read(b"k"));
        assert_send(&c.in_doubt());
        assert_send(&c.begin(None));
    }
}
