//! `bank`: the example application as a command, one operation per run.
//!
//! ```text
//! bank open alice=100 carol=0        # one transaction
//! bank transfer alice carol 30       # done (exit 0) | insufficient funds (1) | unknown: ask later (3)
//! bank balance carol
//! bank status TID                    # a transfer reported unknown: COMMITTED / ABORTED / PENDING
//! ```
//!
//! The coordinator is `--coordinator` or `TWOPC_COORDINATOR`. Errors exit 2.

use std::time::Duration;

use clap::{Parser, Subcommand};
use twopc_client::{Client, Decision};
use twopc_example_bank::{Bank, Patience, Transfer};

#[derive(Parser)]
#[command(name = "bank", about = "Example twopc application: transfers between accounts")]
struct Cli {
    /// Coordinator address(es), HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "TWOPC_COORDINATOR", default_value = "127.0.0.1:7000")]
    coordinator: String,
    /// How long to keep asking for a transfer's outcome after a lost reply.
    #[arg(long, default_value_t = 60_000)]
    outcome_wait_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open accounts NAME=BALANCE in one transaction.
    Open { accounts: Vec<String> },
    /// Move AMOUNT from FROM to TO.
    Transfer { from: String, to: String, amount: u64 },
    /// An account's balance.
    Balance { account: String },
    /// The outcome of a transfer reported unknown.
    Status { tid: uuid::Uuid },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, Box<dyn std::error::Error>> {
    let client = Client::connect(&cli.coordinator).await?;
    let patience = Patience { outcome_wait: Duration::from_millis(cli.outcome_wait_ms), ..Patience::default() };
    let bank = Bank::with_patience(client, patience);
    match cli.cmd {
        Cmd::Open { accounts } => {
            let mut parsed = vec![];
            for a in &accounts {
                let (name, balance) = a.split_once('=').ok_or_else(|| format!("{a:?} is not NAME=BALANCE"))?;
                parsed.push((name, balance.parse::<u64>().map_err(|e| format!("{a:?}: {e}"))?));
            }
            bank.open(&parsed).await?;
            println!("opened {}", parsed.len());
            Ok(0)
        }
        Cmd::Transfer { from, to, amount } => match bank.transfer(&from, &to, amount).await? {
            Transfer::Done { tid, attempts, asked_status } => {
                println!("done tid={tid} attempts={attempts} asked_status={asked_status}");
                Ok(0)
            }
            Transfer::InsufficientFunds { balance } => {
                println!("insufficient funds: {from} holds {balance}");
                Ok(1)
            }
            Transfer::Unknown { tid } => {
                println!("unknown: the outcome of tid {tid} is not known yet; ask with `bank status {tid}`");
                Ok(3)
            }
        },
        Cmd::Balance { account } => {
            println!("{}", bank.balance(&account).await?);
            Ok(0)
        }
        Cmd::Status { tid } => {
            match bank.transfer_status(tid).await? {
                Decision::Committed => println!("COMMITTED"),
                Decision::Aborted { reason, kind } => println!("ABORTED ({kind}): {reason}"),
                Decision::Pending => println!("PENDING"),
                Decision::Forgotten { reason } => println!("FORGOTTEN: {reason}"),
            }
            Ok(0)
        }
    }
}
