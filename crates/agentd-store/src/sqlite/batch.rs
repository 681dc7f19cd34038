//! What the writer keeps between statements: a cache of the run fields every
//! append checks, and appends not yet written.
//!
//! Appends are the hot path (a run's deltas): a plain append is checked
//! against the cache and its events are deferred, so the appends of one
//! transaction cost one prepared INSERT per row, not three statements
//! each. A run's `last_seq` is derived from the log, so nothing
//! else is written. Every other operation flushes first, so it always sees
//! the database as the appends so far left it. The writer is the only writer
//! of this database (one process per data dir), which is what makes the cache
//! authoritative; it is dropped whole when a transaction rolls back.

use std::collections::HashMap;
use std::sync::Arc;

use agentd_core::{Event, RunStatus, TenantId};
use rusqlite::{Connection, params};

/// Entries kept at most; past this the cache starts again empty.
const MAX_CACHED_RUNS: usize = 100_000;
/// One event row; the writer's every event goes through this statement.
/// Its first parameter is the run's `run_key` (see [`CachedRun::run_key`]).
pub(crate) const INSERT_EVENT: &str = "INSERT INTO run_events \
     (run_key, run_id, seq, tenant_id, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)";

/// The fields of a run that decide whether an append may go ahead.
#[derive(Clone, Debug)]
pub(crate) struct CachedRun {
    /// The run's key in the events index (migration 0005), so a deferred
    /// row needs no lookup.
    pub run_key: i64,
    pub tenant: TenantId,
    pub status: RunStatus,
    pub epoch: i64,
    pub owner: Option<Arc<str>>,
    /// Including deferred appends.
    pub last_seq: i64,
    /// Has deferred appends not yet flushed: its `last_seq` is ahead of the
    /// database's, so it must not be evicted.
    pub dirty: bool,
}

#[derive(Default)]
pub(crate) struct Ctx {
    runs: HashMap<String, CachedRun>,
    /// Deferred rows, in append order.
    events: Vec<PendingRow>,
    /// Runs whose `last_seq` in the database is behind their cached one.
    dirty: Vec<String>,
}

impl Ctx {
    pub fn cached(&mut self, run_id: &str) -> Option<&mut CachedRun> {
        self.runs.get_mut(run_id)
    }

    pub fn remember(&mut self, run_id: String, run: CachedRun) {
        if self.runs.len() >= MAX_CACHED_RUNS {
            // Keep what the next flush needs.
            self.runs.retain(|_, r| r.dirty);
        }
        self.runs.insert(run_id, run);
    }

    /// Call for any run whose row changed other than by a deferred append.
    pub fn forget(&mut self, run_id: &str) {
        self.runs.remove(run_id);
    }

    pub fn forget_all(&mut self) {
        self.runs.clear();
    }

    /// Queues `events` of a cached run (seqs already assigned from its
    /// `last_seq`, which the caller advanced) for the flush.
    pub fn defer(&mut self, run_id: &str, events: &[Event]) {
        let Some(run) = self.runs.get_mut(run_id) else {
            debug_assert!(false, "deferred an append of an uncached run");
            return;
        };
        if !run.dirty {
            run.dirty = true;
            self.dirty.push(run_id.to_owned());
        }
        let (run_key, tenant) = (run.run_key, &run.tenant);
        self.events.extend(events.iter().map(|e| PendingRow {
            event: e.clone(),
            run_key,
            tenant: tenant.clone(),
        }));
    }

    /// After a rollback nothing here can be trusted.
    pub fn reset(&mut self) {
        self.runs.clear();
        self.events.clear();
        self.dirty.clear();
    }

    /// Writes the deferred appends, a prepared single-row INSERT each: on the
    /// writer's own connection a row is a function call, as fast as a
    /// multi-row statement without building one.
    pub fn flush(&mut self, c: &Connection) -> rusqlite::Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let mut insert = c.prepare_cached(INSERT_EVENT)?;
        for row in &self.events {
            let e = &row.event;
            insert.execute(params![
                row.run_key,
                e.run_id,
                e.seq,
                row.tenant.as_str(),
                e.kind.as_str(),
                &**e.json(),
                e.created_at
            ])?;
        }
        for id in self.dirty.drain(..) {
            if let Some(run) = self.runs.get_mut(&id) {
                run.dirty = false;
            }
        }
        self.events.clear();
        Ok(())
    }
}

/// An event row waiting for the flush: the event (its payload text
/// included, shared, not copied), its run's key and its run's tenant.
struct PendingRow {
    event: Event,
    run_key: i64,
    tenant: TenantId,
}
