//! The front door: checks a request, builds its egress policy, keeps the
//! live sessions, runs each one on a task, keeps each session's record and
//! audit trail in the store, answers reads (live sessions from memory,
//! ended ones from the store), ends records orphaned by a daemon that
//! stopped, and reports whether this host can isolate at all.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_core::ids::new_id;
use agentd_core::time::now_millis;
use agentd_core::{AuditAction, AuditOutcome, AuditRecord, TenantId};
use agentd_store::{Page, PageRequest, SandboxRecord, Store, StoreError, UNFINISHED_PHASES};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::egress::{AddrCheck, DEFAULT_PORTS, EgressPolicy, HostRule, intersect};
use crate::launch::{LaunchSpec, Launcher};
use crate::record::view_of;
use crate::runner::{Auditor, audit_record, probe, run, write_session};
use crate::session::{EgressView, Phase, SandboxSession, SandboxView, SessionInfo};
use crate::spec::{Language, LimitPolicy, LimitsRequest, SpecError, check_code};

/// Who created a sandbox; copied onto each of its audit entries.
#[derive(Clone, Debug)]
pub struct AuditOrigin {
    pub tenant: TenantId,
    pub actor: String,
    pub actor_id: Option<String>,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

/// A single audit entry, as the service hands it over.
pub type AuditEntry = AuditRecord;

/// Request `egress` (seed 004): `{mode: "deny_all" | "allow_list", allow: [...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    pub mode: EgressMode,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressMode {
    #[default]
    DenyAll,
    AllowList,
}

/// The operator's side of egress for one sandbox: which hosts may ever be
/// listed (the tenant's or the agent's ceiling) and the address blocks and
/// ports beyond the defaults.
#[derive(Clone)]
pub struct EgressCeiling {
    pub hosts: Vec<HostRule>,
    /// Empty: [`DEFAULT_PORTS`].
    pub ports: Vec<u16>,
    pub check_addr: AddrCheck,
}

/// One creation.
pub struct CreateRequest {
    pub code: String,
    pub language: Language,
    pub limits: LimitsRequest,
    pub egress: EgressRequest,
    pub labels: BTreeMap<String, String>,
    pub origin: AuditOrigin,
    /// The ceiling for this request: the operator's `[sandbox]` list for
    /// API callers, the agent's egress list for `run_code`.
    pub ceiling: EgressCeiling,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// This host cannot isolate; nothing ever runs unconfined.
    #[error("sandboxing is unavailable on this host: {0}")]
    Unavailable(String),
    #[error("too many sandboxes are running ({0}); retry later")]
    Busy(usize),
    /// The session's first record could not be stored; nothing was started.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a session was found.
#[derive(Debug)]
pub enum Found {
    /// Running here (or its final record could not be stored): memory is
    /// the truth.
    Live(Arc<SandboxSession>),
    /// Ended, or running on another node: the store's record.
    Stored(Box<SandboxRecord>),
}

impl Found {
    pub fn view(&self) -> Result<SandboxView, StoreError> {
        match self {
            Found::Live(s) => Ok(s.view()),
            Found::Stored(r) => view_of(r),
        }
    }
}

/// What a teardown did.
#[derive(Debug, PartialEq, Eq)]
pub enum TeardownOutcome {
    /// Torn down now, or already.
    Done,
    NotFound,
    /// Running on another node, which alone can kill it.
    RunningElsewhere,
}

/// The operator's `[sandbox]` settings.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub limits: LimitPolicy,
    /// The daemon's executable (re-run as the helper).
    pub exe: PathBuf,
    /// Sandboxes running at once in this process.
    pub max_running: usize,
    /// Finished sessions kept in memory so late streams get every frame
    /// (oldest dropped first); reads of them go to the store.
    pub max_retained: usize,
    pub egress_max_bytes: u64,
    pub egress_max_secs: u64,
    pub egress_max_connections: u32,
}

impl SandboxConfig {
    pub fn new(exe: PathBuf) -> Self {
        SandboxConfig {
            limits: LimitPolicy::default(),
            exe,
            max_running: 64,
            max_retained: 1000,
            egress_max_bytes: 16 << 20,
            egress_max_secs: 60,
            egress_max_connections: 64,
        }
    }
}

/// `/health`'s `sandbox` object.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Health {
    pub backend: &'static str,
    pub healthy: bool,
    /// Why not, when unhealthy.
    pub reason: Option<String>,
    /// The cgroup backend in use (`v1` or `v2`), when healthy.
    pub cgroup: Option<&'static str>,
}

