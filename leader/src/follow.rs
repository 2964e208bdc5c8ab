//! Following the leader among several coordinators (PROTOCOL.md rule 16):
//! the one shared [`Follower`] every caller of the Coordinator service uses
//! (the client library and the participants).
//!
//! A caller is given a list of coordinator addresses (`A,B,C`,
//! [`crate::parse_addresses`]). It keeps the coordinator that answered
//! last as its *current* one, and one channel per address (TLS and the
//! peer token on every one, so a channel opened after a hop is as
//! trusted as the first). A call goes to the current coordinator; its
//! failure decides what happens next ([`Failure`]):
//!
//! - **A standby's answer** (UNAVAILABLE naming the leader in
//!   [`crate::LEADER_HEADER`]): nothing happened there, so the call goes
//!   to the named leader, which becomes current. A named address outside
//!   the list is followed too (and joins the rotation once it answers);
//!   one that cannot be dialled is a failed hop.
//! - **Never sent** (the connection could not be made: refused, no route,
//!   TLS handshake refused at connect): nothing happened there either; the
//!   next address of the list is tried (round robin).
//! - **Cut off or unsure** (UNAVAILABLE without a hint: a standby that
//!   knows no leader, a leader that cannot confirm its lease, a commit
//!   still running; a transport error after the request left; a
//!   deadline): the call may or may not have taken effect. An idempotent
//!   call ([`Retry::Idempotent`]: Begin, GetDecision, GetTopology, Abort,
//!   Register, Enlist, admin calls; rule 11 makes them safe to repeat)
//!   tries the next address. A call that must not be blindly repeated
//!   ([`Retry::UntouchedOnly`]: a client's Commit) stops with
//!   [`FollowError::Uncertain`]; its caller must then find the outcome
//!   (the client asks GetDecision of whoever leads, see
//!   `twopc_client`'s `Txn::commit`).
//! - **Any other answer** is the leader's own and is returned as is.
//!
//! Bounded: a call stops after its [`Policy::budget`] (each attempt is cut
//! at what is left of it) or [`Policy::max_hops`] attempts, with
//! [`FollowError::Exhausted`] naming every address tried and its last
//! error. A new address is tried at once; going back to one already tried
//! in this call first waits a short capped backoff, so two standbys
//! naming each other during an election do not spin.
//!
//! One address behaves as before lists existed: a failure without a hint
//! is returned at once (there is nowhere else to go), only a standby's
//! hint is followed, and an attempt there is not cut at
//! [`Policy::attempt_limit`] (which exists to move on to another address):
//! a coordinator that stalls (paused, overloaded) gets the whole budget, so
//! a caller's budget is what bounds the call, and when it runs out the
//! error names the address and says it did not answer.
//!
//! What any other client of the Coordinator service must do too: treat
//! UNAVAILABLE with `x-twopc-leader` as "go there, nothing happened here";
//! treat a failure without it as "maybe happened": repeat only idempotent
//! calls elsewhere; for a Commit whose fate is unknown, ask GetDecision of
//! whoever leads until it says COMMITTED or ABORTED (a new leader answers
//! ABORTED for a tid it has no record of, honestly: the old leader is
//! fenced and can no longer write one). While it says PENDING the leader
//! holds the tid live, and repeating the Commit there is safe (rule 11)
//! and starts it if it never arrived.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use twopc_proto::Backoff;
use twopc_proto::pb::coordinator_client::CoordinatorClient;
use twopc_proto::tls::ClientTls;
use twopc_proto::token::{PeerChannel, PeerToken};

/// A Coordinator client as the follower hands it out: over the channel of
/// one address, sending the peer token (if any) on every call.
pub type Coordinator = CoordinatorClient<PeerChannel>;

/// How one call is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The whole call, hops and backoff included.
    pub budget: Duration,
    /// Most attempts (every hop is one).
    pub max_hops: u32,
    /// Each attempt is also cut at this (a wedged coordinator must not
    /// take the whole budget); `None`: only the budget.
    pub attempt_limit: Option<Duration>,
    /// First delay before going back to an address already tried.
    pub backoff_initial: Duration,
    /// Cap of that delay.
    pub backoff_max: Duration,
}

