//! agentd's HTTP surface (DESIGN §3): REST + SSE under `/v1`, health and
//! info, the OpenAPI document. Handlers translate between the wire and the
//! store; they never drive runs (the engine does) and never build error
//! bodies by hand ([`error::ApiError`] is the one mapping to HTTP).

pub mod auth;
pub mod cors;
pub mod error;
mod extract;
mod follow;
mod idempotency;
pub mod jwt;
mod openapi;
mod request_id;
mod routes;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentd_engine::{AgentCatalog, Engine};
use agentd_store::Store;
use tokio_util::sync::CancellationToken;

pub use auth::AdminToken;
pub use routes::router;

/// What the server needs to know beyond its state handles.
#[derive(Clone)]
pub struct ServerConfig {
    pub admin_token: AdminToken,
    /// Which store backs this process (`sqlite`, `postgres`), for /health.
    pub store_kind: &'static str,
    /// Browser origins allowed on `/v1` and on the chat surface.
    pub cors: cors::CorsPolicies,
    /// Verifies user JWTs when `[auth.jwt]` is configured.
    pub jwt: Option<Arc<jwt::JwtVerifier>>,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Arc<dyn Store>,
    /// This process's workers, for `/metrics`.
    engine: Engine,
    catalog: AgentCatalog,
    config: ServerConfig,
    /// Set when shutdown begins: readiness turns 503.
    draining: AtomicBool,
    /// Cancelled when shutdown begins: open streams end so the server can stop.
    streams: CancellationToken,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        catalog: AgentCatalog,
        config: ServerConfig,
    ) -> Self {
        AppState {
            inner: Arc::new(StateInner {
                store,
                engine,
                catalog,
                config,
                draining: AtomicBool::new(false),
                streams: CancellationToken::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn catalog(&self) -> &AgentCatalog {
        &self.inner.catalog
    }

    pub(crate) fn admin_token(&self) -> &AdminToken {
        &self.inner.config.admin_token
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn streams_token(&self) -> CancellationToken {
        self.inner.streams.clone()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Begins shutdown: not ready any more, and every open stream ends.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.streams.cancel();
    }
}
