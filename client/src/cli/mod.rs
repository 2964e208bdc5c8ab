//! The client subcommands of the `twopc` binary.
//!
//! The CLI is stateless: every invocation connects afresh and names its
//! transaction by tid, so a transaction can be driven step by step from a
//! shell (`begin`, `put --tid`, `commit --tid`) or in one go with `run`.
//! Exit codes are part of the interface for scripts (see [`EXIT_CODES`]):
//! 0 success or COMMITTED, 1 ABORTED outcome, 2 any error, 3 the tid's
//! outcome is forgotten (PROTOCOL.md rule 6). Errors go to stderr as
//! `error: <sentence>`.

mod statement;

/// Prints a line to stdout, ignoring a closed pipe: `twopc begin | head -1`
/// must not panic when `head` exits before the second line.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::time::Duration;

use twopc_proto::pb;
use uuid::Uuid;

use crate::{
    AbortKind, AdminToken, Client, ClientError, ConnectOptions, Decision, FailpointTarget, Op, Outcome,
    PartitionInDoubt, TlsArgs,
};
use statement::Statement;

/// The client commands' exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes of the client commands:
  0  success; COMMITTED; `status` answered COMMITTED, ABORTED or PENDING
  1  the transaction ABORTED (`commit`, `run`)
  2  an error (usage, unreachable, refused)
  3  FORGOTTEN: the tid is older than the oldest decision the coordinator's log keeps
     (--keep-finished), so its outcome is unknown; check the data (`status`, `commit --tid`,
     and `abort --tid`, which is then refused)";

/// Exit code of a forgotten outcome (see [`EXIT_CODES`]).
pub const EXIT_FORGOTTEN: i32 = 3;

/// Where to find the cluster and how to reach it; every client command takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Coordinator addresses, HOST:PORT[,HOST:PORT...]: with several (one leads, the
    /// others are standbys) every call follows the leader.
    #[arg(long, global = false, env = "TWOPC_COORDINATOR", default_value = "127.0.0.1:7000")]
    pub coordinator: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Token sent with admin calls (transactions, in-doubt, failpoint) to servers
    /// started with --admin-token.
    #[arg(long, env = "TWOPC_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The most one coordinator call may take, following the leader among
    /// --coordinator's addresses (a commit cut off included).
    #[arg(long, env = "TWOPC_CALL_BUDGET_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub call_budget_ms: u64,
    /// The participants' --max-key-bytes (same variable): with
    /// --max-value-bytes it sets this client's gRPC message limit.
    #[arg(long, env = "TWOPC_MAX_KEY_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_KEY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_key_bytes: usize,
    /// The participants' --max-value-bytes (same variable); see --max-key-bytes.
    #[arg(long, env = "TWOPC_MAX_VALUE_BYTES", default_value_t = twopc_proto::limits::DEFAULT_MAX_VALUE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_value_bytes: usize,
}

