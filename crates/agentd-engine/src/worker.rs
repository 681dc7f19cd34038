//! The worker pool of one process: a dispatcher that claims runs when told
//! there is work (or on a poll, which also finds lapsed leases), one task per
//! claimed run, and a heartbeat that extends this process's leases, delivers
//! control rows (cancel) and stops runs whose lease was taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentd_store::{ClaimOnCreate, ClaimRequest, ClaimedRun, ControlKind, Store};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent_loop;
use crate::appender::Appender;
use crate::models::local::LocalModels;
use crate::scrub::Scrubber;
use crate::tools::ToolRegistry;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Unique per process: names the lease holder.
    pub owner: String,
    /// Runs this process drives at once; more wait queued.
    pub max_concurrent_runs: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease_ms: i64,
    /// How often leases are extended and controls polled.
    pub heartbeat_ms: u64,
    /// How often to look for work without a wake-up (lapsed leases, other nodes).
    pub poll_ms: u64,
    /// Secrets scrubbed from every event before it is written.
    pub scrubber: Arc<Scrubber>,
    /// The operator's tools; each run gets its agent's set.
    pub tools: Arc<ToolRegistry>,
    /// The in-process models of `provider = "local"`, loaded once and shared.
    pub local_models: LocalModels,
}

impl EngineConfig {
    pub fn new(owner: String) -> Self {
        EngineConfig {
            owner,
            max_concurrent_runs: 4096,
            lease_ms: 30_000,
            heartbeat_ms: 10_000,
            poll_ms: 1_000,
            scrubber: Arc::new(Scrubber::none()),
            tools: Arc::new(ToolRegistry::default()),
            local_models: LocalModels::default(),
        }
    }
}

/// A cheap-to-clone handle on the process's workers.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    config: EngineConfig,
    owner: Arc<str>,
    /// Runs this process drives, by id.
    local: Mutex<HashMap<String, RunHandle>>,
    permits: Arc<Semaphore>,
    /// Cancelled at shutdown: no new claims.
    stop_claiming: CancellationToken,
    /// Run the heartbeat now (a control row arrived).
    beat_now: Notify,
    /// Runs this process claimed, and how many of those were recoveries.
    claimed_total: AtomicU64,
    recovered_total: AtomicU64,
    /// Counts registrations of local runs, so the heartbeat judges only runs
    /// claimed before it asked the store (a later claim is not in its answer).
    registrations: AtomicU64,
    runs: TaskTracker,
    background: TaskTracker,
}

/// Room for one more run in this process, held while a run is created so
/// the store can claim it in the same commit ([`ClaimOnCreate`]). Dropped
/// unused, the room is free again.
pub struct RunSlot {
    engine: Engine,
    permit: OwnedSemaphorePermit,
}

impl RunSlot {
    /// What to ask of `create_run`.
    pub fn claim(&self) -> ClaimOnCreate {
        let inner = &self.engine.inner;
        ClaimOnCreate {
            owner: inner.owner.clone(),
            lease_ms: inner.config.lease_ms,
        }
    }

    /// Drives the run the store claimed with [`RunSlot::claim`].
    pub fn start(self, claimed: ClaimedRun) {
        self.engine.spawn_run(claimed, self.permit);
    }
}

/// How the rest of the engine reaches a run's task.
#[derive(Clone)]
pub(crate) struct RunHandle {
    pub epoch: i64,
    /// Value of `Inner::registrations` when this run was registered.
    pub registered: u64,
    /// A client asked to cancel: finish as `cancelled`.
    pub cancel: CancellationToken,
    /// Stop at once and write nothing more (lease lost, process stopping).
    pub abandon: CancellationToken,
}

