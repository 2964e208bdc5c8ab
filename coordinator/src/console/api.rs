//! The console's JSON API. Every answer is built from the coordinator's
//! memory, except the in-doubt fan-out ([`in_doubt`], bounded and shared)
//! and a participant's failpoint. Refusals are gRPC statuses (the same
//! words the CLI prints), turned into HTTP statuses by [`super::server`].
//!
//! - `GET /api/status`: role (`single`, `leader`, `standby`,
//!   `recovering`), the leader's address, partitions, TLS, whether a token
//!   is required, the open-transaction count, the known failpoint names.
//! - `GET /api/history?since=MS`: the per-second samples after `since`.
//! - `GET /api/transactions`: live and unfinished transactions, oldest
//!   first, at most [`MAX_LISTED`] (`total` says how many there are).
//! - `GET /api/in-doubt`: each partition's in-doubt tids (how long
//!   prepared, how often the participant asked) or why it could not be asked.
//! - `GET /api/topology`: each partition's address and reachability.
//! - `GET /api/decision/TID`: the decision as a client hears it (rule 6:
//!   FORGOTTEN where the log forgot it; a presumed abort says so).
//! - `POST /api/abort {"tid"}`: an operator's abort (refused for a decided
//!   tid, exactly as `twopc abort` is).
//! - `POST /api/failpoint {"target": "coordinator"|P, "name", "actions"}`:
//!   arms a failpoint (empty `actions` disarms it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Status;
use twopc_core::coordinator::DecisionAnswer;
use twopc_proto::reason::{AbortKind, AbortReason};
use twopc_proto::{clock, failpoint, now_unix_ms, pb, tid};

use super::Console;
use crate::driver::Driver;
use crate::error::CoordinatorError;

/// Most transactions (and in-doubt tids per partition) one answer lists.
pub const MAX_LISTED: usize = 200;
/// How long one in-doubt fan-out is reused by every page.
pub const IN_DOUBT_TTL: Duration = Duration::from_secs(1);
/// How long one participant may take to answer ListInDoubt or SetFailpoint.
const PARTICIPANT_TIMEOUT: Duration = Duration::from_secs(1);
/// gRPC metadata a standby's refusal carries the leader in (copied to the JSON body).
pub const LEADER_METADATA: &str = "x-twopc-leader";

type Answer = Result<Value, Status>;

/// The last in-doubt fan-out, shared by every page for [`IN_DOUBT_TTL`].
/// Its lock is held during a fan-out, so concurrent pages wait for the one
/// in flight instead of starting their own.
#[derive(Default)]
pub struct InDoubtCache {
    slot: tokio::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

/// The serving term's driver, or 503 naming the leader (a standby, or a
/// leader still recovering), or 503 while a leader's lease is not certain
/// (PROTOCOL.md rule 14, as the gRPC gate: a leader paused past its lease
/// must not answer from memory, e.g. a presumed ABORTED for a tid its
/// successor committed).
fn serving(console: &Console) -> Result<Arc<Driver>, Status> {
    if let Some(driver) = console.driver() {
        if console.leadership.as_ref().is_some_and(|l| !l.certain()) {
            return Err(twopc_leader::uncertain_status());
        }
        return Ok(driver);
    }
    let leader = console.leadership.as_ref().and_then(|l| l.leader_hint());
    let mut status = Status::unavailable(match &leader {
        Some(l) => format!("this coordinator is a standby: the leader is {l}; open the leader's console"),
        None => "this coordinator is not serving yet (standing by or recovering): no leader known yet".to_string(),
    });
    if let Some(l) = leader.and_then(|l| l.parse::<tonic::metadata::AsciiMetadataValue>().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, l);
    }
    Err(status)
}

pub fn status(console: &Console) -> Value {
    let driver = console.driver();
    let (role, leader) = match (&console.leadership, &driver) {
        (None, _) => ("single", Some(console.coordinator_addr.clone())),
        (Some(_), Some(_)) => ("leader", Some(console.coordinator_addr.clone())),
        (Some(l), None) if l.leads() => ("recovering", Some(console.coordinator_addr.clone())),
        (Some(l), None) => ("standby", l.leader_hint()),
    };
    json!({
        "role": role,
        "leader": leader,
        "coordinator": console.coordinator_addr,
        "partitions": console.partitions,
        "tls": console.tls,
        "token_required": console.admin_token.is_set(),
        "open_transactions": driver.map(|d| d.state().core.live_count()),
        "failpoints": {
            "enabled": failpoint::ENABLED,
            "coordinator": crate::FAILPOINTS,
            "participant": console.participant_failpoints,
        },
        "keep_secs": super::history::KEEP_SECS,
        "now_unix_ms": now_unix_ms(),
    })
}

