//! Leadership among coordinators sharing a decision log in etcd
//! (PROTOCOL.md rules 14-16).
//!
//! **Lease.** Every coordinator holds an etcd lease of `ttl` seconds and
//! renews it every `ttl / 3`. A renewal *sent* at monotonic time `t` and
//! answered proves the lease lives until at least `t + ttl` (etcd counts
//! from when it receives the renewal, later than `t`); this process is
//! **certain** of its lease until `t + ttl - margin`, the margin covering
//! clock-rate drift. Monotonic time keeps counting while the process is
//! stopped (SIGSTOP), so a paused leader that resumes is not certain any
//! more until a new renewal is answered.
//!
//! **Election.** To lead, a coordinator creates `P/leader` (value: its
//! advertised address) attached to its lease, in a transaction that
//! succeeds only if the key does not exist. The key's create revision is
//! the leader's **epoch**: every record the leader writes is conditional on
//! `P/leader` still having it (see `decision_log::etcd`), so fencing is
//! done by etcd itself, not by the leader's own belief. When a lease
//! expires etcd deletes the key, and a standby can be elected: never
//! before the old leader's certainty ended.
//!
//! **Standby.** A coordinator that does not lead polls `P/leader` every
//! [`POLL`], hands its value out as the leader's address (rule 16) and
//! campaigns when the key is gone. It answers no coordinator call.
//!
//! **Stepping down.** A leader that learns it lost its leadership for
//! good (a renewal answered "no such lease", or a write refused by its
//! guard) exits the process at once with [`EXIT_DEPOSED`], saying why in
//! its log: nothing it holds in memory may be acted on any more, and a
//! fresh process (restarted by its supervisor, as with any leader-elected
//! service) rejoins as a standby. A leader that merely cannot renew in
//! time (etcd unreachable or without quorum) is *uncertain*: it refuses
//! every call ([`twopc_leader::uncertain_status`]) and sends no
//! commit until a renewal is answered again; then it serves again if its
//! lease survived, or steps down if it did not. Its pending decision-log
//! writes wait meanwhile (they are repeated until etcd answers).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use twopc_etcd::{Etcd, op, pb};
use twopc_proto::throttle::Throttle;

/// Log sites that repeat at every poll or renewal while etcd is away
/// (`twopc_proto::throttle`): at most one line per 10 s each.
static LEASE_EXPIRED: Throttle = Throttle::new(Duration::from_secs(10));
static NO_LEASE: Throttle = Throttle::new(Duration::from_secs(10));
static NO_ETCD: Throttle = Throttle::new(Duration::from_secs(10));

/// Exit code of a coordinator that lost its leadership.
pub const EXIT_DEPOSED: i32 = 75;
/// How often a standby looks at the leadership key.
pub const POLL: Duration = Duration::from_millis(200);

pub struct Leadership {
    etcd: std::sync::Arc<Etcd>,
    key: Vec<u8>,
    me: String,
    ttl: Duration,
    state: Mutex<State>,
    /// Whether this process serves as leader right now (elected, recovered,
    /// lease certain): drives gRPC health and `twopc_coordinator_is_leader`,
    /// so a load balancer never picks a leader that refuses every call.
    serving: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// The current lease (0: none yet).
    lease: i64,
    /// Until when the lease is certainly alive (see module docs).
    certain_until: Option<Instant>,
    /// The create revision of this process's election, once it leads.
    epoch: Option<i64>,
    /// The leader's address as last seen (standby).
    leader: Option<String>,
    /// Whether the "cannot confirm" warning was logged for this lapse.
    lapse_logged: bool,
    /// Recovery is done and the gate open ([`Leadership::opened`]).
    open: bool,
    /// Elected after seeing another coordinator lead: a failover.
    took_over: bool,
}

impl Leadership {
    /// `prefix` is the cluster's key prefix (ending in `/`); `me` the
    /// address standbys hand out for this process.
    pub fn new(etcd: std::sync::Arc<Etcd>, prefix: &str, me: String, ttl: Duration) -> Self {
        Self {
            etcd,
            key: format!("{prefix}leader").into_bytes(),
            me,
            ttl,
            state: Mutex::new(State::default()),
            serving: tokio::sync::watch::channel(false).0,
        }
    }