impl ConnArgs {
    /// The TLS settings and admin token, checked (files read) once.
    pub fn options(&self) -> Result<ConnectOptions, ClientError> {
        Ok(ConnectOptions {
            tls: self.tls.client().map_err(ClientError::InvalidArgument)?,
            admin_token: AdminToken::new(self.admin_token.as_deref()).map_err(ClientError::InvalidArgument)?,
            call_budget: Duration::from_millis(self.call_budget_ms),
            sizes: twopc_proto::limits::SizeLimits {
                max_key_bytes: self.max_key_bytes,
                max_value_bytes: self.max_value_bytes,
            },
            // One transaction per command: a pool would only leave
            // reserved tids behind.
            tid_pool: 0,
            ..ConnectOptions::default()
        })
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Start a transaction; prints its tid and deadline.
    Begin {
        #[command(flatten)]
        conn: ConnArgs,
        /// How long the transaction may stay open (default: the server's).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Read a key inside a transaction (shared lock).
    Get {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        tid: Uuid,
        key: String,
    },
    /// Write a key inside a transaction (exclusive lock).
    Put {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        tid: Uuid,
        key: String,
        value: String,
    },
    /// Delete a key inside a transaction (exclusive lock).
    Delete {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        tid: Uuid,
        key: String,
    },
    /// Read a key's committed value, outside any transaction.
    Read {
        #[command(flatten)]
        conn: ConnArgs,
        key: String,
    },
    /// Commit a transaction: prints COMMITTED (exit 0), ABORTED (exit 1), or
    /// FORGOTTEN (exit 3) for a tid older than the oldest decision the log keeps.
    Commit {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        tid: Uuid,
    },
    /// Abort a transaction: prints ABORTED; refused if it committed (exit 2), or
    /// if its outcome is forgotten (exit 3: it may have committed).
    Abort {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        tid: Uuid,
    },
    /// The coordinator's decision for a tid: COMMITTED, ABORTED or PENDING (exit 0), or
    /// FORGOTTEN (exit 3): older than the oldest decision the log keeps, check the data.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
        tid: Uuid,
    },
    /// Run one transaction: `put KEY VALUE`, `get KEY`, `delete KEY`
    /// statements as arguments, or one per line on stdin. Statements on
    /// different keys run at once (one request per partition, in parallel);
    /// those on the same key run in the order given, so `put a 1` then
    /// `get a` reads 1. Gets are printed in statement order.
    Run {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Statements, e.g. "put a 1" "get a"; read from stdin if none.
        statements: Vec<String>,
    },
    /// The partition map.
    Topology {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Every participant's prepared tids still waiting for a decision. Exit
    /// 2 (after printing what it learned) when any participant could not be
    /// asked: "nothing in doubt" is only said of those that answered.
    InDoubt {
        #[command(flatten)]
        conn: ConnArgs,
        /// Ask these participants (host:port) directly instead of looking
        /// them up at the coordinator: works while the coordinator is down.
        #[arg(long = "participant")]
        participants: Vec<String>,
    },
    /// Disaster recovery only, when the coordinator's decision log is lost:
    /// end an in-doubt tid at one participant with an outcome you choose.
    /// Resolve it the same way at every participant that holds it in doubt.
    /// Refused without --override-lost-log, and refused (override or not)
    /// when the coordinator's log holds the opposite decision.
    ResolveHeuristic {
        #[command(flatten)]
        conn: ConnArgs,
        /// The participant (host:port) holding the tid in doubt.
        #[arg(long)]
        participant: String,
        tid: Uuid,
        /// `commit` applies the tid's writes at that participant; `abort` drops them.
        outcome: HeuristicChoice,
        /// State that the coordinator's decision log is lost, and accept that
        /// this outcome may contradict what other participants did (which
        /// breaks the transaction's atomicity).
        #[arg(long)]
        override_lost_log: bool,
        /// Why, in words; recorded with the outcome.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The coordinator's live and unfinished transactions.
    Transactions {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Arm a failpoint in a running process; empty ACTIONS disarms it.
    Failpoint {
        #[command(flatten)]
        conn: ConnArgs,
        /// `coordinator` or a partition number.
        #[arg(long)]
        target: FailpointTarget,
        name: String,
        /// fail-rs actions, e.g. "return(abort)", "1*sleep(500)".
        #[arg(default_value = "")]
        actions: String,
    },
}

/// The outcome an operator imposes with `resolve-heuristic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeuristicChoice {
    Commit,
    Abort,
}

/// Runs one client command and returns the process exit code.
pub async fn run(cmd: ClientCommand) -> i32 {
    let is_run = matches!(cmd, ClientCommand::Run { .. });
    match execute(cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if is_run && e.is_retryable_abort() {
                1
            } else if e.is_forgotten() {
                EXIT_FORGOTTEN
            } else {
                2
            }
        }
    }
}

async fn execute(cmd: ClientCommand) -> Result<i32, ClientError> {
    use ClientCommand as C;
    match cmd {
        C::Begin { conn, timeout_ms } => {
            // Its tid is for other invocations (`put --tid`, `commit --tid`).
            let txn = connect(&conn).await?.begin_shared(timeout_ms.map(Duration::from_millis)).await?;
            out!("{}", txn.tid());
            out!("deadline_unix_ms={}", txn.deadline_unix_ms());
        }
        C::Get { conn, tid, key } => {
            let value = connect(&conn).await?.txn(tid, 0).get(key.as_bytes()).await.map_err(|e| aborted_by(e, tid))?;
            out!("{}", value.as_deref().map_or("(not found)".into(), show));
        }
        C::Put { conn, tid, key, value } => {
            let txn = connect(&conn).await?.txn(tid, 0);
            txn.put(key.as_bytes(), value.as_bytes()).await.map_err(|e| aborted_by(e, tid))?;
            out!("ok");
        }
        C::Delete { conn, tid, key } => {
            connect(&conn).await?.txn(tid, 0).delete(key.as_bytes()).await.map_err(|e| aborted_by(e, tid))?;
            out!("ok");
        }
        C::Read { conn, key } => {
            let value = connect(&conn).await?.read(key.as_bytes()).await?;
            out!("{}", value.as_deref().map_or("(not found)".into(), show));
        }
        C::Commit { conn, tid } => {
            let outcome = connect(&conn).await?.txn(tid, 0).commit().await?;
            return Ok(print_outcome(&outcome));
        }
        C::Abort { conn, tid } => {
            let client = connect(&conn).await?;
            client.txn(tid, 0).abort_because(AbortKind::Operator, "aborted by an operator (twopc abort)").await?;
            // The reason kept is the first one the tid aborted for (e.g. a
            // conflict before the operator's abort): say which.
            match client.status(tid).await {
                Ok(Decision::Aborted { reason, kind }) => out!("{}", aborted_line(&reason, kind)),
                _ => out!("ABORTED"),
            }
        }
        C::Status { conn, tid } => match connect(&conn).await?.status(tid).await? {
            Decision::Committed => out!("COMMITTED"),
            Decision::Aborted { reason, kind } => out!("{}", aborted_line(&reason, kind)),
            Decision::Pending => out!("PENDING"),
            Decision::Forgotten { reason } => {
                out!("{}", forgotten_line(&reason));
                return Ok(EXIT_FORGOTTEN);
            }
        },
        C::Run { conn, timeout_ms, statements } => {
            return run_statements(&conn, timeout_ms, statements).await;
        }
        C::Topology { conn } => {
            let topology = connect(&conn).await?.topology().await?;
            out!("partitions: {}", topology.partitions);
            for p in 0..topology.partitions {
                out!("  {p}  {}", topology.address(p).unwrap_or("(not registered)"));
            }
        }
        C::InDoubt { conn, participants } => {
            let mut unasked = 0;
            let parts = if participants.is_empty() {
                connect(&conn).await?.in_doubt().await?
            } else {
                let mut parts = vec![];
                let options = conn.options()?;
                for address in &participants {
                    match crate::admin::in_doubt_at_address(address, &options).await {
                        Ok(p) => parts.push(p),
                        Err(e) => {
                            out!("{address}: error: {e}");
                            unasked += 1;
                        }
                    }
                }
                parts
            };
            for part in parts {
                unasked += usize::from(part.tids.is_err());
                for line in in_doubt_lines(&part) {
                    out!("{line}");
                }
            }
            if unasked > 0 {
                return Ok(2);
            }
        }
        C::ResolveHeuristic { conn, participant, tid, outcome, override_lost_log, reason } => {
            let commit = outcome == HeuristicChoice::Commit;
            let options = conn.options()?;
            let r =
                crate::admin::resolve_heuristically(&participant, tid, commit, override_lost_log, &reason, &options)
                    .await?;
            out!("{}", r.detail);
        }
        C::Transactions { conn } => {
            let listing = connect(&conn).await?.transaction_listing().await?;
            let (txns, omitted) = (listing.transactions, listing.omitted);
            if txns.is_empty() && omitted == 0 && listing.reserved == 0 {
                out!("(none)");
            }
            let now = twopc_proto::now_unix_ms();
            for t in &txns {
                out!("{}", transaction_line(t, now));
            }
            if omitted > 0 {
                out!("... and {omitted} more not listed (the answer reached the gRPC message limit)");
            }
            if listing.reserved > 0 {
                out!(
                    "{} reserved tids not used yet (clients' pools; they count against --max-open-txns and are \
                     dropped unused after {}s)",
                    listing.reserved,
                    twopc_proto::tid::RESERVED_UNUSED_MS / 1000
                );
            }
        }
        C::Failpoint { conn, target, name, actions } => {
            connect(&conn).await?.set_failpoint(target, &name, &actions).await?;
            out!("ok");
        }
    }
    Ok(0)
}

/// An operation's error, saying that the transaction is aborted (the library
/// aborts it on any failure but a validation error; see `Txn`).
fn aborted_by(e: ClientError, tid: Uuid) -> ClientError {
    let note = format!("transaction {tid} is aborted (a failed operation aborts its transaction)");
    match e {
        ClientError::InvalidArgument(_) => e,
        ClientError::Status(s) if s.code() == tonic::Code::InvalidArgument => ClientError::Status(s),
        ClientError::Status(s) => {
            let msg = if s.message().is_empty() { note } else { format!("{}; {note}", s.message()) };
            ClientError::Status(tonic::Status::new(s.code(), msg))
        }
        ClientError::Unavailable(why) => ClientError::Unavailable(format!("{why}; {note}")),
    }
}

async fn connect(conn: &ConnArgs) -> Result<Client, ClientError> {
    Client::connect_with(&conn.coordinator, conn.options()?).await
}

/// `twopc run`: parse everything first, then begin, execute, commit.
async fn run_statements(conn: &ConnArgs, timeout_ms: Option<u64>, args: Vec<String>) -> Result<i32, ClientError> {
    let parsed = if args.is_empty() {
        let input = tokio::task::spawn_blocking(|| std::io::read_to_string(std::io::stdin()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| ClientError::InvalidArgument(format!("cannot read stdin: {e}")))?;
        statement::parse_all(input.lines(), "line")
    } else {
        statement::parse_all(args.iter().map(String::as_str), "statement")
    };
    let statements = parsed.map_err(ClientError::InvalidArgument)?;
    if statements.is_empty() {
        return Err(ClientError::InvalidArgument(
            "no statements: pass them as arguments or one per line on stdin".into(),
        ));
    }
    let txn = connect(conn).await?.begin(timeout_ms.map(Duration::from_millis)).await?;
    // All at once (`Txn::run`): the chains of different keys in parallel,
    // each key's statements in their order.
    let ops: Vec<Op> = statements
        .iter()
        .map(|stmt| match stmt {
            Statement::Put { key, value } => Op::put(key.as_bytes(), value.as_bytes()),
            Statement::Delete { key } => Op::delete(key.as_bytes()),
            Statement::Get { key } => Op::get(key.as_bytes()),
        })
        .collect();
    match txn.run(&ops).await {
        Ok(results) => {
            for (stmt, result) in statements.iter().zip(&results) {
                if let Statement::Get { key } = stmt {
                    match result.value() {
                        Some(v) => out!("{key} = {}", show(v)),
                        None => out!("{key} (not found)"),
                    }
                }
            }
        }
        Err(e) => {
            // The library has aborted the tid with the operation's error
            // (or the participant with its own cause) as the reason.
            out!("tid {}", txn.tid());
            if e.is_retryable_abort() {
                // Aborted (a conflict, a deadline...): said as commit and
                // status say it, `ABORTED (kind): reason`, with the
                // coordinator's reason (the participant's real cause).
                if let Ok(outcome @ Outcome::Aborted { .. }) = txn.commit().await {
                    return Ok(print_outcome(&outcome));
                }
            }
            return Err(e);
        }
    }
    let outcome = txn.commit().await?;
    out!("tid {}", txn.tid());
    Ok(print_outcome(&outcome))
}

fn print_outcome(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Committed => {
            out!("COMMITTED");
            0
        }
        Outcome::Aborted { reason, kind } => {
            out!("{}", aborted_line(reason, *kind));
            1
        }
        Outcome::Forgotten { reason } => {
            out!("{}", forgotten_line(reason));
            EXIT_FORGOTTEN
        }
    }
}

fn forgotten_line(reason: &str) -> String {
    if reason.is_empty() { "FORGOTTEN".into() } else { format!("FORGOTTEN: {reason}") }
}

/// `ABORTED (KIND): REASON`: the kind is the fixed word a script can match
/// (`twopc_core::reason::AbortKind`'s labels), the reason the words.
fn aborted_line(reason: &str, kind: AbortKind) -> String {
    if reason.is_empty() { format!("ABORTED ({kind})") } else { format!("ABORTED ({kind}): {reason}") }
}

fn show(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// One partition's part of `twopc in-doubt`.
fn in_doubt_lines(part: &PartitionInDoubt) -> Vec<String> {
    let p = part.partition;
    let tids = match &part.tids {
        Ok(tids) => tids,
        Err(e) => return vec![format!("partition {p}: error: {e}")],
    };
    if tids.is_empty() && part.heuristics.is_empty() && part.mismatched_cluster_id.is_none() {
        return vec![format!("partition {p}: (none)")];
    }
    let mut lines = vec![format!("partition {p}:")];
    for t in tids {
        lines.push(format!("  {}  prepared {}ms ago  asked {} times", t.tid, t.prepared_for_ms, t.asked));
    }
    if part.omitted_tids > 0 {
        lines.push(format!(
            "  ... and {} more not listed (the answer reached the gRPC message limit)",
            part.omitted_tids
        ));
    }
    if let Some(theirs) = &part.mismatched_cluster_id {
        lines.push(format!(
            "  cluster mismatch: these tids voted under cluster {}, the coordinator's log is cluster {theirs} \
             (lost or replaced); they stay in doubt: restore that log, or resolve them with resolve-heuristic",
            part.cluster_id
        ));
    }
    for h in &part.heuristics {
        let outcome = if h.committed { "COMMIT" } else { "ABORT" };
        let mut line = format!("  heuristic {outcome}  {}  at_unix_ms={}", h.tid, h.at_unix_ms);
        if !h.reason.is_empty() {
            line.push_str(&format!("  reason: {}", h.reason));
        }
        if h.contradicted {
            line.push_str("  CONTRADICTED by the coordinator's decision");
        }
        lines.push(line);
    }
    lines
}

fn transaction_line(t: &pb::TransactionInfo, now_ms: u64) -> String {
    // The coordinator's own count of the time left, when it sends one: the
    // reader's clock may differ from the coordinator's.
    let deadline = match (t.remaining_ms, t.deadline_unix_ms) {
        (_, 0) => "no deadline".to_string(),
        (Some(left), _) if left >= 0 => format!("deadline in {left}ms"),
        (Some(left), _) => format!("deadline passed {}ms ago", left.unsigned_abs()),
        (None, d) if d >= now_ms => format!("deadline in {}ms", d - now_ms),
        (None, d) => format!("deadline passed {}ms ago", now_ms - d),
    };
    let parts: Vec<String> = t
        .participants
        .iter()
        .map(|p| match p.retries {
            0 => format!("p{}:{}", p.partition, p.state),
            r => format!("p{}:{}(retries {r})", p.partition, p.state),
        })
        .collect();
    format!("{}  {}  age {}ms  {}  {}", t.tid, t.state, t.age_ms, deadline, parts.join(" ")).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn commands_parse() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from(["twopc", "run", "put a 1", "get a"]).unwrap();
        assert!(matches!(cli.cmd, ClientCommand::Run { statements, .. } if statements.len() == 2));
        let cli = Cli::try_parse_from(["twopc", "failpoint", "--target", "1", "x"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::Failpoint { target: FailpointTarget::Partition(1), actions, .. } if actions.is_empty()
        ));
        assert!(Cli::try_parse_from(["twopc", "commit", "--tid", "nope"]).is_err());
        let tid = Uuid::now_v7().to_string();
        let cli = Cli::try_parse_from(["twopc", "resolve-heuristic", "--participant", "h:1", &tid, "abort"]).unwrap();
        assert!(matches!(
            cli.cmd,
            ClientCommand::ResolveHeuristic { outcome: HeuristicChoice::Abort, override_lost_log: false, .. }
        ));
        assert!(Cli::try_parse_from(["twopc", "resolve-heuristic", "--participant", "h:1", &tid, "maybe"]).is_err());
    }

    #[test]
    fn in_doubt_lines_show_mismatch_and_heuristics() {
        let mut part = PartitionInDoubt {
            partition: 1,
            address: None,
            tids: Ok(vec![]),
            heuristics: vec![],
            cluster_id: "A".into(),
            mismatched_cluster_id: None,
            omitted_tids: 0,
        };
        assert_eq!(in_doubt_lines(&part), vec!["partition 1: (none)"]);
        part.tids = Ok(vec![crate::InDoubtTid { tid: "t1".into(), prepared_for_ms: 5, asked: 2 }]);
        part.mismatched_cluster_id = Some("B".into());
        part.heuristics = vec![crate::HeuristicOutcome {
            tid: "t0".into(),
            committed: true,
            reason: "log lost".into(),
            at_unix_ms: 7,
            contradicted: true,
        }];
        let lines = in_doubt_lines(&part);
        assert_eq!(lines[1], "  t1  prepared 5ms ago  asked 2 times");
        assert!(
            lines[2].starts_with(
                "  cluster mismatch: these tids voted under cluster A, the coordinator's log is cluster B"
            )
        );
        assert_eq!(
            lines[3],
            "  heuristic COMMIT  t0  at_unix_ms=7  reason: log lost  CONTRADICTED by the coordinator's decision"
        );
    }

    #[test]
    fn in_doubt_lines_say_how_many_were_left_out() {
        let part = PartitionInDoubt {
            partition: 0,
            address: None,
            tids: Ok(vec![crate::InDoubtTid { tid: "t1".into(), prepared_for_ms: 5, asked: 2 }]),
            heuristics: vec![],
            cluster_id: "A".into(),
            mismatched_cluster_id: None,
            omitted_tids: 7,
        };
        let lines = in_doubt_lines(&part);
        assert_eq!(lines.last().unwrap(), "  ... and 7 more not listed (the answer reached the gRPC message limit)");
    }

    #[test]
    fn transaction_lines() {
        let t = pb::TransactionInfo {
            tid: "t1".into(),
            state: "committing".into(),
            age_ms: 40,
            deadline_unix_ms: 1_500,
            participants: vec![
                pb::ParticipantInfo { partition: 0, state: "voted-yes".into(), retries: 2 },
                pb::ParticipantInfo { partition: 1, state: "acked".into(), retries: 0 },
            ],
            remaining_ms: None,
        };
        assert_eq!(
            transaction_line(&t, 1_000),
            "t1  committing  age 40ms  deadline in 500ms  p0:voted-yes(retries 2) p1:acked"
        );
        // The coordinator's count of the time left wins over the reader's
        // clock (here 30 s ahead of the coordinator's).
        let t = pb::TransactionInfo { remaining_ms: Some(500), ..t };
        assert!(transaction_line(&t, 31_000).contains("deadline in 500ms"));
        let t = pb::TransactionInfo { remaining_ms: Some(-20), ..t };
        assert!(transaction_line(&t, 1_000).contains("deadline passed 20ms ago"));
    }
}
