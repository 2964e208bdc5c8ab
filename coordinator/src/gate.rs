//! The coordinator service behind its leadership gate (rules 14 and 16).
//!
//! With the SQLite log the gate is always open. With the replicated log a
//! process starts as a standby: until it wins the election and has run
//! recovery (rule 15) every Coordinator call is answered
//! [`standby_status`] with the leader's address; once it leads, a call is
//! served only while its lease is certain, and answered
//! [`uncertain_status`] otherwise, so nothing is answered from memory by a
//! leader that may have been replaced. The check is made per call, in
//! front of the generated service, so no handler can forget it.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use twopc_leader::{standby_status, uncertain_status};
use twopc_proto::pb::coordinator_server::CoordinatorServer;

use crate::leadership::Leadership;
use crate::service::CoordinatorService;

type Server = CoordinatorServer<CoordinatorService>;

#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    /// None: the local log, no election.
    leadership: Option<Arc<Leadership>>,
    server: OnceLock<Server>,
}

impl Gate {
    /// Always open (the SQLite log: this process is the only coordinator).
    pub fn open(server: Server) -> Self {
        let server = OnceLock::from(server);
        Self { inner: Arc::new(Inner { leadership: None, server }) }
    }

    /// Closed until [`Gate::lead`]: a standby.
    pub fn standby(leadership: Arc<Leadership>) -> Self {
        Self { inner: Arc::new(Inner { leadership: Some(leadership), server: OnceLock::new() }) }
    }

    /// Opens the gate: this process leads and has recovered.
    pub fn lead(&self, server: Server) {
        let _ = self.inner.server.set(server);
    }

    fn check(&self) -> Result<Server, tonic::Status> {
        let leadership = self.inner.leadership.as_ref();
        match self.inner.server.get() {
            None => Err(standby_status(leadership.and_then(|l| l.leader_hint()).as_deref())),
            Some(_) if leadership.is_some_and(|l| !l.certain()) => Err(uncertain_status()),
            Some(s) => Ok(s.clone()),
        }
    }
}

impl NamedService for Gate {
    const NAME: &'static str = "twopc.v1.Coordinator";
}

impl Service<http::Request<Body>> for Gate {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.check() {
            Ok(mut server) => Box::pin(server.call(req)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
