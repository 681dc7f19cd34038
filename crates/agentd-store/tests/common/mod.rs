//! The store under test: SQLite in a temp dir, or, with
//! `AGENTD_TEST_STORE=postgres`, PostgreSQL in a schema of its own (so tests
//! sharing the server stay parallel), dropped afterwards.

#![allow(dead_code)]

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentd_core::time::now_millis;
use agentd_core::{Run, TenantId, new_id};
use agentd_store::postgres::{PgConfig, PgStore};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{ClaimRequest, CreateRunOutcome, NewRun, NewSession, SessionTarget, Store};
use serde_json::json;

pub fn on_postgres() -> bool {
    std::env::var("AGENTD_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// `AGENTD_TEST_DATABASE_URL`, else the local server `.ci/run` keeps up.
pub fn postgres_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test (or earlier run) uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "s_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops its schema when the test ends.
pub struct SchemaGuard(pub String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-q", "-X", "-d", &postgres_url(), "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
            .output();
    }
}

/// A PostgreSQL node on `schema` (several on one schema are several nodes).
pub async fn open_pg(schema: &str) -> PgStore {
    PgStore::open(&PgConfig::new(format!(
        "{}?schema={schema}",
        postgres_url()
    )))
    .await
    .expect("PostgreSQL store opens")
}

pub struct TestStore {
    store: Box<dyn Store>,
    _dir: tempfile::TempDir,
    _schema: Option<SchemaGuard>,
}

impl Deref for TestStore {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

/// The SQLite store on `dir` (its data dir), without fsync.
pub async fn open_sqlite(dir: &Path) -> SqliteStore {
    SqliteStore::open(&SqliteConfig {
        data_dir: dir.to_path_buf(),
        fsync: false,
    })
    .await
    .expect("store opens")
}

pub async fn open() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    if on_postgres() {
        let schema = fresh_schema();
        let store = open_pg(&schema).await;
        return TestStore {
            store: Box::new(store),
            _dir: dir,
            _schema: Some(SchemaGuard(schema)),
        };
    }
    let store = open_sqlite(dir.path()).await;
    TestStore {
        store: Box::new(store),
        _dir: dir,
        _schema: None,
    }
}

/// A queued run of agent `a` on a new session of `tenant`, and that session.
pub fn fresh_run(tenant: &TenantId) -> (Run, SessionTarget) {
    let run = Run::queued(
        tenant.clone(),
        new_id("ses"),
        "a".into(),
        "hi".into(),
        now_millis(),
    );
    let session = SessionTarget::New(NewSession {
        tenant_id: tenant.clone(),
        id: run.session_id.clone(),
        agent: "a".into(),
        metadata: json!({}),
        created_at: run.created_at,
    });
    (run, session)
}

/// A [`fresh_run`], created through the store.
pub async fn create(store: &dyn Store, tenant: &TenantId) -> Run {
    let (run, session) = fresh_run(tenant);
    let new = NewRun {
        run,
        session,
        idempotency: None,
        audit: None,
        claim: None,
    };
    match store.create_run(new).await.unwrap() {
        CreateRunOutcome::Created { run, .. } => *run,
        other => panic!("{other:?}"),
    }
}

/// A claim of up to ten runs by `owner`, for `lease_ms`.
pub fn claim(owner: &str, lease_ms: i64) -> ClaimRequest {
    ClaimRequest {
        owner: Arc::from(owner),
        max: 10,
        lease_ms,
    }
}
