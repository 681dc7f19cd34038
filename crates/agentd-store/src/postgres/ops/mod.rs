//! Write operations on PostgreSQL, each run by the writer inside a group
//! transaction. Same semantics as `sqlite/ops`, for several nodes at once:
//! rows a job decides on are locked (`FOR UPDATE`, claims `SKIP LOCKED`),
//! every write on a claimed run is conditional on its epoch and owner, and
//! lease times come from the database clock (`Ctx::now`).
//!
//! SQL errors (`sqlx::Error`) abort the batch; domain outcomes (a taken id, a
//! lost lease) are values in the result and abort nothing.

mod appends;
mod leases;
mod runs;
mod sessions;
mod signals;

pub(crate) use appends::append;
pub(crate) use leases::{claim_runs, heartbeat, release_leases, release_run};
use runs::cancel_one;
pub(crate) use runs::{cancel_run, create_run};
pub(crate) use sessions::{create_session, delete_session};
pub(crate) use signals::signal_run;

use agentd_core::{Event, EventType, NewEvent, Run, RunStatus, RunTransition, Session, TenantId};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::RUN_COLUMNS;
use super::batch::Ctx;
use super::writer::Applied;
use crate::sqlite::rows::RunRow;
use crate::{
    ClaimRequest, ClaimedRun, Control, CreateRunOutcome, Heartbeat, Lease, NewRun, NewSession,
    RunUpdate, SessionTarget, StoreError, number_events,
};

/// How long an idempotency key is remembered (DESIGN §3).
pub(crate) const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

pub(crate) type Op<'c, R> = BoxFuture<'c, sqlx::Result<Applied<R>>>;

/// The run, its row locked until the batch commits: whatever this job decides
/// from it cannot be overtaken by another node's writer.
async fn lock_run(c: &mut PgConnection, id: &str) -> sqlx::Result<Option<Run>> {
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(c)
    .await?;
    row.map(Run::try_from).transpose().map_err(corrupt)
}

/// Domain decoding errors inside a write surface as SQL errors: they abort
/// the job, which is then retried alone and reported.
fn corrupt(e: StoreError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

async fn insert_session(c: &mut PgConnection, s: &NewSession) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (tenant_id, id, agent, metadata, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(s.tenant_id.as_str())
    .bind(&s.id)
    .bind(&s.agent)
    .bind(s.metadata.to_string())
    .bind(s.created_at)
    .bind(s.created_at)
    .execute(c)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn session_of(s: &NewSession) -> Session {
    Session {
        tenant_id: s.tenant_id.clone(),
        id: s.id.clone(),
        agent: s.agent.clone(),
        metadata: s.metadata.clone(),
        created_at: s.created_at,
        updated_at: s.created_at,
    }
}

/// Appends `events` after `last_seq` of a run this job has locked, and moves
/// the row's `last_seq` along.
async fn insert_events(
    c: &mut PgConnection,
    tenant: &TenantId,
    run_id: &str,
    last_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> sqlx::Result<Vec<Event>> {
    let stored = number_events(run_id, last_seq, events, now);
    if stored.is_empty() {
        return Ok(stored);
    }
    for chunk in stored.chunks(1000) {
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO run_events (run_id, seq, tenant_id, type, payload, created_at) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(&e.run_id)
                .push_bind(e.seq)
                .push_bind(tenant.as_str())
                .push_bind(e.kind.as_str())
                .push_bind(&**e.json())
                .push_bind(e.created_at);
        });
        qb.build().execute(&mut *c).await?;
    }
    sqlx::query("UPDATE runs SET last_seq = $1 WHERE id = $2")
        .bind(last_seq + stored.len() as i64)
        .bind(run_id)
        .execute(&mut *c)
        .await?;
    Ok(stored)
}