impl Policy {
    /// `budget` in total, at most 64 hops, backoff 50 ms doubling to 500 ms.
    pub fn within(budget: Duration) -> Self {
        Self {
            budget,
            max_hops: 64,
            attempt_limit: None,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        }
    }

    /// The same with each attempt also cut at `limit`.
    pub fn attempts_within(mut self, limit: Duration) -> Self {
        self.attempt_limit = Some(limit);
        self
    }
}

/// Whether a call may be repeated after it was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Safe to repeat anywhere (rule 11): every failure but a real answer
    /// moves on.
    Idempotent,
    /// Repeated only where it certainly did nothing (a standby's answer, a
    /// connection never made); otherwise [`FollowError::Uncertain`].
    UntouchedOnly,
}

/// What a failed attempt says about where to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A standby named the leader.
    Hint(String),
    /// The request never left: no connection could be made.
    NeverSent,
    /// The request may have been acted on: cut off, or unsure.
    Unsure,
    /// The coordinator's own answer.
    Answer,
}

/// Classifies a failed attempt's status (see the module docs).
pub fn classify(status: &Status) -> Failure {
    if let Some(leader) = crate::leader_hint(status) {
        return Failure::Hint(leader);
    }
    if never_sent(status) {
        return Failure::NeverSent;
    }
    let made_here = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Failure::Unsure,
        // A peer that dies mid-call: UNKNOWN "transport error"; a broken
        // connection (reset, refused TLS after the handshake): a status
        // made on this side, with the cause as its source.
        Code::Unknown if status.message().contains("transport error") => Failure::Unsure,
        Code::Unknown | Code::Cancelled | Code::Internal if made_here => Failure::Unsure,
        _ => Failure::Answer,
    }
}

/// Whether `status` was made here from a failed connection attempt (tonic
/// wraps those in [`tonic::ConnectError`]): the request was never sent.
fn never_sent(status: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// One address's last failure in a call, for the final error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub address: String,
    pub error: String,
}

/// Why a call through the follower failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The coordinator at `address` answered `status` (its own answer, or
    /// the only address failed with nowhere else to go).
    #[error("the coordinator at {address}: {}", describe(status))]
    Status { address: String, status: Status },
    /// A [`Retry::UntouchedOnly`] call was cut off at `address`: it may
    /// have taken effect there.
    #[error(
        "the call to the coordinator at {address} was cut off ({}): it may or may not have taken effect",
        describe(status)
    )]
    Uncertain { address: String, status: Status },
    /// No coordinator answered as leader within the policy. `message`
    /// names the call, the bound that ran out, and every address tried
    /// with its last error (`tried`; empty once carried through a status).
    #[error("{message}")]
    Exhausted { message: String, tried: Vec<Tried> },
}

/// Local metadata marking a status made from a [`FollowError`] (never
/// sent on the wire), so it survives a trip through a `Status`-typed API
/// (the batchers) and comes back whole with [`FollowError::from_status`].
const ADDRESS_KEY: &str = "x-twopc-follow-address";
const KIND_KEY: &str = "x-twopc-follow-kind";

impl FollowError {
    /// The status of a failed call, for APIs that carry a `Status`.
    pub fn into_status(self) -> Status {
        let (kind, address, mut status) = match self {
            FollowError::Status { address, status } => ("status", address, status),
            FollowError::Uncertain { address, status } => ("uncertain", address, status),
            e @ FollowError::Exhausted { .. } => ("exhausted", String::new(), Status::unavailable(e.to_string())),
        };
        let md = status.metadata_mut();
        md.insert(KIND_KEY, MetadataValue::from_static(kind));
        if let Ok(v) = address.parse() {
            md.insert(ADDRESS_KEY, v);
        }
        status
    }

    /// Back from [`FollowError::into_status`]; `None` for any other status.
    pub fn from_status(status: Status) -> Result<FollowError, Status> {
        let kind = status.metadata().get(KIND_KEY).and_then(|v| v.to_str().ok()).map(str::to_string);
        let address = status.metadata().get(ADDRESS_KEY).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        match kind.as_deref() {
            Some("status") => Ok(FollowError::Status { address, status: strip(status) }),
            Some("uncertain") => Ok(FollowError::Uncertain { address, status: strip(status) }),
            Some("exhausted") => Ok(FollowError::Exhausted { message: status.message().to_string(), tried: vec![] }),
            _ => Err(status),
        }
    }

