//! Key placement and address handling.
//!
//! [`partition_for`] decides where every key lives on disk. It must never
//! change: a different hash or modulus would send reads of existing keys to
//! partitions that never stored them. The tests pin concrete values so that
//! any change fails loudly.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use twopc_proto::limits::SizeLimits;
use twopc_proto::pb::participant_client::ParticipantClient;
use twopc_proto::tls::ClientTls;

use crate::ClientError;

/// How long to wait for a TCP connection before calling a peer unavailable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The partition that owns `key`: `xxh3_64(key) % partitions`, the one
/// function the participants check keys with
/// ([`twopc_proto::placement`], which documents it for other languages).
///
/// # Panics
/// If `partitions` is 0.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    twopc_proto::placement::partition_for(key, partitions)
}

/// A client of the participant at `addr`, with the message limit of
/// `sizes` both ways (`twopc_proto::limits`, rule 1).
pub(crate) fn participant_client(
    addr: &str,
    tls: &ClientTls,
    sizes: SizeLimits,
) -> Result<ParticipantClient<Channel>, ClientError> {
    let limit = sizes.message_limit();
    Ok(ParticipantClient::new(endpoint(addr, tls)?.connect_lazy())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
}

/// An endpoint for `addr`, given as `host:port` (or with an `http://` or
/// `https://` prefix, which is ignored: `tls` decides).
pub(crate) fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint, ClientError> {
    let endpoint = tls.endpoint(addr).map_err(ClientError::InvalidArgument)?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64;

    #[test]
    fn hash_is_xxh3_64() {
        // Published XXH3-64 value for the empty input (seed 0).
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn placement_never_changes() {
        let cases: [(&[u8], u32, u32); 8] = [
            (b"", 3, 1),
            (b"a", 3, 1),
            (b"b", 3, 2),
            (b"account-17", 3, 2),
            (b"a", 4, 3),
            (b"hello", 7, 1),
            (b"hello", 1, 0),
            (b"\x00\xff", 16, 3),
        ];
        for (key, n, want) in cases {
            assert_eq!(partition_for(key, n), want, "key {key:?} over {n}");
        }
    }

    #[test]
    fn endpoints_accept_both_forms() {
        let tls = ClientTls::plaintext();
        assert_eq!(endpoint("127.0.0.1:7000", &tls).unwrap().uri().to_string(), "http://127.0.0.1:7000/");
        assert_eq!(endpoint("http://h:1", &tls).unwrap().uri().to_string(), "http://h:1/");
        assert!(endpoint("", &tls).is_err());
        assert!(endpoint("not an address", &tls).is_err());
    }
}
