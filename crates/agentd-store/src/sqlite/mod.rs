//! The embedded store: `<data-dir>/agentd.db` in WAL mode.
//!
//! One process owns a data dir (an exclusive lock on `agentd.lock`), so at open
//! every lease in the database belongs to a dead process and is expired at
//! once: runs in flight at a crash are recovered as soon as a worker polls.
//! All writes go through one group-committing [`writer::Writer`]; the hot
//! reads run inline on read-only connections ([`reads`]), the rest on a small
//! sqlx pool; WAL lets both run beside the writer.

mod batch;
mod checkpoint;
pub(crate) mod keys;
mod ops;
mod reads;
pub(crate) mod rows;
mod sandboxes;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use agentd_core::time::Millis;
use agentd_core::{AuditRecord, Event, Message, NewEvent, Run, Session, TenantId};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite, SqlitePool};

use self::rows::{RUN_COLUMNS, RunRow, SessionRow};
use self::writer::Writer;
use crate::{
    ApiKey, AuditFilter, ClaimRequest, ClaimedRun, CreateRunOutcome, EventHub, Heartbeat,
    KeyChange, KeyRotation, Lease, NewRun, NewSession, Page, PageRequest, RunFilter, RunUpdate,
    SandboxRecord, SignalOutcome, SignalRun, Store, StoreError, StoreMetrics, StoreMetricsSnapshot,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub data_dir: PathBuf,
    /// `synchronous=FULL`: survive power loss, not only a process crash.
    pub fsync: bool,
}

pub struct SqliteStore {
    reads: SqlitePool,
    /// The hot reads, inline on the caller's task.
    inline: reads::InlineReads,
    writer: Writer,
    hub: EventHub,
    metrics: StoreMetrics,
    /// Held for the store's life: one process per data dir.
    _lock: File,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("data dir {0} is in use by another agentd process")]
    Locked(PathBuf),
    #[error("cannot open database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot open the database for writing: {0}")]
    Writer(#[from] rusqlite::Error),
    #[error("cannot migrate database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl SqliteStore {
    pub async fn open(config: &SqliteConfig) -> Result<SqliteStore, OpenError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| OpenError::DataDir(dir.clone(), e))?;
        let lock = File::create(dir.join("agentd.lock"))
            .map_err(|e| OpenError::DataDir(dir.clone(), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::Locked(dir.clone())),
            Err(std::fs::TryLockError::Error(e)) => return Err(OpenError::DataDir(dir.clone(), e)),
        }

        let path = dir.join("agentd.db");
        let options = connect_options(&path, config.fsync)?;
        let mut conn = options.connect().await?;
        MIGRATOR.run(&mut conn).await?;
        sqlx::Connection::close(conn).await?;

        let write = writer_connection(&path, config.fsync)?;
        // Whoever held these leases died with the previous process.
        write.execute(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = 0 WHERE status = 'running'",
            [],
        )?;
        // So did every sandbox it ran (killed with it): end their records.
        let orphans = sandboxes::end_orphans_on(&write, agentd_core::time::now_millis(), None)?;
        if orphans > 0 {
            tracing::warn!(
                orphans,
                "sandboxes left running by the previous process were ended"
            );
        }

        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.read_only(true))
            .await?;
        let hub = EventHub::new();
        let metrics = StoreMetrics::default();
        let checkpoint = checkpoint::spawn(&path)?;
        Ok(SqliteStore {
            reads,
            inline: reads::InlineReads::new(path),
            writer: Writer::spawn(write, hub.clone(), metrics.clone(), checkpoint),
            metrics,
            hub,
            _lock: lock,
        })
    }
}

/// SQLite's page cache of the writer's and the pooled readers' connections,
/// as the `cache_size` pragma (negative: KiB, here 4 MiB; the inline reads
/// keep SQLite's default 2 MiB). The writer's hot pages are the tails of the tables and
/// of their indexes, a few MiB even with a thousand runs streaming; a larger
/// cache only keeps pages no batch touches again (measured at 500 streaming
/// runs: 16 MiB made no difference to CPU and held 12 MB more of the peak
/// RSS). A miss is a read from the OS's page cache, not from the disk.
const CACHE_SIZE: i64 = -4000;

fn connect_options(path: &Path, fsync: bool) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if fsync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(false)
        .pragma("cache_size", CACHE_SIZE.to_string())
        .disable_statement_logging())
}

/// The writer's own connection. Plain rusqlite, used inline by the writer's
/// task: the write path is the store's hot loop, and sqlx's SQLite driver
/// would add a worker thread and a channel round trip to every statement
/// (measured: a third of the daemon's CPU under load). Same settings as
/// [`connect_options`] gives sqlx's connections.
fn writer_connection(path: &Path, fsync: bool) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", CACHE_SIZE)?;
    // Checkpoints are `checkpoint.rs`'s, off the commit path; this one
    // (~64 MB of WAL) is only the backstop should that task fall behind.
    conn.pragma_update(None, "wal_autocheckpoint", 16_000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// `created_at DESC, id DESC`, continuing after `cursor`.
fn push_page(qb: &mut QueryBuilder<'_, Sqlite>, page: &PageRequest) {
    if let Some(after) = &page.after {
        qb.push(" AND (created_at < ")
            .push_bind(after.created_at)
            .push(" OR (created_at = ")
            .push_bind(after.created_at)
            .push(" AND id < ")
            .push_bind(after.id.clone())
            .push("))");
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(page.limit as i64 + 1);
}

fn into_page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> crate::Cursor) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more { items.last().map(key) } else { None };
    Page { items, next }
}

#[async_trait]
impl Store for SqliteStore {
    fn hub(&self) -> &EventHub {
        &self.hub
    }