    /// Follows whether this process serves as leader (see the field).
    pub fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }

    fn set_serving(&self, on: bool) {
        self.serving.send_replace(on);
        metrics::gauge!("twopc_coordinator_is_leader").set(if on { 1.0 } else { 0.0 });
    }

    /// Recovery is done and the gate is open: serving from now on, while
    /// the lease is certain.
    pub fn opened(&self) {
        self.state().open = true;
        self.set_serving(true);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The margin subtracted from the lease for clock-rate drift.
    fn margin(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    /// Whether this process leads and its lease is certainly alive now:
    /// the condition for answering anything from memory (rule 14).
    pub fn certain(&self) -> bool {
        let st = self.state();
        st.epoch.is_some() && st.certain_until.is_some_and(|t| Instant::now() < t)
    }

    /// Whether this process won an election (it may be uncertain now).
    pub fn leads(&self) -> bool {
        self.state().epoch.is_some()
    }

    /// Whether this process was elected after seeing another leader (a
    /// failover, not the cluster's first election).
    pub fn took_over(&self) -> bool {
        self.state().took_over
    }

    /// The leader's address as last seen, for a standby's answer.
    pub fn leader_hint(&self) -> Option<String> {
        self.state().leader.clone()
    }

    /// Grants the first lease. Fails when etcd cannot be reached.
    pub async fn start(&self) -> Result<(), twopc_etcd::EtcdError> {
        let sent = Instant::now();
        let (lease, ttl) = self.etcd.lease_grant(self.ttl.as_secs() as i64).await?;
        let mut st = self.state();
        st.lease = lease;
        st.certain_until = Some(sent + Duration::from_secs(ttl.max(0) as u64).saturating_sub(self.margin()));
        Ok(())
    }

    /// Renews the lease every `ttl / 3`, forever (see module docs).
    pub async fn keep_alive(self: std::sync::Arc<Self>) {
        let every = self.ttl / 3;
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(every).await;
            // Certainty runs out with time, not only when a renewal fails
            // (a process resumed after SIGSTOP): stop reporting SERVING first.
            if self.leads() && !self.certain() {
                self.note_lapse("the lease ran out before it was renewed (was this process paused?)");
            }
            let lease = self.state().lease;
            let sent = Instant::now();
            match tokio::time::timeout(every, self.etcd.lease_keep_alive(lease)).await {
                Ok(Ok(ttl)) if ttl > 0 => {
                    failures = 0;
                    let serve_again = {
                        let mut st = self.state();
                        st.certain_until = Some(sent + Duration::from_secs(ttl as u64).saturating_sub(self.margin()));
                        let again = st.lapse_logged;
                        if again {
                            tracing::warn!("leadership confirmed again: serving");
                            st.lapse_logged = false;
                        }
                        again && st.open
                    };
                    if serve_again {
                        self.set_serving(true);
                    }
                }
                Ok(Ok(_)) => {
                    if self.leads() {
                        self.step_down("its lease in etcd expired: another coordinator may lead now");
                    }
                    // Repeats every renewal while etcd is away: sampled.
                    if let Some(suppressed) = LEASE_EXPIRED.allow() {
                        tracing::info!(suppressed, "lease expired while standing by; taking a new one");
                    }
                    if let Err(e) = self.start().await
                        && let Some(suppressed) = NO_LEASE.allow()
                    {
                        tracing::warn!(error = %e, suppressed, "cannot take a new lease");
                    }
                }
                Ok(Err(e)) => self.renewal_failed(&mut failures, &e.to_string()),
                Err(_) => self.renewal_failed(&mut failures, "no answer in time"),
            }
        }
    }

    fn renewal_failed(&self, failures: &mut u32, why: &str) {
        *failures += 1;
        if self.leads() && !self.certain() {
            self.note_lapse(why);
        } else if *failures % 10 == 1 {
            tracing::warn!(error = why, "lease renewal failed; retrying");
        }
    }

    /// A leader's certainty ran out: refuse (the gate checks `certain`)
    /// and report NOT_SERVING until a renewal is answered again. Logged
    /// and counted once per lapse.
    fn note_lapse(&self, why: &str) {
        let newly = {
            let mut st = self.state();
            let newly = !st.lapse_logged;
            st.lapse_logged = true;
            newly
        };
        if newly {
            self.set_serving(false);
            metrics::counter!("twopc_leader_lease_lapses_total").increment(1);
            tracing::error!(
                error = why,
                "cannot confirm leadership: the lease could not be renewed in time; refusing every call (health NOT_SERVING) until it is"
            );
        }
    }

    /// Stands by until this process is elected; returns its epoch. Whether
    /// it took over from another leader it saw: [`Leadership::took_over`].
    pub async fn campaign(&self) -> i64 {
        let mut seen: Option<String> = None;
        loop {
            match self.try_lead().await {
                Ok(Ok(epoch)) => {
                    let mut st = self.state();
                    st.epoch = Some(epoch);
                    st.took_over = seen.is_some();
                    st.leader = Some(self.me.clone());
                    return epoch;
                }
                Ok(Err(leader)) => {
                    if leader != seen {
                        tracing::info!(leader = leader.as_deref().unwrap_or("(none)"), "standing by");
                        seen = leader.clone();
                    }
                    self.state().leader = leader;
                }
                Err(e) => {
                    if let Some(suppressed) = NO_ETCD.allow() {
                        tracing::warn!(error = %e, suppressed, "cannot reach etcd to look for the leader; retrying");
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One look at the leadership key, and one attempt to take it if free
    /// and our lease is certain. `Ok(Ok(epoch))`: elected.
    async fn try_lead(&self) -> Result<Result<i64, Option<String>>, twopc_etcd::EtcdError> {
        let r = self.etcd.range(&self.key, &[], 1).await?;
        if let Some(kv) = r.kvs.first() {
            let lease = self.state().lease;
            if kv.lease == lease && lease != 0 {
                // An earlier attempt of ours succeeded but its answer was lost.
                return Ok(Ok(kv.create_revision));
            }
            return Ok(Err(Some(String::from_utf8_lossy(&kv.value).to_string())));
        }
        let (lease, certain) = {
            let st = self.state();
            (st.lease, st.certain_until.is_some_and(|t| Instant::now() < t))
        };
        if !certain {
            return Ok(Err(None));
        }
        let req = pb::TxnRequest {
            compare: vec![op::created_at(self.key.clone(), 0)],
            success: vec![op::put(self.key.clone(), self.me.clone(), lease)],
            failure: vec![op::get(self.key.clone())],
        };
        let r = self.etcd.txn(req).await?;
        if r.succeeded {
            return Ok(Ok(r.header.map_or(0, |h| h.revision)));
        }
        let kv = r.responses.first().and_then(op::found);
        match kv {
            Some(kv) if kv.lease == lease => Ok(Ok(kv.create_revision)),
            Some(kv) => Ok(Err(Some(String::from_utf8_lossy(&kv.value).to_string()))),
            None => Ok(Err(None)),
        }
    }

    /// Stops acting as leader for good: exits the process (module docs).
    pub fn step_down(&self, why: &str) -> ! {
        self.set_serving(false);
        tracing::error!(
            reason = why,
            "no longer the leader: exiting so that nothing held in memory is acted on; restart this coordinator and it rejoins as a standby"
        );
        std::process::exit(EXIT_DEPOSED)
    }

    /// Reads the partition count a cluster's log was created with, if it
    /// exists yet (checked at start, so a misconfigured coordinator never
    /// wins an election it cannot use).
    pub async fn stored_partitions(&self, prefix: &str) -> Result<Option<String>, twopc_etcd::EtcdError> {
        let r = self.etcd.range(format!("{prefix}meta/partitions").as_bytes(), &[], 1).await?;
        Ok(r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).to_string()))
    }

    /// Gives leadership up on a graceful shutdown: revoking the lease
    /// deletes the key, so a standby takes over at once.
    pub async fn resign(&self) {
        let lease = self.state().lease;
        if lease != 0 && self.etcd.lease_revoke(lease).await.is_ok() {
            tracing::info!("resigned: lease revoked");
        }
    }
}
