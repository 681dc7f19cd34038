//! Commits reach the database file through the checkpoint task, without the
//! writer's own (backstop) autocheckpoint and without the store closing.

use std::time::{Duration, Instant};

use agentd_core::TenantId;
use agentd_core::event::payload::content_delta;
use agentd_store::Store;

mod common;
use common::{claim, create, open_sqlite};

#[tokio::test]
async fn the_wal_is_checkpointed_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_sqlite(dir.path()).await;
    let db = dir.path().join("agentd.db");
    let size = || std::fs::metadata(&db).unwrap().len();
    let migrated = size();

    let tenant = TenantId::default_tenant();
    create(&store, &tenant).await;
    let claimed = store.claim_runs(claim("w", 60_000)).await.unwrap();
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
        if Instant::now() > deadline {
            // What was left to copy: (busy, frames in the WAL, frames copied).
            let c = rusqlite::Connection::open(&db).unwrap();
            let left: (i64, i64, i64) = c
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            panic!(
                "the database file stayed at {} bytes (migrated: {migrated}); \
                 a checkpoint now finds {left:?}",
                size()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
