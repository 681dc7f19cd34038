//! agentd's HTTP surface (DESIGN §3): REST + SSE under `/v1`, health and
//! info, the OpenAPI document. Handlers translate between the wire and the
//! store; they never drive runs (the engine does) and never build error
//! bodies by hand ([`error::ApiError`] is the one mapping to HTTP).

mod audit;
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
mod sse;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentd_engine::{AgentCatalog, Engine, Scrubber};
use agentd_store::Store;
use tokio_util::sync::CancellationToken;

pub use auth::{AdminToken, AuthConfig, FailureLimit, StaticKeys, TrustedProxies};
pub use routes::chat::state::ChatStateKey;
pub use routes::router;
pub use routes::sandboxes::SandboxApi;

/// What the server needs to know beyond its state handles.
#[derive(Clone)]
pub struct ServerConfig {
    pub auth: AuthConfig,
    /// Secrets scrubbed from what clients send before it is stored.
    pub scrubber: Arc<Scrubber>,
    /// Which store backs this process (`sqlite`, `postgres`), for /health.
    pub store_kind: &'static str,
    /// Browser origins allowed on `/v1` and on the chat surface.
    pub cors: cors::CorsPolicies,
    /// Verifies user JWTs when `[auth.jwt]` is configured.
    pub jwt: Option<Arc<jwt::JwtVerifier>>,
    pub chat: ChatConfig,
}

/// The chat surface's settings (`[chat]`).
#[derive(Clone)]
pub struct ChatConfig {
    /// Serve chat without a credential (the default tenant, `chat` only).
    pub public: bool,
    /// Signs the conversation `state` handed to chat clients.
    pub state_key: ChatStateKey,
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
    /// Open streams by key, closed when their key is revoked or rotated.
    key_streams: Arc<auth::KeyStreams>,
    failures: auth::FailureLimiter,
    /// The sandbox service and its egress ceiling; set once at start-up.
    sandboxes: std::sync::OnceLock<SandboxApi>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        engine: Engine,
        catalog: AgentCatalog,
        config: ServerConfig,
    ) -> Self {
        let streams = CancellationToken::new();
        let key_streams: Arc<auth::KeyStreams> = Arc::default();
        // Keys revoked or rotated on other nodes close their streams here too.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(auth::follow_remote_changes(
                key_streams.clone(),
                store.clone(),
                store.hub().subscribe_key_changes(),
                streams.clone(),
            ));
        }
        AppState {
            inner: Arc::new(StateInner {
                store,
                engine,
                catalog,
                draining: AtomicBool::new(false),
                streams,
                key_streams,
                failures: auth::FailureLimiter::new(config.auth.failure_limit),
                sandboxes: std::sync::OnceLock::new(),
                config,
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

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// A token for a new stream of `principal`'s: cancelled at shutdown,
    /// and when its key is revoked or rotated away. Keep the slot as long
    /// as the stream lives.
    pub(crate) fn stream_token(
        &self,
        principal: &auth::Principal,
    ) -> (CancellationToken, Option<auth::StreamSlot>) {
        self.inner
            .key_streams
            .open(&self.inner.streams, &principal.credential)
    }

    pub(crate) fn key_streams(&self) -> &auth::KeyStreams {
        &self.inner.key_streams
    }

    pub(crate) fn failure_limiter(&self) -> &auth::FailureLimiter {
        &self.inner.failures
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Serves `/v1/sandboxes` with this service (once, at start-up).
    pub fn set_sandboxes(&self, api: SandboxApi) {
        let _ = self.inner.sandboxes.set(api);
    }

    pub(crate) fn sandboxes(&self) -> Option<&SandboxApi> {
        self.inner.sandboxes.get()
    }

    /// Begins shutdown: not ready any more, and every open stream ends.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.streams.cancel();
    }
}
