//! A bank on twopc: account balances live on different partitions, and a
//! transfer debits one and credits the other in one transaction, so money
//! is never created or lost.
//!
//! What a careful application does with the client library's answers
//! (PROTOCOL.md rule 6: the coordinator's answer is the only truth about a
//! transaction):
//!
//! - **ABORTED** (a commit answered `Outcome::Aborted`, or an operation
//!   failed with ABORTED, e.g. a lock conflict or the coordinator's
//!   timeout): nothing of the attempt happened. Retry the whole transfer
//!   from `begin`, re-reading the balances.
//! - **Any other failure before `commit` was sent** (a participant or the
//!   coordinator unreachable): nothing can have committed, since only a
//!   commit commits. Abort it (best effort; the coordinator aborts it at its
//!   deadline anyway) and retry.
//! - **`commit` failed without an outcome** (the reply was lost: the
//!   coordinator died or the network cut it off): the transfer may have
//!   happened. Never retry blindly, which could move the money twice: ask
//!   [`Client::status`] for that tid until it says COMMITTED (report
//!   success) or ABORTED (retry). If no coordinator answers within the
//!   bank's patience, report [`Transfer::Unknown`] with the tid, so the
//!   user is told "pending", never a false "failed", and
//!   [`Bank::transfer_status`] can settle it later.

use std::time::{Duration, Instant};

use twopc_client::{Client, ClientError, Decision, Outcome, Txn};
use uuid::Uuid;

/// How a transfer ended, as the bank's user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// The money moved, exactly once, in transaction `tid`.
    Done {
        tid: Uuid,
        /// Transactions tried (more than 1 after ABORTED answers or failures before commit).
        attempts: u32,
        /// The commit's reply was lost and the outcome was learned by
        /// asking the coordinator.
        asked_status: bool,
    },
    /// The source account has less than the amount: nothing moved.
    InsufficientFunds { balance: u64 },
    /// The commit's reply was lost and no coordinator told its outcome in
    /// time: it may or may not have happened. Ask again with
    /// [`Bank::transfer_status`].
    Unknown { tid: Uuid },
}

/// Failures that are not an outcome of a transfer.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("no account {0:?}")]
    NoAccount(String),
    #[error("account {0:?} holds {1:?}, not a balance")]
    Corrupt(String, Vec<u8>),
    /// Every attempt failed before committing anything.
    #[error("the transfer did not happen after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    /// Opening accounts was aborted (e.g. a conflict): nothing was opened.
    #[error("ABORTED: {0}")]
    Aborted(String),
    /// The coordinator no longer remembers the outcome (the tid is older
    /// than the oldest decision it keeps): check the balances.
    #[error("FORGOTTEN: {0}")]
    Forgotten(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How hard the bank tries.
#[derive(Debug, Clone)]
pub struct Patience {
    /// Transactions to try before giving up (ABORTED or failed before commit).
    pub attempts: u32,
    /// How long to keep asking for a lost commit's outcome.
    pub outcome_wait: Duration,
    /// Each transaction's timeout (after which the coordinator aborts it).
    pub txn_timeout: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience { attempts: 20, outcome_wait: Duration::from_secs(60), txn_timeout: Duration::from_secs(10) }
    }
}

/// The bank: a twopc client and its patience.
#[derive(Debug, Clone)]
pub struct Bank {
    client: Client,
    patience: Patience,
}

fn key(account: &str) -> Vec<u8> {
    format!("account/{account}").into_bytes()
}

fn parse(account: &str, value: Option<Vec<u8>>) -> Result<u64, BankError> {
    let value = value.ok_or_else(|| BankError::NoAccount(account.to_string()))?;
    std::str::from_utf8(&value).ok().and_then(|s| s.parse().ok()).ok_or(BankError::Corrupt(account.to_string(), value))
}

impl Bank {
    pub fn new(client: Client) -> Bank {
        Bank { client, patience: Patience::default() }
    }

    pub fn with_patience(client: Client, patience: Patience) -> Bank {
        Bank { client, patience }
    }

    /// The key an account's balance lives under (to place accounts on partitions).
    pub fn account_key(account: &str) -> Vec<u8> {
        key(account)
    }

    /// Opens accounts with their balances, in one transaction.
    pub async fn open(&self, accounts: &[(&str, u64)]) -> Result<(), BankError> {
        let txn = self.client.begin(Some(self.patience.txn_timeout)).await?;
        for (name, balance) in accounts {
            txn.put(&key(name), balance.to_string().as_bytes()).await?;
        }
        match txn.commit().await? {
            Outcome::Committed => Ok(()),
            Outcome::Aborted { reason, .. } => Err(BankError::Aborted(reason)),
            // Not for a tid just begun; handled all the same.
            Outcome::Forgotten { reason } => Err(BankError::Forgotten(reason)),
        }
    }