/// The backend's name in `/health`.
pub const BACKEND: &str = "linux-namespaces";
/// Host uids handed to sandboxes: `BASE + n`, owning nothing on the host.
pub(crate) const HOST_UID_BASE: u32 = 1_000_000;
pub(crate) const HOST_UID_SPAN: u32 = 1_000_000;

pub struct SandboxService {
    config: SandboxConfig,
    /// The start-up probe's answer, set once it ran (see [`Self::start`]).
    probed: tokio::sync::OnceCell<Probed>,
    store: Arc<dyn Store>,
    sessions: Mutex<Sessions>,
    next_uid: AtomicU32,
}

impl std::fmt::Debug for SandboxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxService")
            .field("health", &self.probed.get().map(|p| &p.health))
            .finish_non_exhaustive()
    }
}

/// What the start-up probe found: a launcher that works, or why none does.
struct Probed {
    launcher: Option<Launcher>,
    health: Health,
}

#[derive(Default)]
struct Sessions {
    by_id: BTreeMap<String, Arc<SandboxSession>>,
    /// Ids in creation order, for dropping the oldest.
    order: VecDeque<String>,
}

impl SandboxService {
    /// Sets up cgroups and runs a probe sandbox, whose answer is `/health`'s.
    /// The probe runs in the background, so it does not delay the daemon's
    /// readiness (a real sandbox takes tens of ms); whatever needs its
    /// answer first (a creation, `/health`) waits for it.
    /// Ends records orphaned by a stopped daemon, now and every
    /// [`SWEEP_EVERY`] (other nodes' sandboxes end past their deadline).
    /// Call within the runtime: the probe and the sweep are tasks on it.
    pub fn start(config: SandboxConfig, store: Arc<dyn Store>) -> Arc<Self> {
        tokio::spawn(sweep_orphans(store.clone()));
        let seed = std::process::id().wrapping_mul(7919) % HOST_UID_SPAN;
        let service = Arc::new(SandboxService {
            config,
            probed: tokio::sync::OnceCell::new(),
            store,
            sessions: Mutex::default(),
            next_uid: AtomicU32::new(seed),
        });
        let early = service.clone();
        tokio::spawn(async move {
            early.probed().await;
        });
        service
    }

