//! The coordinator's start-up checks: everything in [`Config`] that clap's
//! value ranges cannot see (addresses, the port, the data directory, the
//! decision log file), checked before anything is written or served. The
//! cheap pure checks come first, so a typo never creates a data directory.
//! The data directory is locked (`twopc_proto::data_dir_lock`) before its
//! log is read (the holder's pid recorded once the checks passed), and the
//! lock is returned to be held for the process's life.

use anyhow::Context;
use twopc_proto::data_dir_lock::DataDirLock;
use twopc_proto::preflight;

use crate::decision_log;
use crate::{Config, LogBackend};

/// Returns the data directory's lock (none with the etcd decision log).
pub fn check(config: &Config) -> anyhow::Result<Option<DataDirLock>> {
    anyhow::ensure!(
        config.default_timeout_ms <= config.max_timeout_ms,
        "--default-timeout-ms {} is above --max-timeout-ms {}",
        config.default_timeout_ms,
        config.max_timeout_ms
    );
    preflight::listen_and_metrics(&config.listen, config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    if config.decision_log == LogBackend::Etcd {
        // The store is checked when it is reached (run_replicated).
        return Ok(None);
    }
    let Some(dir) = &config.data_dir else {
        anyhow::bail!("--data-dir is required with the SQLite decision log (or pass --decision-log etcd)");
    };
    preflight::writable_dir("--data-dir", dir).map_err(anyhow::Error::msg)?;
    let lock = DataDirLock::acquire(dir)?;
    decision_log::check_existing(dir, config.partitions)
        .with_context(|| format!("cannot open the decision log in {}", dir.display()))?;
    lock.record_holder()?;
    Ok(Some(lock))
}

pub use twopc_proto::preflight::{count, millis};
