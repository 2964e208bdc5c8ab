//! The coordinator's start-up checks: everything in [`Config`] that clap's
//! value ranges cannot see (addresses, the port, the data directory, the
//! decision log file), checked before anything is written or served. The
//! cheap pure checks come first, so a typo never creates a data directory.

use anyhow::Context;
use twopc_proto::preflight;

use crate::Config;
use crate::decision_log;

pub fn check(config: &Config) -> anyhow::Result<()> {
    let listen = preflight::listen_addr("--listen", &config.listen).map_err(anyhow::Error::msg)?;
    let metrics = config
        .metrics_listen
        .as_deref()
        .map(|m| preflight::listen_addr("--metrics-listen", m))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        config.default_timeout_ms <= config.max_timeout_ms,
        "--default-timeout-ms {} is above --max-timeout-ms {}",
        config.default_timeout_ms,
        config.max_timeout_ms
    );
    if let Some(m) = metrics {
        anyhow::ensure!(m != listen || m.port() == 0, "--metrics-listen {m} is the same address as --listen");
    }
    preflight::bindable("--listen", listen).map_err(anyhow::Error::msg)?;
    if let Some(m) = metrics {
        preflight::bindable("--metrics-listen", m).map_err(anyhow::Error::msg)?;
    }
    preflight::writable_dir("--data-dir", &config.data_dir).map_err(anyhow::Error::msg)?;
    decision_log::check_existing(&config.data_dir, config.partitions)
        .with_context(|| format!("cannot open the decision log in {}", config.data_dir.display()))
}

/// Value parser of a count or limit: 0 would refuse everything (or, for
/// `--worker-threads`, make the runtime panic), so it is refused up front.
pub fn count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Value parser of a duration in milliseconds: at least 1 (0 would time
/// out at once or spin), at most a day, so `now + timeout` cannot overflow.
pub fn millis() -> clap::builder::RangedU64ValueParser<u64> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_MILLIS)
}

pub const MAX_MILLIS: u64 = 24 * 3600 * 1000;
