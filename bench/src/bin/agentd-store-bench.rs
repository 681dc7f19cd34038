//! Store append throughput: how many durable event appends per second the
//! SQLite store sustains through its group-commit writer, beside plain batched
//! SQLite inserts of the same rows measured in the same run (the floor).
//!
//! `agentd-store-bench [--runs 1000] [--appends 50]`: `runs` concurrent
//! writers (one per run, each holding a lease, as workers do), each appending
//! `appends` single-event batches and awaiting each (as the agent loop does).
//! Every append is durable (committed, WAL, synchronous=NORMAL) before it
//! returns; nothing runs with `synchronous=OFF`.

use std::sync::Arc;
use std::time::Instant;

use agentd_core::event::payload::content_delta;
use agentd_core::time::now_millis;
use agentd_core::{Run, TenantId, new_id};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{ClaimRequest, NewRun, NewSession, SessionTarget, Store};
use clap::Parser;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};

#[derive(Parser)]
struct Args {
    /// Concurrent writers, one run each.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Appends per writer.
    #[arg(long, default_value_t = 50)]
    appends: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("agentd-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let bound = plain_inserts(&dir.join("bound.db"), args.runs * args.appends, Rows::Bound).await?;
    let json = plain_inserts(
        &dir.join("json.db"),
        args.runs * args.appends,
        Rows::JsonEach,
    )
    .await?;
    let floor = bound.max(json);
    let store = Arc::new(
        SqliteStore::open(&SqliteConfig {
            data_dir: dir.join("store"),
            fsync: false,
        })
        .await?,
    );
    let tenant = TenantId::default_tenant();
    for _ in 0..args.runs {
        store.create_run(new_run(&tenant)).await?;
    }
    let mut leases = Vec::new();
    while leases.len() < args.runs {
        let claimed = store
            .claim_runs(ClaimRequest {
                owner: Arc::from("bench"),
                max: 1000,
                lease_ms: 600_000,
            })
            .await?;
        anyhow::ensure!(!claimed.is_empty(), "claimed nothing");
        leases.extend(claimed.into_iter().map(|c| c.lease));
    }

    let started = Instant::now();
    let tasks: Vec<_> = leases
        .into_iter()
        .map(|lease| {
            let store = store.clone();
            let n = args.appends;
            tokio::spawn(async move {
                for i in 0..n {
                    store
                        .append(
                            &lease,
                            vec![content_delta("step_1", 1, &format!("t{i} "))],
                            None,
                        )
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (args.runs * args.appends) as f64;
    let store_rate = total / secs;
    println!("plain batched SQLite inserts, bound values: {bound:>10.0} events/s");
    println!("plain batched SQLite inserts, json_each:    {json:>10.0} events/s");
    println!("floor (the faster of the two):              {floor:>10.0} events/s");
    println!(
        "agentd store, {} concurrent writers:  {:>10.0} events/s  ({:.0}% of floor; {} appends in {:.2} s)",
        args.runs,
        store_rate,
        100.0 * store_rate / floor,
        total,
        secs
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn new_run(tenant: &TenantId) -> NewRun {
    let now = now_millis();
    let session = new_id("ses");
    NewRun {
        run: Run::queued(
            tenant.clone(),
            session.clone(),
            "bench".into(),
            "hi".into(),
            now,
        ),
        session: SessionTarget::New(NewSession {
            tenant_id: tenant.clone(),
            id: session,
            agent: "bench".into(),
            metadata: json!({}),
            created_at: now,
        }),
        idempotency: None,
        audit: None,
        claim: None,
    }
}

/// How the plain inserts pass their rows.
#[derive(Clone, Copy)]
enum Rows {
    /// 500 rows per statement, every value a bound parameter.
    Bound,
    /// 5,000 rows per statement as one JSON array unpacked by `json_each`
    /// (what the store's writer does).
    JsonEach,
}

/// The same rows through one connection, 5,000 per transaction, same journal
/// and sync settings: what SQLite does with no store around it.
async fn plain_inserts(path: &std::path::Path, n: usize, how: Rows) -> anyhow::Result<f64> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .connect()
        .await?;
    sqlx::query(
        "CREATE TABLE run_events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, tenant_id TEXT NOT NULL, \
         type TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL, \
         PRIMARY KEY (run_id, seq))",
    )
    .execute(&mut conn)
    .await?;
    let payload =
        json!({"step_id": "step_1", "attempt": 1, "kind": "content_delta", "content_delta": "t1 "})
            .to_string();
    let rows: Vec<(String, i64)> = (0..n)
        .map(|i| (format!("run_{:06}", i % 1000), (i / 1000) as i64))
        .collect();
    let started = Instant::now();
    for txn in rows.chunks(5000) {
        let mut tx = conn.begin().await?;
        match how {
            Rows::Bound => {
                for chunk in txn.chunks(500) {
                    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                        "INSERT INTO run_events (run_id, seq, tenant_id, type, payload, created_at) ",
                    );
                    qb.push_values(chunk, |mut b, (run, seq)| {
                        b.push_bind(run)
                            .push_bind(*seq)
                            .push_bind("default")
                            .push_bind("step.progress")
                            .push_bind(&payload)
                            .push_bind(0_i64);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
            }
            Rows::JsonEach => {
                let array: Vec<_> = txn
                    .iter()
                    .map(|(run, seq)| json!({"r": run, "s": seq, "t": "default", "k": "step.progress", "p": payload, "c": 0}))
                    .collect();
                sqlx::query(
                    "INSERT INTO run_events (run_id, seq, tenant_id, type, payload, created_at) \
                     SELECT value ->> 'r', value ->> 's', value ->> 't', value ->> 'k', value ->> 'p', \
                            value ->> 'c' FROM json_each(?)",
                )
                .bind(serde_json::to_string(&array)?)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