    /// An account's committed balance.
    pub async fn balance(&self, account: &str) -> Result<u64, BankError> {
        parse(account, self.client.read(&key(account)).await?)
    }

    /// Moves `amount` from `from` to `to`: see the [crate docs](crate) for
    /// how each answer is handled.
    pub async fn transfer(&self, from: &str, to: &str, amount: u64) -> Result<Transfer, BankError> {
        let mut last = None;
        for attempt in 1..=self.patience.attempts {
            let txn = match self.client.begin(Some(self.patience.txn_timeout)).await {
                Ok(t) => t,
                Err(e) => {
                    last = Some(e.to_string());
                    backoff(attempt).await;
                    continue;
                }
            };
            match self.debit_credit(&txn, from, to, amount).await {
                Ok(Some(balance)) => {
                    let _ = txn.abort().await;
                    return Ok(Transfer::InsufficientFunds { balance });
                }
                Ok(None) => {}
                Err(BankError::Client(e)) => {
                    // Nothing was committed: abort (best effort) and retry.
                    let _ = txn.abort().await;
                    last = Some(e.to_string());
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => {
                    let _ = txn.abort().await;
                    return Err(e);
                }
            }
            match txn.commit().await {
                Ok(Outcome::Committed) => {
                    return Ok(Transfer::Done { tid: txn.tid(), attempts: attempt, asked_status: false });
                }
                // Nothing happened: retry from begin.
                Ok(Outcome::Aborted { reason, .. }) => last = Some(format!("ABORTED: {reason}")),
                // Not for a tid just begun: the outcome is unknown, never retried blindly.
                Ok(Outcome::Forgotten { .. }) => return Ok(Transfer::Unknown { tid: txn.tid() }),
                Err(e) if e.is_retryable_abort() => last = Some(e.to_string()),
                // The reply was lost: the transfer may have happened. Ask.
                Err(_) => match self.wait_outcome(txn.tid()).await {
                    Some(Decision::Committed) => {
                        return Ok(Transfer::Done { tid: txn.tid(), attempts: attempt, asked_status: true });
                    }
                    Some(Decision::Aborted { reason, .. }) => last = Some(format!("ABORTED: {reason}")),
                    _ => return Ok(Transfer::Unknown { tid: txn.tid() }),
                },
            }
            backoff(attempt).await;
        }
        Err(BankError::GaveUp { attempts: self.patience.attempts, last: last.expect("at least one attempt") })
    }

    /// Debits and credits within `txn`; `Some(balance)` when funds are short.
    async fn debit_credit(&self, txn: &Txn, from: &str, to: &str, amount: u64) -> Result<Option<u64>, BankError> {
        // Exclusive locks from the start: two transfers on one account queue
        // instead of deadlocking on a lock upgrade.
        let from_balance = parse(from, txn.get_for_update(&key(from)).await?)?;
        let to_balance = parse(to, txn.get_for_update(&key(to)).await?)?;
        if from_balance < amount {
            return Ok(Some(from_balance));
        }
        txn.put(&key(from), (from_balance - amount).to_string().as_bytes()).await?;
        txn.put(&key(to), (to_balance + amount).to_string().as_bytes()).await?;
        Ok(None)
    }

    /// Asks the coordinator for `tid`'s outcome until it is COMMITTED or
    /// ABORTED, for up to the bank's `outcome_wait`; `None` (or PENDING) if
    /// nobody said.
    async fn wait_outcome(&self, tid: Uuid) -> Option<Decision> {
        let deadline = Instant::now() + self.patience.outcome_wait;
        let mut last = None;
        while Instant::now() < deadline {
            match self.client.status(tid).await {
                Ok(d @ (Decision::Committed | Decision::Aborted { .. })) => return Some(d),
                Ok(Decision::Pending) => last = Some(Decision::Pending),
                // Not knowable any more: report the transfer as unknown.
                Ok(Decision::Forgotten { .. }) => return None,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    /// The outcome of a transfer reported [`Transfer::Unknown`]: COMMITTED
    /// (it happened), ABORTED (it did not), or PENDING (ask later).
    pub async fn transfer_status(&self, tid: Uuid) -> Result<Decision, BankError> {
        Ok(self.client.status(tid).await?)
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(10)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example test relies on it: alice and carol on different
    /// partitions of two, so a transfer between them takes two phases.
    #[test]
    fn alice_and_carol_live_on_different_partitions_of_two() {
        let p = |a| twopc_client::partition_for(&Bank::account_key(a), 2);
        assert_eq!((p("alice"), p("carol")), (0, 1));
    }
}