    fn metrics(&self) -> StoreMetricsSnapshot {
        self.metrics.snapshot()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    async fn create_session(&self, new: NewSession) -> Result<Session, StoreError> {
        self.writer.submit(ops::create_session, new).await?
    }

    async fn get_session(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Session>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT tenant_id, id, agent, metadata, created_at, updated_at FROM sessions \
             WHERE tenant_id = ? AND id = ?",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.reads)
        .await?;
        row.map(Session::try_from).transpose()
    }

    async fn list_sessions(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<Session>, StoreError> {
        let mut qb = QueryBuilder::new(
            "SELECT tenant_id, id, agent, metadata, created_at, updated_at FROM sessions WHERE tenant_id = ",
        );
        qb.push_bind(tenant.as_str());
        push_page(&mut qb, &page);
        let rows: Vec<SessionRow> = qb.build_query_as().fetch_all(&self.reads).await?;
        let items = rows
            .into_iter()
            .map(Session::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(items, page.limit, |s| crate::Cursor {
            created_at: s.created_at,
            id: s.id.clone(),
        }))
    }

    async fn delete_session(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        self.writer
            .submit(ops::delete_session, (tenant.clone(), id.to_owned()))
            .await
    }

    async fn session_messages(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<Message>, StoreError> {
        self.inline.session_messages(tenant, id)
    }

    async fn create_run(&self, new: NewRun) -> Result<CreateRunOutcome, StoreError> {
        self.writer.submit(ops::create_run, new).await?
    }

    async fn get_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError> {
        self.inline.get_run(tenant, id)
    }

    async fn list_runs(
        &self,
        tenant: &TenantId,
        filter: RunFilter,
        page: PageRequest,
    ) -> Result<Page<Run>, StoreError> {
        let mut qb =
            QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = "));
        qb.push_bind(tenant.as_str());
        if let Some(status) = filter.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(session) = filter.session_id {
            qb.push(" AND session_id = ").push_bind(session);
        }
        if let Some(agent) = filter.agent {
            qb.push(" AND agent = ").push_bind(agent);
        }
        if let Some(after) = filter.created_after {
            qb.push(" AND created_at > ").push_bind(after);
        }
        push_page(&mut qb, &page);
        let rows: Vec<RunRow> = qb.build_query_as().fetch_all(&self.reads).await?;
        let items = rows
            .into_iter()
            .map(Run::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(into_page(items, page.limit, |r| crate::Cursor {
            created_at: r.created_at,
            id: r.id.clone(),
        }))
    }

    async fn events_after(
        &self,
        tenant: &TenantId,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.inline.events_after(tenant, run_id, after_seq, limit)
    }

    async fn cancel_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError> {
        self.writer
            .submit(ops::cancel_run, (tenant.clone(), id.to_owned()))
            .await
    }

    async fn signal_run(&self, signal: SignalRun) -> Result<SignalOutcome, StoreError> {
        self.writer.submit(ops::signal_run, signal).await?
    }

    async fn claim_runs(&self, claim: ClaimRequest) -> Result<Vec<ClaimedRun>, StoreError> {
        self.writer.submit(ops::claim_runs, claim).await
    }

    async fn append(
        &self,
        lease: &Lease,
        events: Vec<NewEvent>,
        update: Option<RunUpdate>,
    ) -> Result<i64, StoreError> {
        let args = (lease.clone(), events, update);
        if args.2.is_none() {
            self.writer.submit_deferrable(ops::append, args).await?
        } else {
            self.writer.submit(ops::append, args).await?
        }
    }

    async fn heartbeat(&self, owner: &str, lease_ms: i64) -> Result<Heartbeat, StoreError> {
        self.writer
            .submit(ops::heartbeat, (owner.to_owned(), lease_ms))
            .await
    }

    async fn release_leases(&self, owner: &str) -> Result<(), StoreError> {
        self.writer
            .submit(ops::release_leases, owner.to_owned())
            .await
    }

    async fn release_run(&self, owner: &str, run_id: &str, epoch: i64) -> Result<(), StoreError> {
        self.writer
            .submit(
                ops::release_run,
                (owner.to_owned(), run_id.to_owned(), epoch),
            )
            .await
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<(), StoreError> {
        self.writer.submit(keys::create_key, key).await
    }

    async fn find_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        keys::find_key(&self.reads, id).await
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, StoreError> {
        keys::list_keys(&self.reads, tenant, page).await
    }

    async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: &str,
        now: i64,
    ) -> Result<KeyChange, StoreError> {
        self.writer
            .submit(keys::revoke_key, (tenant.clone(), id.to_owned(), now))
            .await
    }

    async fn rotate_api_key(&self, rotation: KeyRotation) -> Result<KeyChange, StoreError> {
        self.writer.submit(keys::rotate_key, rotation).await
    }

    async fn record_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.writer.submit(keys::record_audit, records).await
    }

    async fn list_audit(
        &self,
        tenant: &TenantId,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, StoreError> {
        keys::list_audit(&self.reads, tenant, filter, page).await
    }

    async fn put_sandbox(
        &self,
        record: SandboxRecord,
        audit: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        self.writer
            .submit(sandboxes::put_sandbox, (record, audit))
            .await
    }

    async fn get_sandbox(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        sandboxes::get_sandbox(&self.reads, tenant, id).await
    }

    async fn list_sandboxes(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<SandboxRecord>, StoreError> {
        sandboxes::list_sandboxes(&self.reads, tenant, page).await
    }

    async fn end_orphaned_sandboxes(&self, now: Millis) -> Result<u64, StoreError> {
        self.writer
            .submit(sandboxes::end_orphans, (now, Some(now)))
            .await
    }
}