    /// The probe's answer, running it if nobody has yet.
    async fn probed(&self) -> &Probed {
        self.probed
            .get_or_init(|| async {
                match probe(&self.config).await {
                    Ok(l) => {
                        let cgroup = Some(l.cgroups.version());
                        Probed {
                            launcher: Some(l),
                            health: Health {
                                backend: BACKEND,
                                healthy: true,
                                reason: None,
                                cgroup,
                            },
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(%reason, "sandboxing is unavailable; sandbox creation will fail");
                        Probed {
                            launcher: None,
                            health: Health {
                                backend: BACKEND,
                                healthy: false,
                                reason: Some(reason),
                                cgroup: None,
                            },
                        }
                    }
                }
            })
            .await
    }

    /// Whether sandboxes work here (waits for the start-up probe).
    pub async fn health(&self) -> Health {
        self.probed().await.health.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and starts one sandbox; returns at once with the session.
    pub async fn create(&self, req: CreateRequest) -> Result<Arc<SandboxSession>, CreateError> {
        check_code(&req.code)?;
        let limits = self.config.limits.resolve(&req.limits)?;
        check_labels(&req.labels)?;
        let probed = self.probed().await;
        let launcher = probed.launcher.clone().ok_or_else(|| {
            CreateError::Unavailable(probed.health.reason.clone().unwrap_or_default())
        })?;
        let (policy, egress_view) = self.egress_policy(&req.egress, &req.ceiling)?;
        let running = self
            .lock()
            .by_id
            .values()
            .filter(|s| !s.phase().is_finished())
            .count();
        if running >= self.config.max_running {
            return Err(CreateError::Busy(running));
        }
        let info = SessionInfo {
            id: new_id("sbx"),
            tenant: req.origin.tenant.clone(),
            language: req.language,
            limits: limits.clone(),
            egress: egress_view,
            labels: req.labels,
            created_at: now_millis(),
        };
        let session = Arc::new(SandboxSession::new(info));
        // Durable before anything runs: a daemon that dies from here on
        // leaves a record the next start ends as orphaned.
        let details = json!({"language": req.language.as_str(), "limits": limits, "egress": session.info.egress});
        session.audit_frame(
            AuditAction::SessionCreated.as_str(),
            AuditOutcome::Success.as_str(),
            &details,
        );
        let created = audit_record(
            &req.origin,
            &session.info.id,
            AuditAction::SessionCreated,
            AuditOutcome::Success,
            details,
        );
        // In the map first, so it counts against `max_running` at once.
        self.insert(session.clone());
        if let Err(e) = self
            .store
            .put_sandbox(session.record(), vec![created])
            .await
        {
            self.lock().by_id.remove(&session.info.id);
            return Err(e.into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let auditor = Auditor {
            origin: req.origin,
            session: session.clone(),
            tx,
        };
        // One writer per session keeps its record and entries in order; all
        // are durable before the stream says `end`.
        let writer = tokio::spawn(write_session(self.store.clone(), session.clone(), rx));
        let spec = LaunchSpec {
            name: session.info.id.clone(),
            language: req.language,
            code: req.code,
            limits,
            host_uid: HOST_UID_BASE + self.next_uid.fetch_add(1, Ordering::Relaxed) % HOST_UID_SPAN,
            egress: policy,
        };
        let observer = Arc::new(auditor);
        tokio::spawn(run(launcher, spec, observer, writer));
        Ok(session)
    }

    fn egress_policy(
        &self,
        req: &EgressRequest,
        ceiling: &EgressCeiling,
    ) -> Result<(Option<Arc<EgressPolicy>>, EgressView), SpecError> {
        if req.mode == EgressMode::DenyAll {
            if !req.allow.is_empty() {
                return Err(SpecError::Egress(
                    "mode \"deny_all\" cannot have an allow list".into(),
                ));
            }
            let view = EgressView {
                mode: "deny_all".into(),
                allow: vec![],
                dropped: vec![],
            };
            return Ok((None, view));
        }
        let mut asked = Vec::new();
        for (i, entry) in req.allow.iter().enumerate() {
            let rule = HostRule::parse(entry).ok_or_else(|| {
                SpecError::Egress(format!("allow[{i}] = {entry:?} is not a host name or *.domain (IP addresses are refused)"))
            })?;
            asked.push(rule);
        }
        if asked.is_empty() {
            return Err(SpecError::Egress(
                "mode \"allow_list\" needs at least one host".into(),
            ));
        }
        let (kept, dropped) = intersect(&asked, &ceiling.hosts);
        let view = EgressView {
            mode: "allow_list".into(),
            allow: kept.iter().map(HostRule::to_entry).collect(),
            dropped: dropped.iter().map(HostRule::to_entry).collect(),
        };
        let ports = if ceiling.ports.is_empty() {
            DEFAULT_PORTS.to_vec()
        } else {
            ceiling.ports.clone()
        };
        let policy = EgressPolicy {
            hosts: kept,
            ports,
            check_addr: ceiling.check_addr.clone(),
            max_bytes_per_connection: self.config.egress_max_bytes,
            max_connection_time: Duration::from_secs(self.config.egress_max_secs),
            max_connections: self.config.egress_max_connections,
        };
        Ok((Some(Arc::new(policy)), view))
    }

    fn insert(&self, session: Arc<SandboxSession>) {
        let mut s = self.lock();
        s.order.push_back(session.info.id.clone());
        s.by_id.insert(session.info.id.clone(), session);
        // Drop the oldest finished sessions beyond the cap.
        while s.order.len() > self.config.max_retained {
            let Some(pos) = s
                .order
                .iter()
                .position(|id| s.by_id.get(id).is_none_or(|x| x.phase().is_finished()))
            else {
                break;
            };
            if let Some(id) = s.order.remove(pos) {
                s.by_id.remove(&id);
            }
        }
    }

    /// The tenant's session in memory, running or recently ended (for its
    /// frames); `None` for a missing or foreign one.
    pub fn live(&self, tenant: &TenantId, id: &str) -> Option<Arc<SandboxSession>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|s| &s.info.tenant == tenant)
            .cloned()
    }

    /// The tenant's session: from memory while it runs, else from the store.
    pub async fn find(&self, tenant: &TenantId, id: &str) -> Result<Option<Found>, StoreError> {
        let live = self.live(tenant, id);
        if let Some(s) = &live
            && !s.is_stored()
        {
            return Ok(live.map(Found::Live));
        }
        match self.store.get_sandbox(tenant, id).await? {
            Some(r) => Ok(Some(Found::Stored(Box::new(r)))),
            None => Ok(live.map(Found::Live)),
        }
    }

    /// The tenant's sessions from the store, newest first; those running
    /// here shown as they are now.
    pub async fn list(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<SandboxView>, StoreError> {
        let records = self.store.list_sandboxes(tenant, page).await?;
        let mut items = Vec::with_capacity(records.items.len());
        for r in &records.items {
            let live = self.live(tenant, &r.id).filter(|s| !s.is_stored());
            items.push(match live {
                Some(s) => s.view(),
                None => view_of(r)?,
            });
        }
        Ok(Page {
            items,
            next: records.next,
        })
    }

    /// Kills a running session and waits for it to end, then marks it torn
    /// down, in memory and in the store.
    pub async fn teardown(
        &self,
        tenant: &TenantId,
        id: &str,
        origin: AuditOrigin,
    ) -> Result<TeardownOutcome, StoreError> {
        let entry = || {
            audit_record(
                &origin,
                id,
                AuditAction::SessionTornDown,
                AuditOutcome::Success,
                json!({}),
            )
        };
        if let Some(session) = self.live(tenant, id) {
            session.teardown.cancel();
            let mut rx = session.subscribe();
            while !session.frames_from(0).1 {
                if rx.changed().await.is_err() {
                    break;
                }
            }
            if session.phase() == Phase::TornDown {
                return Ok(TeardownOutcome::Done);
            }
            session.set_phase(Phase::TornDown, None);
            self.store
                .put_sandbox(session.record(), vec![entry()])
                .await?;
            return Ok(TeardownOutcome::Done);
        }
        let Some(mut record) = self.store.get_sandbox(tenant, id).await? else {
            return Ok(TeardownOutcome::NotFound);
        };
        if record.phase == Phase::TornDown.as_str() {
            return Ok(TeardownOutcome::Done);
        }
        if UNFINISHED_PHASES.contains(&record.phase.as_str()) {
            return Ok(TeardownOutcome::RunningElsewhere);
        }
        record.phase = Phase::TornDown.as_str().to_owned();
        record.torn_down_at = Some(now_millis());
        self.store.put_sandbox(record, vec![entry()]).await?;
        Ok(TeardownOutcome::Done)
    }
}

/// How often records orphaned on other nodes are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Ends records whose deadline passed with no process behind them (a
/// daemon that died, here or on another node sharing the store).
async fn sweep_orphans(store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match store.end_orphaned_sandboxes(now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                sandboxes = n,
                "ended sandboxes orphaned by a stopped daemon"
            ),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "could not end orphaned sandboxes"),
        }
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > 32 {
        return Err(SpecError::Labels("at most 32 labels".into()));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 64 || v.len() > 256 {
            return Err(SpecError::Labels(format!(
                "label {k:?}: keys 1–64 bytes, values up to 256"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Where the probe cannot run a sandbox, health says so and creation is
    /// refused with the reason: nothing runs unconfined.
    #[tokio::test]
    async fn an_unusable_backend_refuses_creation() {
        let config = SandboxConfig::new(PathBuf::from("/nonexistent/agentd"));
        let dir = tempfile::tempdir().unwrap();
        let store = agentd_store::sqlite::SqliteStore::open(&agentd_store::sqlite::SqliteConfig {
            data_dir: dir.path().to_owned(),
            fsync: false,
        })
        .await
        .unwrap();
        let service = SandboxService::start(config, Arc::new(store));
        let health = service.health().await;
        assert!(!health.healthy);
        assert!(health.reason.as_deref().is_some_and(|r| !r.is_empty()));
        let err = service
            .create(CreateRequest {
                code: "print(1)".into(),
                language: Language::Python,
                limits: LimitsRequest::default(),
                egress: EgressRequest::default(),
                labels: BTreeMap::new(),
                origin: AuditOrigin {
                    tenant: TenantId::default_tenant(),
                    actor: "test".into(),
                    actor_id: None,
                    client_ip: None,
                    request_id: None,
                },
                ceiling: EgressCeiling {
                    hosts: vec![],
                    ports: vec![],
                    check_addr: Arc::new(|_| Ok(())),
                },
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CreateError::Unavailable(_)), "{err}");
        let page = PageRequest {
            limit: 10,
            after: None,
        };
        let listed = service.list(&TenantId::default_tenant(), page).await;
        assert!(listed.unwrap().items.is_empty());
    }
}
