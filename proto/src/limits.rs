//! Message sizes: the one place the gRPC message limit is derived from the
//! key and value limits, the byte budget of every batch, and the
//! RESOURCE_EXHAUSTED answer to anything over a limit.
//!
//! Role: every server and every client channel of twopc (coordinator,
//! participant, client library, CLI, bench, and the processes' channels to
//! each other) takes its limits from here, so one transaction's large value
//! can never fail another's.
//!
//! Rules (each kept at the place named):
//!
//! 1. **One number.** A process's gRPC message limit, for decoding and for
//!    encoding, is [`SizeLimits::message_limit`]:
//!    `max(4 MiB, max-key-bytes + max-value-bytes + 64 KiB)`. The largest
//!    legal request (one Put of a key and a value at their limits) and the
//!    largest legal answer (one Get or Read of such a value) fit with room
//!    for the tid, field framing and an error message. The 4 MiB floor is
//!    gRPC's usual default: messages that carry no values (tid batches,
//!    listings) keep the room they always had. Participants take the key
//!    and value limits from `--max-key-bytes`/`--max-value-bytes`
//!    (`TWOPC_MAX_KEY_BYTES`/`TWOPC_MAX_VALUE_BYTES`); clients (library
//!    [`SizeLimits`] in their options, CLI and bench by the same flags and
//!    variables) must use the same values, so that what a participant
//!    accepts a client can send and read back. The coordinator carries no
//!    keys or values and uses the defaults.
//! 2. **Batches are bounded by bytes**, not only by count
//!    ([`crate::batch::Batcher`]): items are packed in order while the
//!    batch's encoded size stays within [`SizeLimits::batch_budget`]; the
//!    item that would overflow opens the next batch, and an item bigger
//!    than the budget goes alone (its server then judges it, rule 4). The
//!    budget is the 4 MiB floor, the least message limit any process has,
//!    not this process's own limit: a batch of several items then fits
//!    every peer whatever its settings, and only an item that is large by
//!    itself depends on the peer's limit, failing (if it does) alone.
//! 3. **Answers are bounded by bytes**, by the same budget. A batch answer
//!    whose results could carry values (OperateBatch: Get results) carries
//!    results while they fit; a Get result that does not fit is answered
//!    `must_wait` (not carried: the client repeats it with its unary Get,
//!    whose answer holds one value and fits the message limit). Listings
//!    (ListInDoubt, ListTransactions) stop at the budget and say how many
//!    entries they left out ([`fit`]). The other batch answers (Begin,
//!    Enlist, Prepare, Commit, Abort, one-phase) hold at most 256 results
//!    of a code, a tid or deadline and a short reason: tens of KiB.
//! 4. **Over a limit is RESOURCE_EXHAUSTED, naming the limit** (gRPC's
//!    convention), on every RPC: a key or value over its limit is refused by
//!    the participant's service; a whole request over the message limit is
//!    refused by tonic before any service runs, with OUT_OF_RANGE, which
//!    [`SizeStatusLayer`] rewrites on every server; a message over a
//!    client's own limit (too large to send, or an answer too large to
//!    read) fails in tonic with OUT_OF_RANGE too, which [`size_status`]
//!    turns into RESOURCE_EXHAUSTED where the client library maps statuses.

use prost::Message;
use tonic::{Code, Status};

/// Default `--max-key-bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Default `--max-value-bytes`: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// The least message limit: gRPC's usual 4 MiB default.
pub const MESSAGE_LIMIT_FLOOR: usize = 4 << 20;
/// Room above one key and one value for everything else in a message: the
/// tid, field tags and lengths, and an error message.
pub const ITEM_OVERHEAD: usize = 64 << 10;

/// The most `--max-key-bytes` + `--max-value-bytes` + [`ITEM_OVERHEAD`] may
/// come to: SQLite's largest string or blob (its default SQLITE_MAX_LENGTH),
/// since a tid's prepared write set is stored as one blob and must hold at
/// least one key and value at their limits. (gRPC's own frame limit, 4 GiB,
/// is higher.)
pub const MAX_ITEM_BYTES: usize = 1_000_000_000;

