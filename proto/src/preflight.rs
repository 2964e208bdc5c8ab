//! Start-up checks shared by the coordinator and the participants.
//!
//! A server validates its whole configuration before it writes or serves
//! anything, and refuses to start with one line naming the flag at fault:
//! a process that starts half-configured could log a decision (or a YES
//! vote) and then fail, leaving work in doubt for nothing. Each check
//! returns the message to print; the caller adds no more than context.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

/// The server's `--listen` and optional `--metrics-listen`: both parse,
/// differ, and can be bound now (checked in that order, so a typo is
/// reported before a port in use).
pub fn listen_and_metrics(listen: &str, metrics: Option<&str>) -> Result<(), String> {
    let listen = listen_addr("--listen", listen)?;
    let metrics = metrics.map(|m| listen_addr("--metrics-listen", m)).transpose()?;
    if let Some(m) = metrics
        && m == listen
        && m.port() != 0
    {
        return Err(format!("--metrics-listen {m} is the same address as --listen"));
    }
    bindable("--listen", listen)?;
    if let Some(m) = metrics {
        bindable("--metrics-listen", m)?;
    }
    Ok(())
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

/// The longest duration a millisecond flag takes: one day.
pub const MAX_MILLIS: u64 = 24 * 3600 * 1000;

/// Parses a listen address given with `flag`. Only numeric IPs are taken:
/// a host name could resolve to several addresses, and the server binds
/// exactly one.
pub fn listen_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|e| format!("{flag} {value:?} is not HOST:PORT with a numeric IP ({e}), e.g. {flag} 127.0.0.1:7000"))
}

/// Checks that `addr` can be bound now, so a port in use is reported before
/// the data directory is touched. The probe socket is closed at once; the
/// server binds again later (SO_REUSEADDR, so nothing lingers in between).
/// Port 0 always succeeds and is not probed.
pub fn bindable(flag: &str, addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            Err(format!("{flag} {addr}: the port is already in use ({e}); stop the other process or pick another port"))
        }
        Err(e) => Err(format!("{flag} {addr}: cannot listen there ({e})")),
    }
}

/// Checks a peer address (`HOST:PORT`, a host name allowed, since the
/// client side resolves it on every connect) without connecting: the peer
/// may well be down at start.
pub fn peer_addr(flag: &str, value: &str) -> Result<(), String> {
    let bad = |why: &str| format!("{flag} {value:?} is not HOST:PORT ({why}), e.g. {flag} 127.0.0.1:7000");
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0 cannot be connected to"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.parse::<std::net::IpAddr>().is_err()
        && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad("the host is neither an IP address nor a host name"));
    }
    Ok(())
}

/// Creates `dir` if missing and proves it writable by creating and removing
/// a probe file: permission bits alone do not tell (root, read-only mounts,
/// ACLs), and finding out at the first forced write would be too late.
pub fn writable_dir(flag: &str, dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    std::fs::create_dir_all(dir).map_err(|e| format!("{flag}: cannot create data directory {shown}: {e}"))?;
    if !dir.is_dir() {
        return Err(format!("{flag}: data directory {shown} is not a directory"));
    }
    let probe = dir.join(".twopc-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| format!("{flag}: data directory {shown} is not writable: {e}"))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("{flag}: data directory {shown}: cannot remove the probe file {}: {e}", probe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert!(listen_addr("--listen", "127.0.0.1:0").is_ok());
        assert!(listen_addr("--listen", "[::1]:7000").is_ok());
        let e = listen_addr("--listen", "localhost:7000").unwrap_err();
        assert!(e.contains("--listen") && e.contains("e.g. --listen 127.0.0.1:7000"), "{e}");
        assert!(listen_addr("--listen", "127.0.0.1").is_err());
        assert!(listen_addr("--listen", "127.0.0.1:70000").is_err());
    }

    #[test]
    fn port_in_use_is_named() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = bindable("--listen", taken.local_addr().unwrap()).unwrap_err();
        assert!(e.contains("--listen") && e.contains("already in use"), "{e}");
        assert!(bindable("--listen", "127.0.0.1:0".parse().unwrap()).is_ok());
    }

    #[test]
    fn peer_addresses() {
        for ok in ["127.0.0.1:7000", "coord.example:7000", "[::1]:7000", "localhost:1"] {
            assert!(peer_addr("--coordinator", ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1", ":7000", "host:0", "host:port", "a b:7000", "http://x:7000", "x:99999"] {
            let e = peer_addr("--coordinator", bad).unwrap_err();
            assert!(e.starts_with("--coordinator"), "{e}");
        }
    }

    #[test]
    fn data_directories() {
        let tmp = std::env::temp_dir().join(format!("twopc-preflight-{}", std::process::id()));
        let dir = tmp.join("a/b");
        writable_dir("--data-dir", &dir).unwrap();
        assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none(), "probe file left behind");
        // A parent that is a regular file stops even root.
        std::fs::write(tmp.join("file"), b"").unwrap();
        let e = writable_dir("--data-dir", &tmp.join("file/data")).unwrap_err();
        assert!(e.contains("cannot create data directory"), "{e}");
        let e = writable_dir("--data-dir", &tmp.join("file")).unwrap_err();
        assert!(e.contains("--data-dir"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