    /// The gRPC code a caller should see.
    pub fn code(&self) -> Code {
        match self {
            FollowError::Status { status, .. } | FollowError::Uncertain { status, .. } => status.code(),
            FollowError::Exhausted { .. } => Code::Unavailable,
        }
    }
}

fn strip(mut status: Status) -> Status {
    status.metadata_mut().remove(KIND_KEY);
    status.metadata_mut().remove(ADDRESS_KEY);
    status
}

fn describe(status: &Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

fn exhausted(rpc: &str, why: String, tried: Vec<Tried>) -> FollowError {
    let list = tried.iter().map(|t| format!("{} ({})", t.address, t.error)).collect::<Vec<_>>().join("; ");
    FollowError::Exhausted {
        message: format!(
            "{rpc}: no coordinator answered as leader {why}; tried {list}. Are the coordinators running, \
             and does one lead (a leader is elected within the lease TTL)?"
        ),
        tried,
    }
}

/// The coordinators a process calls, and which one it follows now.
/// Cheap to share (`Arc`); concurrent calls each hop on their own and
/// share what they learn.
pub struct Follower {
    tls: ClientTls,
    peer_token: PeerToken,
    connect_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// The list given, then any leader a standby named that was not in it.
    rotation: Vec<String>,
    /// Index into `rotation` of the coordinator calls go to first.
    current: usize,
    channels: HashMap<String, Channel>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("Follower").field("rotation", &st.rotation).field("current", &st.current).finish()
    }
}