/// `since=MS` from a query string (0 when absent or malformed: everything).
fn since(query: &str) -> u64 {
    query.split('&').find_map(|kv| kv.strip_prefix("since=")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub fn history(console: &Console, query: &str) -> Value {
    json!({ "samples": console.history.since(since(query)), "keep_secs": super::history::KEEP_SECS })
}

pub fn transactions(console: &Console) -> Answer {
    let driver = serving(console)?;
    let now = clock::now_ms();
    let st = driver.state();
    let total = st.core.live_count();
    // Oldest first: the stuck ones are what an operator looks for. Linear
    // under the lock (a partial sort), whatever the number of live tids.
    let mut live: Vec<_> = st.core.live().collect();
    if live.len() > MAX_LISTED {
        live.select_nth_unstable_by_key(MAX_LISTED, |(tid, t)| (t.begun_at, **tid));
        live.truncate(MAX_LISTED);
    }
    live.sort_by_key(|(tid, t)| (t.begun_at, **tid));
    let rows: Vec<Value> = live
        .into_iter()
        .map(|(tid, txn)| {
            let parts: Vec<Value> = txn
                .parts
                .iter()
                .map(|(&p, part)| {
                    json!({
                        "partition": p,
                        "state": part.state.name(),
                        "retries": st.retries.get(&(*tid, p)).copied().unwrap_or(0),
                    })
                })
                .collect();
            json!({
                "tid": tid.to_string(),
                "state": txn.phase.name(),
                "age_ms": now.saturating_sub(txn.begun_at),
                "remaining_ms": txn.deadline as i64 - now as i64,
                "participants": parts,
            })
        })
        .collect();
    Ok(json!({ "total": total, "transactions": rows }))
}

/// Every partition's in-doubt tids, from the cache or a fresh fan-out.
pub async fn in_doubt(console: &Console) -> Answer {
    Ok((*in_doubt_shared(console).await?).clone())
}

async fn in_doubt_shared(console: &Console) -> Result<Arc<Value>, Status> {
    let driver = serving(console)?;
    let mut slot = console.in_doubt.slot.lock().await;
    if let Some((at, value)) = &*slot
        && at.elapsed() < IN_DOUBT_TTL
    {
        return Ok(value.clone());
    }
    let value = Arc::new(fan_out(console, &driver).await);
    *slot = Some((Instant::now(), value.clone()));
    Ok(value)
}

/// One ListInDoubt per registered participant, in parallel, each bounded.
async fn fan_out(console: &Console, driver: &Driver) -> Value {
    let addresses: std::collections::HashMap<u32, String> = driver.peers.addresses().into_iter().collect();
    let calls = (0..console.partitions).map(|p| {
        let client = driver.peers.client(p);
        let request = console.admin_token.request(pb::ListInDoubtRequest {});
        async move {
            let Some(mut client) = client else { return Err("no participant registered".to_string()) };
            match tokio::time::timeout(PARTICIPANT_TIMEOUT, client.list_in_doubt(request)).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
                Err(_) => Err(format!("no answer within {PARTICIPANT_TIMEOUT:?}")),
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    let partitions: Vec<Value> = (0..console.partitions)
        .zip(answers)
        .map(|(p, answer)| {
            let address = addresses.get(&p).cloned();
            match answer {
                Ok(resp) => {
                    let shown = resp.tids.len().min(MAX_LISTED);
                    let tids: Vec<Value> = resp.tids[..shown]
                        .iter()
                        .map(|t| json!({ "tid": t.tid, "prepared_for_ms": t.prepared_for_ms, "asked": t.asked }))
                        .collect();
                    json!({
                        "partition": p,
                        "address": address,
                        "reachable": true,
                        "tids": tids,
                        "omitted_tids": resp.omitted_tids as usize + resp.tids.len() - shown,
                        "open_tids": resp.open_tids,
                        "locked_keys": resp.locked_keys,
                        "heuristics": resp.heuristics.len(),
                    })
                }
                Err(why) => json!({
                    "partition": p,
                    "address": address,
                    "reachable": false,
                    "error": why,
                    "tids": [],
                }),
            }
        })
        .collect();
    json!({ "fetched_unix_ms": now_unix_ms(), "partitions": partitions })
}

/// Each partition's address and whether it answered the last fan-out.
pub async fn topology(console: &Console) -> Answer {
    let shared = in_doubt_shared(console).await?;
    let members: Vec<Value> = shared["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    json!({
                        "partition": p["partition"],
                        "address": p["address"],
                        "registered": !p["address"].is_null(),
                        "reachable": p["reachable"],
                        "error": p.get("error"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({ "partitions": console.partitions, "members": members, "checked_unix_ms": shared["fetched_unix_ms"] }))
}

pub fn decision(console: &Console, tid: &str) -> Answer {
    let driver = serving(console)?;
    let tid = tid::parse(tid)?;
    let st = driver.state();
    let (answer, remembered, phase) = (st.core.decision(tid), st.core.remembers(tid), st.core.phase(tid));
    let (decision, kind, reason) = match answer {
        DecisionAnswer::Committed => ("COMMITTED", None, String::new()),
        DecisionAnswer::Aborted(why) => ("ABORTED", Some(why.kind.label()), why.detail),
        DecisionAnswer::Pending => ("PENDING", None, String::new()),
        DecisionAnswer::Forgotten => ("FORGOTTEN", None, twopc_core::coordinator::FORGOTTEN.to_string()),
    };
    Ok(json!({
        "tid": tid.to_string(),
        "decision": decision,
        "abort_kind": kind,
        "reason": reason,
        "presumed": decision == "ABORTED" && !remembered,
        "phase": phase.map(|p| p.name()),
    }))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(body)
        .map_err(|e| Status::invalid_argument(format!("{what}: the body is not the expected JSON ({e})")))
}

#[derive(serde::Deserialize)]
struct AbortBody {
    tid: String,
}

/// An operator's abort, as `twopc abort` sends it (same refusals).
pub fn abort(console: &Console, body: &[u8]) -> Answer {
    let req: AbortBody = parse_body(body, "POST /api/abort {\"tid\": TID}")?;
    let driver = serving(console)?;
    let tid = tid::parse(req.tid.trim())?;
    let why = AbortReason::new(AbortKind::Operator, "aborted by an operator (web console)");
    driver
        .apply(|c| match c.abort_requested(tid, why) {
            Ok(actions) => (Ok(()), actions),
            Err(r) => (Err(r), vec![]),
        })
        .map_err(|r| Status::from(CoordinatorError::from_refusal(tid, r)))?;
    tracing::info!(%tid, "aborted from the web console");
    Ok(json!({ "ok": true, "tid": tid.to_string() }))
}

#[derive(serde::Deserialize)]
struct FailpointBody {
    /// `"coordinator"`, or a partition number (as a number or a string).
    target: Value,
    name: String,
    #[serde(default)]
    actions: String,
}

/// Arms (or, with empty actions, disarms) a failpoint here or at a participant.
pub async fn failpoint(console: &Console, body: &[u8]) -> Answer {
    let req: FailpointBody =
        parse_body(body, "POST /api/failpoint {\"target\": \"coordinator\"|P, \"name\": N, \"actions\": A}")?;
    let rpc = pb::SetFailpointRequest { name: req.name.trim().to_string(), actions: req.actions.trim().to_string() };
    let target = match &req.target {
        Value::String(s) if s.eq_ignore_ascii_case("coordinator") => None,
        Value::String(s) => Some(s.trim().parse::<u32>().ok()),
        Value::Number(n) => Some(n.as_u64().and_then(|n| u32::try_from(n).ok())),
        _ => Some(None),
    };
    let armed = if rpc.actions.is_empty() { "disarmed" } else { "armed" };
    match target {
        None => {
            // Process-local: a standby's own failpoints work too.
            failpoint::set_from_rpc(rpc.clone(), crate::FAILPOINTS)?;
            tracing::warn!(name = %rpc.name, actions = %rpc.actions, "failpoint {armed} at the coordinator from the web console");
            Ok(json!({ "ok": true, "target": "coordinator", "name": rpc.name, "actions": rpc.actions }))
        }
        Some(None) => Err(Status::invalid_argument(format!(
            "failpoint target {} is neither \"coordinator\" nor a partition number",
            req.target
        ))),
        Some(Some(p)) => {
            if p >= console.partitions {
                return Err(Status::invalid_argument(format!(
                    "partition {p} is out of range: this cluster has partitions 0..{}",
                    console.partitions
                )));
            }
            let driver = serving(console)?;
            let Some(mut client) = driver.peers.client(p) else {
                return Err(Status::failed_precondition(format!(
                    "partition {p} has no registered participant: start it (it registers itself)"
                )));
            };
            let call = client.set_failpoint(console.admin_token.request(rpc.clone()));
            match tokio::time::timeout(PARTICIPANT_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(s)) => return Err(Status::new(s.code(), format!("partition {p}: {}", s.message()))),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "partition {p} did not answer within {PARTICIPANT_TIMEOUT:?}"
                    )));
                }
            }
            tracing::warn!(partition = p, name = %rpc.name, actions = %rpc.actions, "failpoint {armed} at a participant from the web console");
            Ok(json!({ "ok": true, "target": p, "name": rpc.name, "actions": rpc.actions }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_read_from_the_query() {
        assert_eq!(since("since=1234"), 1234);
        assert_eq!(since("a=1&since=5"), 5);
        assert_eq!(since(""), 0);
        assert_eq!(since("since=x"), 0);
    }
}