impl Engine {
    /// Starts the dispatcher and heartbeat on the current runtime.
    pub fn start(store: Arc<dyn Store>, config: EngineConfig) -> Engine {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .expect("an HTTP client with static settings builds");
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                http,
                owner: config.owner.clone().into(),
                permits: Arc::new(Semaphore::new(config.max_concurrent_runs)),
                config,
                local: Mutex::new(HashMap::new()),
                stop_claiming: CancellationToken::new(),
                beat_now: Notify::new(),
                registrations: AtomicU64::new(0),
                claimed_total: AtomicU64::new(0),
                recovered_total: AtomicU64::new(0),
                runs: TaskTracker::new(),
                background: TaskTracker::new(),
            }),
        };
        engine.inner.background.spawn(engine.clone().dispatch());
        engine.inner.background.spawn(engine.clone().heartbeat());
        engine
            .inner
            .background
            .spawn(engine.clone().listen_controls());
        engine
    }

    /// Room for a run about to be created, unless this process is full or
    /// stopping: then the run waits queued for a dispatcher, here or on
    /// another node.
    pub fn reserve(&self) -> Option<RunSlot> {
        if self.inner.stop_claiming.is_cancelled() {
            return None;
        }
        let permit = self.inner.permits.clone().try_acquire_owned().ok()?;
        Some(RunSlot {
            engine: self.clone(),
            permit,
        })
    }

    /// The in-process models (for `/health/ready`).
    pub fn local_models(&self) -> &LocalModels {
        &self.inner.config.local_models
    }

    /// Runs driven by this process right now.
    pub fn active_runs(&self) -> usize {
        self.inner.local.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Runs claimed since start, and how many of them were recovered from a
    /// lapsed lease.
    pub fn claims(&self) -> (u64, u64) {
        (
            self.inner.claimed_total.load(Ordering::Relaxed),
            self.inner.recovered_total.load(Ordering::Relaxed),
        )
    }

    /// Stops claiming, lets runs in flight finish for up to `grace`, then
    /// abandons the rest and releases their leases for another worker.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stop_claiming.cancel();
        inner.runs.close();
        if tokio::time::timeout(grace, inner.runs.wait())
            .await
            .is_err()
        {
            let handles: Vec<RunHandle> = inner
                .local
                .lock()
                .map(|l| l.values().cloned().collect())
                .unwrap_or_default();
            tracing::info!(runs = handles.len(), "grace period over; releasing leases");
            for h in handles {
                h.abandon.cancel();
            }
            inner.runs.wait().await;
        }
        if let Err(e) = inner.store.release_leases(&inner.owner).await {
            tracing::warn!(error = %e, "could not release leases");
        }
        inner.background.close();
        inner.background.wait().await;
        // No run uses them any more: stdio servers exit with the daemon.
        inner.config.tools.shutdown().await;
    }

    async fn dispatch(self) {
        let inner = &self.inner;
        let hub = inner.store.hub().clone();
        loop {
            let free = inner.permits.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = inner.stop_claiming.cancelled() => return,
                    permit = inner.permits.acquire() => drop(permit),
                }
                continue;
            }
            // The room is taken before claiming, so runs created meanwhile
            // (each reserving its own slot) cannot leave a claim without it.
            let Ok(mut room) = inner
                .permits
                .clone()
                .try_acquire_many_owned(free.min(64) as u32)
            else {
                continue;
            };
            let claim = ClaimRequest {
                owner: inner.owner.clone(),
                max: room.num_permits(),
                lease_ms: inner.config.lease_ms,
            };
            // Register interest before claiming so a wake-up during the claim is kept.
            let woken = hub.work_available();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claimed = match inner.store.claim_runs(claim).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming runs failed");
                    Vec::new()
                }
            };
            let full_batch = claimed.len() == room.num_permits();
            for run in claimed {
                let Some(permit) = room.split(1) else {
                    // A store never returns more than `max`.
                    tracing::error!(run = run.run.id, "claimed more runs than asked for");
                    break;
                };
                self.spawn_run(run, permit);
            }
            // What was not claimed is free again.
            drop(room);
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = inner.stop_claiming.cancelled() => return,
                _ = &mut woken => {}
                _ = tokio::time::sleep(Duration::from_millis(inner.config.poll_ms)) => {}
            }
        }
    }

    fn spawn_run(&self, claimed: ClaimedRun, permit: OwnedSemaphorePermit) {
        let inner = &self.inner;
        inner.claimed_total.fetch_add(1, Ordering::Relaxed);
        if claimed.recovered {
            inner.recovered_total.fetch_add(1, Ordering::Relaxed);
        }
        let handle = RunHandle {
            epoch: claimed.lease.epoch(),
            registered: inner.registrations.fetch_add(1, Ordering::SeqCst) + 1,
            cancel: CancellationToken::new(),
            abandon: CancellationToken::new(),
        };
        if claimed
            .controls
            .iter()
            .any(|c| c.kind == ControlKind::Cancel)
        {
            handle.cancel.cancel();
        }
        let run_id = claimed.run.id.clone();
        let epoch = handle.epoch;
        inner
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.clone(), handle.clone());
        let engine = self.clone();
        inner.runs.spawn(async move {
            let ctx = agent_loop::RunContext {
                store: engine.inner.store.clone(),
                http: engine.inner.http.clone(),
                handle,
                appender: Appender::start(
                    engine.inner.store.clone(),
                    claimed.lease.clone(),
                    engine.inner.config.scrubber.clone(),
                ),
                scrubber: engine.inner.config.scrubber.clone(),
                tools: engine.inner.config.tools.clone(),
                local_models: engine.inner.config.local_models.clone(),
                deadline: std::sync::OnceLock::new(),
            };
            agent_loop::drive(ctx, claimed).await;
            let mut local = engine.inner.local.lock().unwrap_or_else(|e| e.into_inner());
            // Only our own entry: if this process re-claimed the run (its
            // lease had lapsed), the entry is the new attempt's.
            if local.get(&run_id).is_some_and(|h| h.epoch == epoch) {
                local.remove(&run_id);
            }
            drop(local);
            drop(permit);
        });
    }

    async fn heartbeat(self) {
        let inner = &self.inner;
        let every = Duration::from_millis(inner.config.heartbeat_ms);
        // Leases held in the store with no local run, as of the previous beat.
        let mut orphans: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                _ = inner.background_closed() => return,
                _ = tokio::time::sleep(every) => {}
                _ = inner.beat_now.notified() => {}
            }
            let asked_after = inner.registrations.load(Ordering::SeqCst);
            let beat = match inner
                .store
                .heartbeat(&inner.owner, inner.config.lease_ms)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed");
                    continue;
                }
            };
            let local = inner
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for (run_id, handle) in &local {
                if handle.registered <= asked_after && beat.held.get(run_id) != Some(&handle.epoch)
                {
                    // Usually a run that just finished; one that really lost
                    // its lease says so when its next write is refused.
                    tracing::debug!(run = run_id, "lease no longer held; stopping");
                    handle.abandon.cancel();
                }
            }
            orphans = self.release_orphans(&beat.held, &local, orphans).await;
            for control in beat.controls {
                if let (ControlKind::Cancel, Some(h)) = (control.kind, local.get(&control.run_id)) {
                    h.cancel.cancel();
                }
            }
        }
    }

    /// Leases this process holds in the store but drives no run for (the
    /// run's task ended on a store error, e.g. while PostgreSQL was away):
    /// the heartbeat would extend them forever, so once one is seen at the
    /// same epoch on two beats in a row (not a claim racing this beat) it is
    /// released, and a dispatcher recovers the run from its log.
    async fn release_orphans(
        &self,
        held: &HashMap<String, i64>,
        local: &HashMap<String, RunHandle>,
        previous: HashMap<String, i64>,
    ) -> HashMap<String, i64> {
        let mut now = HashMap::new();
        for (run_id, epoch) in held {
            if local.contains_key(run_id) {
                continue;
            }
            if previous.get(run_id) == Some(epoch) {
                tracing::warn!(
                    run = run_id,
                    "releasing a lease no local run holds; it will be recovered"
                );
                if let Err(e) = self
                    .inner
                    .store
                    .release_run(&self.inner.owner, run_id, *epoch)
                    .await
                {
                    tracing::warn!(run = run_id, error = %e, "releasing a lease failed");
                    now.insert(run_id.clone(), *epoch);
                }
            } else {
                now.insert(run_id.clone(), *epoch);
            }
        }
        now
    }

    async fn listen_controls(self) {
        let inner = &self.inner;
        let mut rx = inner.store.hub().subscribe_controls();
        loop {
            tokio::select! {
                _ = inner.background_closed() => return,
                msg = rx.recv() => match msg {
                    Ok(run_id) => {
                        let mine = inner.local.lock().map(|l| l.contains_key(&run_id)).unwrap_or(false);
                        if mine {
                            inner.beat_now.notify_one();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => inner.beat_now.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

impl Inner {
    /// Background loops end once shutdown has drained the runs.
    async fn background_closed(&self) {
        self.stop_claiming.cancelled().await;
        self.runs.wait().await;
    }
}