impl Follower {
    /// A follower of the coordinators in `list` (`A,B,C`), reached with
    /// `tls`, sending `peer_token` on every call. Nothing is connected
    /// yet. Refuses an empty or malformed list, naming the bad item.
    pub fn new(list: &str, tls: ClientTls, peer_token: PeerToken, connect_timeout: Duration) -> Result<Self, String> {
        let rotation = crate::parse_addresses(list)?;
        for a in &rotation {
            tls.endpoint(a).map_err(|e| format!("bad coordinator address {a:?} in {list:?}: {e}"))?;
        }
        Ok(Self {
            tls,
            peer_token,
            connect_timeout,
            state: Mutex::new(State { rotation, current: 0, channels: HashMap::new() }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only a cache of channels and a position: nothing a panic could
        // leave half-updated in a harmful way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address calls go to first.
    pub fn current(&self) -> String {
        let st = self.state();
        st.rotation[st.current].clone()
    }

    /// Every address known: the list given, then leaders learned from hints.
    pub fn addresses(&self) -> Vec<String> {
        self.state().rotation.clone()
    }

    /// The client for `address` (cached channel, made lazily).
    fn client(&self, address: &str) -> Result<Coordinator, Status> {
        let mut st = self.state();
        let channel = match st.channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let endpoint = self
                    .tls
                    .endpoint(address)
                    .map_err(|e| Status::invalid_argument(format!("bad coordinator address {address:?}: {e}")))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                let c = endpoint.connect_lazy();
                st.channels.insert(address.to_string(), c.clone());
                c
            }
        };
        // The coordinator's message limit: it carries no keys or values
        // (`twopc_proto::limits`, rule 1).
        let limit = twopc_proto::limits::SizeLimits::default().message_limit();
        Ok(CoordinatorClient::with_interceptor(channel, self.peer_token.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }

    /// Makes `address` current, adding it to the rotation if new.
    fn settle_on(&self, address: &str) {
        let mut st = self.state();
        let i = match st.rotation.iter().position(|a| a == address) {
            Some(i) => i,
            None => {
                st.rotation.push(address.to_string());
                st.rotation.len() - 1
            }
        };
        st.current = i;
    }

    /// The address after `address` in the rotation (itself if alone); for
    /// an address outside it (a hint), the one after `anchor`, the last
    /// address of the rotation tried, so the round robin goes on from there.
    fn after(&self, address: &str, anchor: &str) -> String {
        let st = self.state();
        let n = st.rotation.len();
        let at = |a: &str| st.rotation.iter().position(|r| r == a);
        let i = at(address).or_else(|| at(anchor)).unwrap_or(n - 1);
        st.rotation[(i + 1) % n].clone()
    }

    /// Whether `address` is the only address this follower knows.
    fn only(&self, address: &str) -> bool {
        let st = self.state();
        st.rotation.len() == 1 && st.rotation[0] == address
    }

    fn in_rotation(&self, address: &str) -> bool {
        self.state().rotation.iter().any(|a| a == address)
    }

    /// Runs `call` (one RPC on the client it is given) on the current
    /// coordinator, following the leader as the module docs say. `rpc`
    /// names the call in the final error.
    pub async fn call<T, F, Fut>(
        &self,
        rpc: &'static str,
        policy: Policy,
        retry: Retry,
        call: F,
    ) -> Result<T, FollowError>
    where
        F: Fn(Coordinator) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(policy.backoff_initial, policy.backoff_max);
        let mut tried: Vec<Tried> = vec![];
        let mut address = self.current();
        let mut anchor = address.clone();
        let mut hops = 0u32;
        loop {
            hops += 1;
            if self.in_rotation(&address) {
                anchor.clone_from(&address);
            }
            let left = policy.budget.saturating_sub(started.elapsed());
            // The attempt limit exists to move on to another address; with
            // one address and no hint there is nowhere to move, so the
            // attempt gets the whole budget: a coordinator paused for
            // longer than the limit (a stall, SIGSTOP, an overloaded host)
            // is waited for as --call-budget-ms says, not failed at the
            // first cut.
            let limit = match policy.attempt_limit {
                Some(l) if !self.only(&address) => l.min(left),
                _ => left,
            };
            let (status, failure) = match self.client(&address) {
                Ok(client) => {
                    let status = match tokio::time::timeout(limit, call(client)).await {
                        Ok(Ok(v)) => {
                            self.settle_on(&address);
                            return Ok(v);
                        }
                        Ok(Err(s)) => s,
                        Err(_) => Status::deadline_exceeded(format!(
                            "the coordinator at {address} did not answer within {}ms: it may be paused, hung or \
                             overloaded",
                            limit.as_millis()
                        )),
                    };
                    let failure = classify(&status);
                    (status, failure)
                }
                // A standby named an address that cannot be dialled: a
                // hop that went nowhere.
                Err(s) => (s, Failure::NeverSent),
            };
            let note = |tried: &mut Vec<Tried>, error: String| match tried.iter_mut().find(|t| t.address == address) {
                Some(t) => t.error = error,
                None => tried.push(Tried { address: address.clone(), error }),
            };
            let next = match failure {
                Failure::Answer => {
                    self.settle_on(&address);
                    return Err(FollowError::Status { address, status });
                }
                Failure::Hint(leader) => {
                    note(&mut tried, format!("a standby; it named the leader {leader}"));
                    leader
                }
                Failure::Unsure if retry == Retry::UntouchedOnly => {
                    return Err(FollowError::Uncertain { address, status });
                }
                Failure::NeverSent | Failure::Unsure => {
                    let next = self.after(&address, &anchor);
                    if next == address {
                        // One address and no hint: nowhere else to go.
                        return Err(FollowError::Status { address, status });
                    }
                    note(&mut tried, describe(&status));
                    next
                }
            };
            tracing::debug!(rpc, from = %address, to = %next, error = %status.message(), "following the coordinator leader");
            let why = if hops >= policy.max_hops {
                Some(format!("after {hops} attempts"))
            } else if started.elapsed() >= policy.budget {
                Some(format!("within {}ms", policy.budget.as_millis()))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(exhausted(rpc, why, tried));
            }
            if tried.iter().any(|t| t.address == next) {
                let left = policy.budget.saturating_sub(started.elapsed());
                tokio::time::sleep(backoff.next_delay().min(left)).await;
                if started.elapsed() >= policy.budget {
                    return Err(exhausted(rpc, format!("within {}ms", policy.budget.as_millis()), tried));
                }
            }
            address = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_coordinator::{Act, FakeCoordinator};
    use twopc_proto::pb;

    fn follower(list: &str) -> Follower {
        Follower::new(list, ClientTls::plaintext(), PeerToken::default(), Duration::from_secs(1)).unwrap()
    }

    /// A loopback address nobody listens on (bound, then released).
    fn dead_addr() -> String {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
    }

    async fn topology(f: &Follower, policy: Policy) -> Result<pb::Topology, FollowError> {
        f.call("GetTopology", policy, Retry::Idempotent, |mut c| async move {
            c.get_topology(pb::GetTopologyRequest {}).await.map(tonic::Response::into_inner)
        })
        .await
    }

    async fn commit(f: &Follower, policy: Policy) -> Result<pb::CommitResponse, FollowError> {
        f.call("Commit", policy, Retry::UntouchedOnly, |mut c| async move {
            c.commit(pb::CommitRequest::default()).await.map(tonic::Response::into_inner)
        })
        .await
    }

    fn quick() -> Policy {
        Policy::within(Duration::from_secs(5))
    }

    #[tokio::test]
    async fn a_standby_hint_is_followed_and_the_leader_becomes_current() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let standby = FakeCoordinator::standby(Some(leader.addr.to_string())).await;
        let f = follower(&standby.addr.to_string());
        assert_eq!(topology(&f, quick()).await.unwrap().partitions, 1);
        assert_eq!(f.current(), leader.addr.to_string());
        assert_eq!(f.addresses(), vec![standby.addr.to_string(), leader.addr.to_string()]);
        // The next call goes straight to the leader.
        topology(&f, quick()).await.unwrap();
        assert_eq!((standby.calls("GetTopology"), leader.calls("GetTopology")), (1, 2));
        // A Commit is resent after a standby's answer: nothing happened there.
        let g = follower(&standby.addr.to_string());
        assert_eq!(commit(&g, quick()).await.unwrap().outcome(), pb::Outcome::Committed);
        assert_eq!(standby.calls("Commit"), 1);
    }

    #[tokio::test]
    async fn a_connection_failure_moves_to_the_next_address() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let dead = dead_addr();
        let f = follower(&format!("{dead},{}", leader.addr));
        assert_eq!(topology(&f, quick()).await.unwrap().partitions, 1);
        assert_eq!(f.current(), leader.addr.to_string());
        // Never sent, so even a Commit moves on.
        let g = follower(&format!("{dead},{}", leader.addr));
        assert_eq!(commit(&g, quick()).await.unwrap().outcome(), pb::Outcome::Committed);
        // A standby that knows no leader: the next address.
        let lost = FakeCoordinator::standby(None).await;
        let h = follower(&format!("{},{}", lost.addr, leader.addr));
        topology(&h, quick()).await.unwrap();
        assert_eq!(h.current(), leader.addr.to_string());
    }

    #[tokio::test]
    async fn classify_tells_never_sent_from_cut_off() {
        let f = follower(&dead_addr());
        let e = topology(&f, quick()).await.unwrap_err();
        let FollowError::Status { status, .. } = &e else { panic!("one address fails at once: {e:?}") };
        assert_eq!(classify(status), Failure::NeverSent, "{status:?}");
        assert_eq!(classify(&crate::standby_status(Some("h:1"))), Failure::Hint("h:1".into()));
        assert_eq!(classify(&crate::uncertain_status()), Failure::Unsure);
        assert_eq!(classify(&Status::unknown("transport error")), Failure::Unsure);
        assert_eq!(classify(&Status::deadline_exceeded("x")), Failure::Unsure);
        assert_eq!(classify(&Status::aborted("x")), Failure::Answer);
        assert_eq!(classify(&Status::not_found("x")), Failure::Answer);
    }

    #[tokio::test]
    async fn one_address_fails_at_once_and_an_answer_is_returned_as_is() {
        let dead = dead_addr();
        let started = Instant::now();
        let e = topology(&follower(&dead), quick()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(
            matches!(&e, FollowError::Status { address, status } if *address == dead && status.code() == Code::Unavailable),
            "{e:?}"
        );
        let refusing = FakeCoordinator::start(Box::new(|_, _| Act::Fail(Status::resource_exhausted("full")))).await;
        let e = topology(&follower(&format!("{},{dead}", refusing.addr)), quick()).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert_eq!(refusing.calls("GetTopology"), 1);
    }

    #[tokio::test]
    async fn an_exhausted_budget_names_every_address_and_its_last_error() {
        let (dead1, dead2) = (dead_addr(), dead_addr());
        let lost = FakeCoordinator::standby(None).await;
        let list = format!("{dead1},{},{dead2}", lost.addr);
        let started = Instant::now();
        let e = topology(&follower(&list), Policy::within(Duration::from_millis(600))).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        let FollowError::Exhausted { message, tried } = &e else { panic!("{e:?}") };
        assert_eq!(
            tried.iter().map(|t| t.address.as_str()).collect::<Vec<_>>(),
            vec![dead1.as_str(), &lost.addr.to_string(), dead2.as_str()]
        );
        assert!(message.starts_with("GetTopology: no coordinator answered as leader within 600ms"), "{message}");
        for a in [&dead1, &dead2, &lost.addr.to_string()] {
            assert!(message.contains(a.as_str()), "{message}");
        }
        assert!(message.contains("no leader is elected"), "{message}");
        assert!(lost.calls("GetTopology") >= 2, "went round the list more than once");
        // Hops are bounded too.
        let mut hops = Policy::within(Duration::from_secs(10));
        hops.max_hops = 3;
        let e = topology(&follower(&list), hops).await.unwrap_err();
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
        // And the error survives a trip through a status (the batchers).
        let back = FollowError::from_status(e.into_status()).unwrap();
        assert!(matches!(&back, FollowError::Exhausted { message, .. } if message.contains(&dead1)), "{back:?}");
    }

    #[tokio::test]
    async fn a_commit_cut_off_is_uncertain_and_an_idempotent_call_moves_on() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let unsure = FakeCoordinator::start(Box::new(|_, _| Act::Fail(crate::uncertain_status()))).await;
        let list = format!("{},{}", unsure.addr, leader.addr);
        let e = commit(&follower(&list), quick()).await.unwrap_err();
        assert!(matches!(&e, FollowError::Uncertain { address, .. } if *address == unsure.addr.to_string()), "{e:?}");
        assert_eq!(leader.calls("Commit"), 0, "an uncertain commit is not resent blindly");
        topology(&follower(&list), quick()).await.unwrap();
        // A wedged coordinator: the attempt is cut, then the next one answers.
        let wedged = FakeCoordinator::start(Box::new(|_, _| Act::Hang)).await;
        let f = follower(&format!("{},{}", wedged.addr, leader.addr));
        let policy = quick().attempts_within(Duration::from_millis(200));
        topology(&f, policy).await.unwrap();
        let e = commit(&follower(&format!("{},{}", wedged.addr, leader.addr)), policy).await.unwrap_err();
        assert!(matches!(e, FollowError::Uncertain { .. }), "{e:?}");
        let back = FollowError::from_status(e.into_status()).unwrap();
        assert!(matches!(back, FollowError::Uncertain { address, .. } if address == wedged.addr.to_string()));
    }

    #[tokio::test]
    async fn a_hint_that_cannot_be_dialled_is_a_failed_hop() {
        let leader = FakeCoordinator::start(Box::new(|_, _| Act::Answer)).await;
        let liar = FakeCoordinator::standby(Some("not an address".into())).await;
        let f = follower(&format!("{},{}", liar.addr, leader.addr));
        topology(&f, quick()).await.unwrap();
        assert_eq!(f.addresses(), vec![liar.addr.to_string(), leader.addr.to_string()], "nothing bad was added");
        let e =
            topology(&follower(&liar.addr.to_string()), Policy::within(Duration::from_millis(300))).await.unwrap_err();
        assert!(e.to_string().contains("it named the leader not an address"), "{e}");
    }

    #[test]
    fn bad_lists_are_refused() {
        let new = |l: &str| Follower::new(l, ClientTls::plaintext(), PeerToken::default(), Duration::from_secs(1));
        assert!(new("a:1,,b:2").unwrap_err().contains("empty address"));
        assert!(new("not an address").unwrap_err().contains("bad coordinator address"));
        assert_eq!(new("a:1, b:2").unwrap().addresses(), vec!["a:1", "b:2"]);
    }
}
