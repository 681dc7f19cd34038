//! Commits reach the database file through the checkpoint task, without the
//! writer's own (backstop) autocheckpoint and without the store closing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_core::event::payload::content_delta;
use agentd_core::time::now_millis;
use agentd_core::{Run, TenantId, new_id};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{ClaimRequest, CreateRunOutcome, NewRun, NewSession, SessionTarget, Store};
use serde_json::json;

#[tokio::test]
async fn the_wal_is_checkpointed_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig {
        data_dir: dir.path().to_path_buf(),
        fsync: false,
    })
    .await
    .unwrap();
    let db = dir.path().join("agentd.db");
    let size = || std::fs::metadata(&db).unwrap().len();
    let migrated = size();

    let tenant = TenantId::default_tenant();
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
    let created = store
        .create_run(NewRun {
            run,
            session,
            idempotency: None,
            audit: None,
            claim: None,
        })
        .await
        .unwrap();
    assert!(matches!(created, CreateRunOutcome::Created { .. }));
    let claimed = store
        .claim_runs(ClaimRequest {
            owner: Arc::from("w"),
            max: 1,
            lease_ms: 60_000,
        })
        .await
        .unwrap();
    // ~100 KB of deltas: far below the backstop's ~64 MB of WAL.
    let text = "x".repeat(200);
    for _ in 0..500 {
        store
            .append(&claimed[0].lease, vec![content_delta("s", 1, &text)], None)
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while size() < migrated + 100_000 {
        assert!(
            Instant::now() < deadline,
            "the database file stayed at {} bytes (migrated: {migrated})",
            size()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
