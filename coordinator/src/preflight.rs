//! The coordinator's start-up checks: everything in [`Config`] that clap's
//! value ranges cannot see (addresses, the port, the data directory, the
//! decision log file), checked before anything is written or served. The
//! cheap pure checks come first, so a typo never creates a data directory.

use anyhow::Context;
use twopc_proto::preflight;

use crate::Config;
use crate::decision_log;

pub fn check(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.default_timeout_ms <= config.max_timeout_ms,
        "--default-timeout-ms {} is above --max-timeout-ms {}",
        config.default_timeout_ms,
        config.max_timeout_ms
    );
    preflight::listen_and_metrics(&config.listen, config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    preflight::writable_dir("--data-dir", &config.data_dir).map_err(anyhow::Error::msg)?;
    decision_log::check_existing(&config.data_dir, config.partitions)
        .with_context(|| format!("cannot open the decision log in {}", config.data_dir.display()))
}

pub use twopc_proto::preflight::{count, millis};
