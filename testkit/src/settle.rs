//! "Settled": nothing in doubt, no open tid, no lock held and no unfinished
//! decision anywhere (PROTOCOL.md's liveness after recovery). A test waits
//! for it after a crash and a restart, before checking what the
//! application's user sees: until then a read may wait on a lock, and a
//! tid may still move from in doubt to committed.

use std::fmt;
use std::time::{Duration, Instant};

use twopc_client::{Client, ConnectOptions};
use twopc_proto::pb;

/// One thing that keeps a cluster from being settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// A participant holds prepared tids without a decision (it voted YES).
    InDoubt { partition: u32, tids: Vec<String> },
    /// A participant has tids that are open (not yet prepared or aborted).
    OpenTids { partition: u32, count: u64 },
    /// A participant holds locks on this many keys.
    LockedKeys { partition: u32, count: u64 },
    /// The coordinator has transactions it has not finished (open, deciding,
    /// or decided with phase 2 not acknowledged everywhere).
    Unfinished { tids: Vec<String> },
    /// A process did not answer (down, paused, or refusing).
    Unreachable { who: String, error: String },
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::InDoubt { partition, tids } => {
                write!(f, "partition {partition}: {} tid(s) in doubt ({})", tids.len(), tids.join(", "))
            }
            Pending::OpenTids { partition, count } => write!(f, "partition {partition}: {count} open tid(s)"),
            Pending::LockedKeys { partition, count } => write!(f, "partition {partition}: {count} locked key(s)"),
            Pending::Unfinished { tids } => {
                write!(f, "coordinator: {} unfinished transaction(s) ({})", tids.len(), tids.join(", "))
            }
            Pending::Unreachable { who, error } => write!(f, "{who} unreachable: {error}"),
        }
    }
}

/// The cluster did not settle by the deadline: what was still unsettled at
/// the last look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster did not settle within {waited:?}: {}", describe(.pending))]
pub struct Unsettled {
    pub waited: Duration,
    pub pending: Vec<Pending>,
}

fn describe(pending: &[Pending]) -> String {
    pending.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// What keeps the cluster unsettled right now (empty: settled). Each
/// participant is asked directly at its address (`participants[p]` serves
/// partition `p`), so a dead coordinator does not hide them; the
/// coordinator through `client`.
///
/// Every process is asked at once, so a look takes at most one probe's
/// bound however many processes are paused (asked one after another, a
/// `settle(100ms)` with three frozen processes took 6 s).
pub async fn pending(client: &Client, participants: &[String], options: &ConnectOptions) -> Vec<Pending> {
    let mut probes = tokio::task::JoinSet::new();
    for (i, addr) in participants.iter().enumerate() {
        let (addr, options) = (addr.clone(), options.clone());
        probes.spawn(async move { (i, list_in_doubt(&addr, &options).await) });
    }
    let coordinator = {
        let client = client.clone();
        // Bounded like the participants' probes: the client's own budget
        // (following a leader) would let one look overrun a short deadline.
        tokio::spawn(async move { tokio::time::timeout(PROBE_TIMEOUT, client.transactions()).await })
    };
    let mut answers: Vec<Option<Result<pb::ListInDoubtResponse, String>>> = participants.iter().map(|_| None).collect();
    while let Some(done) = probes.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = Some(answer);
        }
    }
    let mut out = vec![];
    for ((p, addr), answer) in (0u32..).zip(participants).zip(answers) {
        let r = match answer.unwrap_or_else(|| Err("the probe failed".to_string())) {
            Ok(r) => r,
            Err(error) => {
                out.push(Pending::Unreachable { who: format!("partition {p} at {addr}"), error });
                continue;
            }
        };
        if !r.tids.is_empty() {
            out.push(Pending::InDoubt { partition: p, tids: r.tids.into_iter().map(|t| t.tid).collect() });
        }
        if r.open_tids > 0 {
            out.push(Pending::OpenTids { partition: p, count: r.open_tids.into() });
        }
        if r.locked_keys > 0 {
            out.push(Pending::LockedKeys { partition: p, count: r.locked_keys.into() });
        }
    }
    let coordinator = coordinator
        .await
        .unwrap_or_else(|e| Ok(Err(twopc_client::ClientError::Unavailable(format!("the probe failed: {e}")))));
    match coordinator {
        Ok(Ok(t)) if t.is_empty() => {}
        Ok(Ok(t)) => {
            out.push(Pending::Unfinished { tids: t.iter().map(|t: &pb::TransactionInfo| t.tid.clone()).collect() })
        }
        Ok(Err(e)) => out.push(Pending::Unreachable { who: "coordinator".into(), error: e.to_string() }),
        Err(_) => out.push(Pending::Unreachable {
            who: "coordinator".into(),
            error: format!("no answer within {PROBE_TIMEOUT:?}"),
        }),
    }
    out
}

/// Polls [`pending`] until it is empty, or fails at `timeout` with what was
/// still pending.
pub async fn settle(
    client: &Client,
    participants: &[String],
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<(), Unsettled> {
    let started = Instant::now();
    loop {
        let left = pending(client, participants, options).await;
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Unsettled { waited: started.elapsed(), pending: left });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long one participant may take to answer: a paused one never does.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One participant's `ListInDoubt` answer (with its open tid and lock counts).
async fn list_in_doubt(addr: &str, options: &ConnectOptions) -> Result<pb::ListInDoubtResponse, String> {
    let endpoint = options.tls.endpoint(addr)?;
    let call = async {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        pb::participant_client::ParticipantClient::new(channel)
            .list_in_doubt(options.admin_token.request(pb::ListInDoubtRequest {}))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}