/// The key and value limits one message limit is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits { max_key_bytes: DEFAULT_MAX_KEY_BYTES, max_value_bytes: DEFAULT_MAX_VALUE_BYTES }
    }
}

impl SizeLimits {
    /// Refuses limits whose largest item could not be stored
    /// ([`MAX_ITEM_BYTES`]); checked at a participant's start.
    pub fn check(&self) -> Result<(), String> {
        let item = self.max_key_bytes.saturating_add(self.max_value_bytes).saturating_add(ITEM_OVERHEAD);
        if item > MAX_ITEM_BYTES {
            return Err(format!(
                "--max-key-bytes {} + --max-value-bytes {} + {ITEM_OVERHEAD} bytes of overhead is over \
                 {MAX_ITEM_BYTES} bytes, the largest value SQLite stores (a prepared write set is one value)",
                self.max_key_bytes, self.max_value_bytes
            ));
        }
        Ok(())
    }

    /// The gRPC message limit (decode and encode) of every server and
    /// client channel: `max(4 MiB, key + value + 64 KiB)` (rule 1).
    pub fn message_limit(&self) -> usize {
        MESSAGE_LIMIT_FLOOR.max(self.max_key_bytes.saturating_add(self.max_value_bytes).saturating_add(ITEM_OVERHEAD))
    }

    /// The most bytes of items one batch (request or answer) of several
    /// items carries (rules 2 and 3): the floor, which every process's
    /// message limit reaches, so such a batch fits any peer. (A batch
    /// message is its repeated items and nothing else.)
    pub fn batch_budget(&self) -> usize {
        MESSAGE_LIMIT_FLOOR
    }
}

/// How many bytes `item` adds to a batch message as one element of a
/// repeated field: its encoded length plus its tag and length prefix. An
/// upper bound (for a `String`, prost's wrapper encoding adds two bytes).
pub fn wire_size<M: Message>(item: &M) -> usize {
    let n = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(n as u64) + n
}

/// Keeps the longest prefix of `items` whose [`wire_size`]s fit `budget`
/// bytes and returns how many it dropped (rule 3, listings).
pub fn fit<M: Message>(items: &mut Vec<M>, budget: usize) -> usize {
    let mut used = 0usize;
    let keep = items
        .iter()
        .take_while(|i| {
            used = used.saturating_add(wire_size(*i));
            used <= budget
        })
        .count();
    let dropped = items.len() - keep;
    items.truncate(keep);
    dropped
}

const DECODED: &str = "Error, decoded message length too large: ";
const ENCODED: &str = "Error, encoded message length too large: ";
const WHERE: &str = "the gRPC message limit is max(4 MiB, --max-key-bytes + --max-value-bytes + 64 KiB); \
                     see the README, Message sizes";

/// tonic's OUT_OF_RANGE for a message over a limit, as RESOURCE_EXHAUSTED
/// naming the limit (rule 4); any other status unchanged. Meant for a
/// client's statuses: a decode error there is an answer too large to read,
/// an encode error a request too large to send.
pub fn size_status(status: Status) -> Status {
    if status.code() != Code::OutOfRange {
        return status;
    }
    let msg = status.message();
    if let Some(rest) = msg.strip_prefix(DECODED) {
        Status::resource_exhausted(format!(
            "the answer is too large for this client: {rest} (for this client, {WHERE}; set the same \
             TWOPC_MAX_KEY_BYTES/TWOPC_MAX_VALUE_BYTES as the participants)"
        ))
    } else if let Some(rest) = msg.strip_prefix(ENCODED) {
        // The client checks its own requests before sending (see
        // `too_large_to_send`), so this is mostly a server's answer over
        // that server's limit.
        Status::resource_exhausted(format!("a message is too large to encode: {rest} ({WHERE})"))
    } else {
        status
    }
}

