//! The PostgreSQL store (DESIGN §4): any number of `agentd serve` processes
//! on one database.
//!
//! Each node has one group-committing [`writer::Writer`] (its batch ends with
//! one `NOTIFY`), a pool of connections for reads, and a listener task
//! ([`notify::listen`]) that feeds other nodes' commits into its own
//! [`EventHub`]. Nodes coordinate only through the database: claims lock
//! with `FOR UPDATE SKIP LOCKED`, leases are fenced by epoch and owner and
//! timed on the database clock, and cancels travel as control rows. A dead
//! node's leases lapse and live nodes recover its runs; nothing is expired
//! at open, since other nodes may be running.
//!
//! `?schema=NAME` in the URL puts every table (and the notification
//! channel's name) in that schema, created if missing, so several
//! deployments or tests can share one database.

mod batch;
mod keys;
mod notify;
mod ops;
mod plain;
mod sandboxes;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use agentd_core::time::Millis;
use agentd_core::{AuditRecord, Event, Message, NewEvent, Run, Session, TenantId};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, QueryBuilder};

use self::writer::{Writer, WriterSetup};
use crate::sqlite::rows::{EventRow, MessageRow, RunRow, SessionRow};
use crate::{
    ApiKey, AuditFilter, ClaimRequest, ClaimedRun, CreateRunOutcome, EventHub, Heartbeat,
    KeyChange, KeyRotation, Lease, NewRun, NewSession, Page, PageRequest, RunFilter, RunUpdate,
    SandboxRecord, SignalOutcome, SignalRun, Store, StoreError, StoreMetrics, StoreMetricsSnapshot,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A run as selected; `last_seq` is a column here (see the migration).
pub(crate) const RUN_COLUMNS: &str = "id, tenant_id, session_id, agent, status, input, \
    user_message, metadata, source, agent_config, output, usage, reason_code, error, \
    last_seq, lease_epoch, request_id, created_at, updated_at, started_at, finished_at";

#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://…`, optionally with `schema=NAME` among its parameters.
    pub url: String,
    /// Connections per node: one for the writer, one for the listener, the
    /// rest for reads.
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered 503
    /// (while PostgreSQL is unreachable).
    pub acquire_timeout: Duration,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    writer: Writer,
    hub: EventHub,
    metrics: StoreMetrics,
    /// The schema the tables live in (`current_schema()`).
    schema: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("invalid database URL: {0}")]
    Url(String),
    #[error("cannot open database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Splits agentd's own `schema=NAME` parameter off the URL (sqlx would only
/// warn about it): `(url without it, schema)`.
fn split_schema(url: &str) -> Result<(String, Option<String>), PgOpenError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = Some(name.to_owned()),
            None => rest.push(pair),
        }
    }
    if let Some(name) = &schema {
        let valid = !name.is_empty()
            && name.len() <= 48
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(PgOpenError::Url(format!(
                "schema {name:?}: use 1 to 48 of a-z, 0-9 and _, not starting with a digit"
            )));
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema))
}

impl PgStore {
    pub async fn open(config: &PgConfig) -> Result<PgStore, PgOpenError> {
        let (url, schema) = split_schema(&config.url)?;
        let mut options = PgConnectOptions::from_str(&url)
            .map_err(|e| PgOpenError::Url(e.to_string()))?
            .application_name("agentd")
            .disable_statement_logging();
        if let Some(schema) = &schema {
            let mut conn = options.connect().await?;
            // Several nodes may race to create it: whoever loses finds it made.
            let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn)
                .await;
            if let Err(e) = created {
                let raced = matches!(&e, sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("23505" | "42P06")));
                if !raced {
                    return Err(e.into());
                }
            }
            let _ = conn.close().await;
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(3))
            .min_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (schema,): (String,) = sqlx::query_as("SELECT current_schema()::text")
            .fetch_one(&pool)
            .await?;

        let hub = EventHub::new();
        let metrics = StoreMetrics::default();
        let channel = format!("{schema}_agentd");
        let node = agentd_core::new_id("node");
        tokio::spawn(notify::listen(
            pool.clone(),
            hub.clone(),
            channel.clone(),
            node.clone(),
        ));
        let writer = Writer::spawn(WriterSetup {
            pool: pool.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            channel,
            node,
        });
        Ok(PgStore {
            pool,
            writer,
            hub,
            metrics,
            schema,
        })
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Closes every connection; the listener and writer stop.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `created_at DESC, id DESC`, continuing after `cursor`.
fn push_page(qb: &mut QueryBuilder<'_, Postgres>, page: &PageRequest) {
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
impl Store for PgStore {
    fn hub(&self) -> &EventHub {
        &self.hub
    }

    fn metrics(&self) -> StoreMetricsSnapshot {
        self.metrics.snapshot()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
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
        let rows: Vec<SessionRow> = qb.build_query_as().fetch_all(&self.pool).await?;
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
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT idx, run_id, role, content, created_at FROM messages \
             WHERE tenant_id = $1 AND session_id = $2 ORDER BY idx",
        )
        .bind(tenant.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Message::from).collect())
    }

    async fn create_run(&self, new: NewRun) -> Result<CreateRunOutcome, StoreError> {
        self.writer.submit(ops::create_run, new).await?
    }

    async fn get_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError> {
        let row: Option<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Run::try_from).transpose()
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
        let rows: Vec<RunRow> = qb.build_query_as().fetch_all(&self.pool).await?;
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
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT run_id, seq, type, payload, created_at FROM run_events \
             WHERE run_id = $1 AND tenant_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(run_id)
        .bind(tenant.as_str())
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Event::try_from).collect()
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
        match update {
            None => self.writer.submit_plain(lease.clone(), events).await,
            Some(update) => {
                self.writer
                    .submit(ops::append, (lease.clone(), events, Some(update)))
                    .await?
            }
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
        keys::find_key(&self.pool, id).await
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, StoreError> {
        keys::list_keys(&self.pool, tenant, page).await
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
        keys::list_audit(&self.pool, tenant, filter, page).await
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
        sandboxes::get_sandbox(&self.pool, tenant, id).await
    }

    async fn list_sandboxes(
        &self,
        tenant: &TenantId,
        page: PageRequest,
    ) -> Result<Page<SandboxRecord>, StoreError> {
        sandboxes::list_sandboxes(&self.pool, tenant, page).await
    }

    async fn end_orphaned_sandboxes(&self, now: Millis) -> Result<u64, StoreError> {
        self.writer
            .submit(sandboxes::end_orphans, (now, Some(now)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::split_schema;

    #[test]
    fn the_schema_parameter_is_taken_out_of_the_url() {
        let (url, schema) =
            split_schema("postgres://u@h:5432/db?sslmode=disable&schema=t_1").unwrap();
        assert_eq!(url, "postgres://u@h:5432/db?sslmode=disable");
        assert_eq!(schema.as_deref(), Some("t_1"));
        let (url, schema) = split_schema("postgres://u@h/db").unwrap();
        assert_eq!((url.as_str(), schema), ("postgres://u@h/db", None));
    }

    #[test]
    fn a_schema_that_is_not_a_plain_identifier_is_refused() {
        for bad in ["", "A", "1x", "x;drop", "x\"y", &"x".repeat(49)] {
            assert!(
                split_schema(&format!("postgres://h/db?schema={bad}")).is_err(),
                "{bad:?}"
            );
        }
    }
}
