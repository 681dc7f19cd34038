//! Write operations, each run by the writer inside a group transaction.
//!
//! Each is a plain function over the writer's rusqlite connection, so the
//! writer can queue them uniformly. SQL errors (`rusqlite::Error`) abort the
//! batch; domain outcomes
//! (a taken id, a lost lease) are values in the result and abort nothing.
//! Every operation that changes a run's row other than by a deferred append
//! forgets it in the writer's cache ([`super::batch::Ctx`]).

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

use agentd_core::time::now_millis;
use agentd_core::{Event, EventType, NewEvent, Run, RunStatus, RunTransition, Session, TenantId};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::batch::{CachedRun, Ctx, INSERT_EVENT};
use super::rows::{LAST_SEQ_OF, RUN_COLUMNS, RUN_INSERT_COLUMNS, RUN_KEY_OF, RunRow};
use super::writer::Applied;
use crate::{
    ClaimOnCreate, ClaimRequest, ClaimedRun, Control, CreateRunOutcome, Heartbeat, Lease, NewRun,
    NewSession, RunUpdate, SessionTarget, StoreError, number_events,
};

/// How long an idempotency key is remembered (DESIGN §3).
pub(crate) const IDEMPOTENCY_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// What every op returns: SQL errors abort the batch, domain outcomes are in
/// the value.
pub(crate) type Op<R> = rusqlite::Result<Applied<R>>;

fn load_run(c: &Connection, id: &str) -> rusqlite::Result<Option<Run>> {
    let row = c
        .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"))?
        .query_row([id], RunRow::from_columns)
        .optional()?;
    row.map(Run::try_from).transpose().map_err(corrupt)
}

/// Domain decoding errors inside a write surface as SQL errors: they abort
/// the job, which is then retried alone and reported (`StoreError`'s
/// `From<rusqlite::Error>` takes the `StoreError` back out).
pub(crate) fn corrupt(e: StoreError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn insert_session(c: &Connection, s: &NewSession) -> rusqlite::Result<bool> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO sessions (tenant_id, id, agent, metadata, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            s.tenant_id.as_str(),
            s.id,
            s.agent,
            s.metadata.to_string(),
            s.created_at,
            s.created_at
        ])?;
    Ok(inserted == 1)
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

/// The run's key in the events index (migration 0005).
fn run_key(c: &Connection, run_id: &str) -> rusqlite::Result<i64> {
    c.prepare_cached(&format!("SELECT {RUN_KEY_OF}"))?
        .query_row([run_id], |r| r.get(0))
}

/// Appends `events` after `last_seq` at once (not deferred); returns them
/// durable-to-be.
fn insert_events(
    c: &Connection,
    tenant: &TenantId,
    run_id: &str,
    last_seq: i64,
    events: &[NewEvent],
    now: i64,
) -> rusqlite::Result<Vec<Event>> {
    let stored = number_events(run_id, last_seq, events, now);
    let run_key = run_key(c, run_id)?;
    let mut insert = c.prepare_cached(INSERT_EVENT)?;
    for e in &stored {
        insert.execute(params![
            run_key,
            e.run_id,
            e.seq,
            tenant.as_str(),
            e.kind.as_str(),
            e.json(),
            e.created_at
        ])?;
    }
    Ok(stored)
}