/// A client's refusal to send a message of `len` bytes over its `limit`
/// (checked before sending: tonic's own encode error reaches the caller as
/// a reset HTTP/2 stream, which names no limit).
pub fn too_large_to_send(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "the message is too large to send: found {len} bytes, the limit is: {limit} bytes ({WHERE})"
    ))
}

/// The server's answer to a request over its message limit (rule 4).
fn request_too_large(status: &Status) -> Option<Status> {
    let rest = status.message().strip_prefix(DECODED)?;
    Some(Status::resource_exhausted(format!(
        "the request is too large for this server: {rest} (this server's {WHERE})"
    )))
}

/// Rewrites tonic's OUT_OF_RANGE answer to a request over the message limit
/// into RESOURCE_EXHAUSTED naming the limit. tonic refuses such a request
/// before the service runs, with a trailers-only answer (the status in the
/// headers), which is what this rewrites; every other answer passes
/// untouched.
pub fn map_size_response<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return resp;
    }
    if let Some(mapped) = Status::from_header_map(headers).as_ref().and_then(request_too_large) {
        headers.remove("grpc-status-details-bin");
        let _ = mapped.add_header(headers);
    }
    resp
}

/// The server layer applying [`map_size_response`] (see
/// `runtime::serve_reporting`).
pub type SizeStatusLayer<B> = tower::util::MapResponseLayer<fn(http::Response<B>) -> http::Response<B>>;

/// A [`SizeStatusLayer`] for servers answering with body type `B`.
pub fn size_status_layer<B>() -> SizeStatusLayer<B> {
    tower::util::MapResponseLayer::new(map_size_response::<B> as fn(http::Response<B>) -> http::Response<B>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_fits_the_largest_item_and_keeps_the_floor() {
        assert_eq!(SizeLimits::default().message_limit(), 4 << 20);
        let big = SizeLimits { max_key_bytes: 1024, max_value_bytes: 8 << 20 };
        assert_eq!(big.message_limit(), (8 << 20) + 1024 + (64 << 10));
        let put = crate::pb::Operation {
            tid: "0190a0b0-0000-7000-8000-000000000000".into(),
            kind: 3,
            key: vec![1; big.max_key_bytes],
            value: vec![2; big.max_value_bytes],
            declared: true,
            remaining_ms: u64::MAX,
        };
        assert!(wire_size(&put) + 5 <= big.message_limit());
    }

    #[test]
    fn limits_too_large_to_store_are_refused() {
        assert!(SizeLimits::default().check().is_ok());
        let e = SizeLimits { max_key_bytes: 1024, max_value_bytes: 1 << 30 }.check().unwrap_err();
        assert!(e.contains("--max-value-bytes 1073741824") && e.contains("SQLite"), "{e}");
    }

    #[test]
    fn fit_keeps_a_prefix_within_the_budget() {
        let mut v: Vec<String> = (0..10).map(|i| format!("{i:0>98}")).collect();
        // Each is 98 bytes + wrapper tag and length (2) + element framing (2).
        assert_eq!(wire_size(&v[0]), 102);
        assert_eq!(fit(&mut v, 350), 7);
        assert_eq!(v.len(), 3);
        assert_eq!(fit(&mut v, 10_000), 0);
    }

    #[test]
    fn tonic_size_errors_become_resource_exhausted_naming_the_limit() {
        let s = size_status(Status::out_of_range(format!("{DECODED}found 9 bytes, the limit is: 4 bytes")));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("the limit is: 4 bytes") && s.message().contains("--max-value-bytes"));
        let s = size_status(Status::out_of_range("something else"));
        assert_eq!(s.code(), Code::OutOfRange);
        let mut resp = Status::out_of_range(format!("{DECODED}found 9 bytes, the limit is: 4 bytes")).into_http::<()>();
        resp = map_size_response(resp);
        let s = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().starts_with("the request is too large for this server: found 9 bytes"), "{s:?}");
    }
}
