//! PostgreSQL against SQLite, and 1 → 3 nodes: how many runs per second the
//! store creates and how many events per second it appends, measured in one
//! run on the same machine with the same load.
//!
//! `agentd-pg-bench [--url postgres://root@127.0.0.1:5432/test] [--runs 2000]
//! [--writers 100] [--appends 20]`:
//! - **create**: `writers` concurrent clients create `runs` runs (each with
//!   a new session, as `POST /v1/runs` does), spread round-robin over the
//!   nodes;
//! - **append**: every run is claimed (by the node it was spread to) and
//!   appended `appends` single-event batches by its own task, each awaited
//!   (as the agent loop does): `runs × appends` durable events.
//!
//! A "node" here is one store instance with its own group-commit writer,
//! connection pool and NOTIFY listener, as one `agentd serve` process has;
//! the three nodes share one schema (a fresh one per configuration, dropped
//! afterwards). SQLite is the baseline (one node by construction).

use std::sync::Arc;
use std::time::Instant;

use agentd_core::event::payload::content_delta;
use agentd_core::time::now_millis;
use agentd_core::{Run, TenantId, new_id};
use agentd_store::postgres::{PgConfig, PgStore};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};
use agentd_store::{ClaimRequest, Lease, NewRun, NewSession, SessionTarget, Store};
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use sqlx::{Connection, PgConnection};

#[derive(Parser)]
struct Args {
    /// The PostgreSQL server (a fresh schema is made per configuration).
    #[arg(long, default_value = "postgres://root@127.0.0.1:5432/test")]
    url: String,
    /// Runs created (and then appended to) per configuration.
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    /// Concurrent clients creating runs.
    #[arg(long, default_value_t = 100)]
    writers: usize,
    /// Appends per run.
    #[arg(long, default_value_t = 20)]
    appends: usize,
}

/// One configuration's figures.
struct Figures {
    name: String,
    runs_per_sec: f64,
    events_per_sec: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("agentd-pg-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&SqliteConfig {
            data_dir: dir.join("sqlite"),
            fsync: false,
        })
        .await?,
    );
    let mut results = vec![measure("SQLite, 1 node", vec![sqlite], &args).await?];
    for nodes in [1, 3] {
        let schema = format!("bench_{}_{nodes}", std::process::id());
        let url = format!("{}?schema={schema}", args.url);
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..nodes {
            stores.push(Arc::new(PgStore::open(&PgConfig::new(url.clone())).await?));
        }
        let name = format!(
            "PostgreSQL, {nodes} node{}",
            if nodes > 1 { "s" } else { "" }
        );
        let figures = measure(&name, stores, &args).await;
        let mut conn = PgConnection::connect(&args.url).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut conn)
            .await?;
        results.push(figures?);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let base = &results[0];
    println!();
    println!(
        "{} runs, {} creating clients, {} appends per run ({} events), {} CPUs",
        args.runs,
        args.writers,
        args.appends,
        args.runs * args.appends,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>12} {:>9} {:>12} {:>9}",
        "store", "runs/s", "vs SQLite", "events/s", "vs SQLite"
    );
    for r in &results {
        println!(
            "{:<22} {:>12.0} {:>8.2}x {:>12.0} {:>8.2}x",
            r.name,
            r.runs_per_sec,
            r.runs_per_sec / base.runs_per_sec,
            r.events_per_sec,
            r.events_per_sec / base.events_per_sec
        );
    }
    Ok(())
}

async fn measure(name: &str, nodes: Vec<Arc<dyn Store>>, args: &Args) -> anyhow::Result<Figures> {
    let tenant = TenantId::default_tenant();
    let started = Instant::now();
    let created: Vec<anyhow::Result<()>> = futures::stream::iter(0..args.runs)
        .map(|i| {
            let store = nodes[i % nodes.len()].clone();
            let tenant = tenant.clone();
            async move {
                store.create_run(new_run(&tenant)).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.writers)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<()>>()?;
    let runs_per_sec = args.runs as f64 / started.elapsed().as_secs_f64();

    // Each node claims its share, so each appends through its own writer.
    let share = args.runs.div_ceil(nodes.len());
    let mut leases: Vec<(Arc<dyn Store>, Lease)> = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        let owner: Arc<str> = Arc::from(format!("bench-{n}"));
        let mut mine = 0;
        while mine < share && leases.len() < args.runs {
            let claimed = store
                .claim_runs(ClaimRequest {
                    owner: owner.clone(),
                    max: 500.min(share - mine),
                    lease_ms: 600_000,
                })
                .await?;
            anyhow::ensure!(!claimed.is_empty(), "claimed nothing");
            mine += claimed.len();
            leases.extend(claimed.into_iter().map(|c| (store.clone(), c.lease)));
        }
    }

    let started = Instant::now();
    let tasks: Vec<_> = leases
        .into_iter()
        .map(|(store, lease)| {
            let n = args.appends;
            tokio::spawn(async move {
                for i in 0..n {
                    let delta = content_delta("step_1", 1, &format!("t{i} "));
                    store.append(&lease, vec![delta], None).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let events_per_sec = (args.runs * args.appends) as f64 / started.elapsed().as_secs_f64();
    eprintln!("{name}: {runs_per_sec:.0} runs/s, {events_per_sec:.0} events/s");
    Ok(Figures {
        name: name.to_owned(),
        runs_per_sec,
        events_per_sec,
    })
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
