//! A SQLite database written before migration 0005 (events indexed by the
//! run's text id) opens with its events intact, and its runs go on from
//! where their logs end.

use std::path::Path;

use agentd_core::TenantId;
use agentd_core::event::payload::content_delta;
use agentd_store::Store;

mod common;
use common::{claim, create, open_sqlite};

/// Puts the database back into its shape before 0005: `run_events` keyed
/// by `(run_id, seq)` as 0001 made it, no `run_key` on runs, 0005 not applied.
fn undo_0005(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "BEGIN;
         CREATE TABLE run_events_old (
             run_id TEXT NOT NULL, seq INTEGER NOT NULL, tenant_id TEXT NOT NULL,
             type TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL,
             PRIMARY KEY (run_id, seq));
         INSERT INTO run_events_old SELECT run_id, seq, tenant_id, type, payload, created_at
             FROM run_events ORDER BY rowid;
         DROP TABLE run_events;
         ALTER TABLE run_events_old RENAME TO run_events;
         DROP INDEX runs_by_key;
         ALTER TABLE runs DROP COLUMN run_key;
         DELETE FROM _sqlx_migrations WHERE version = 5;
         COMMIT;",
    )
    .unwrap();
}

#[tokio::test]
async fn events_written_before_the_run_key_index_survive_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::default_tenant();

    // Two runs with interleaved deltas, one of them left running.
    let store = open_sqlite(dir.path()).await;
    let first = create(&store, &tenant).await;
    let second = create(&store, &tenant).await;
    let claimed = store.claim_runs(claim("w", 60_000)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for i in 0..3 {
        for c in &claimed {
            let text = format!("{} {i}", c.run.id);
            store
                .append(&c.lease, vec![content_delta("s", 1, &text)], None)
                .await
                .unwrap();
        }
    }
    let before_first = store
        .events_after(&tenant, &first.id, 0, 100)
        .await
        .unwrap();
    let before_second = store
        .events_after(&tenant, &second.id, 0, 100)
        .await
        .unwrap();
    drop(store);
    undo_0005(&dir.path().join("agentd.db"));

    // Reopened, 0005 runs again over the old-shaped data.
    let store = open_sqlite(dir.path()).await;
    for (run, before) in [(&first, &before_first), (&second, &before_second)] {
        let after = store.events_after(&tenant, &run.id, 0, 100).await.unwrap();
        let seen = |events: &[agentd_core::Event]| -> Vec<(i64, String)> {
            events
                .iter()
                .map(|e| (e.seq, e.json().to_string()))
                .collect()
        };
        assert_eq!(seen(&after), seen(before), "{}", run.id);
        let stored = store.get_run(&tenant, &run.id).await.unwrap().unwrap();
        assert_eq!(stored.last_seq, before.len() as i64);
    }

    // The runs go on from where their logs end (the old leases died with
    // the process), and a new run gets a key of its own.
    let third = create(&store, &tenant).await;
    let claimed = store.claim_runs(claim("w2", 60_000)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    for c in &claimed {
        store
            .append(&c.lease, vec![content_delta("s", 2, "after")], None)
            .await
            .unwrap();
    }
    for run in [&first, &second, &third] {
        let events = store.events_after(&tenant, &run.id, 0, 100).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
        assert!(events.iter().all(|e| e.run_id == run.id));
        assert_eq!(events.last().unwrap().value()["content_delta"], "after");
    }
}
