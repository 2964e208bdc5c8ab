//! The participant's start-up checks: everything in [`Config`] that clap's
//! value ranges cannot see (addresses, the port, the data directory, the
//! store file), checked before anything is written or served. The cheap
//! pure checks come first, so a typo never creates a data directory.
//! The data directory is locked (`twopc_proto::data_dir_lock`) before its
//! store is read (the holder's pid recorded once the checks passed), and
//! the lock is returned to be held for the process's life.

use anyhow::Context;
use twopc_proto::data_dir_lock::DataDirLock;
use twopc_proto::preflight;

use crate::Config;
use crate::store;

pub fn check(config: &Config) -> anyhow::Result<DataDirLock> {
    let coordinators = twopc_leader::parse_addresses(&config.coordinator)
        .map_err(|e| anyhow::anyhow!("--coordinator {:?}: {e}", config.coordinator))?;
    for a in &coordinators {
        preflight::peer_addr("--coordinator", a).map_err(anyhow::Error::msg)?;
    }
    if let Some(a) = &config.advertise {
        preflight::peer_addr("--advertise", a).map_err(anyhow::Error::msg)?;
    }
    preflight::listen_and_metrics(&config.listen, config.metrics_listen.as_deref()).map_err(anyhow::Error::msg)?;
    twopc_proto::limits::SizeLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes }
        .check()
        .map_err(anyhow::Error::msg)?;
    preflight::writable_dir("--data-dir", &config.data_dir).map_err(anyhow::Error::msg)?;
    let lock = DataDirLock::acquire(&config.data_dir)?;
    store::check_existing(&config.data_dir, config.partition)
        .with_context(|| format!("cannot open the partition store in {}", config.data_dir.display()))?;
    lock.record_holder()?;
    Ok(lock)
}

pub use twopc_proto::preflight::{count, millis};
