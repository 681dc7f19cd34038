//! The hot reads, on plain rusqlite connections run inline on the caller's
//! task: a run by id, a run's events after a seq, a session's history. Every
//! stream open, catch-up and run start does these; each is one indexed lookup of microseconds, so
//! running it where it is asked costs less than handing it to sqlx's
//! connection thread and back (two thread wake-ups a query, and the queue in
//! front of four pooled connections under a burst of stream opens). Other
//! reads (lists, filters) stay on the sqlx pool.
//!
//! WAL lets these run beside the writer and never block it. A connection is
//! taken from the idle stack for one read and put back; when none is idle a
//! new one is opened, so concurrent readers never wait on each other.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use agentd_core::{Event, Message, Run, TenantId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::rows::{EVENT_COLUMNS, EventRow, MessageRow, RUN_COLUMNS, RUN_KEY_OF, RunRow};
use crate::StoreError;

/// Idle connections kept; more are opened for a burst and closed after it.
const MAX_IDLE: usize = 8;

pub(crate) struct InlineReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl InlineReads {
    pub fn new(path: PathBuf) -> InlineReads {
        InlineReads {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn with<R>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let out = read(&conn);
        // A connection whose read failed is dropped, not reused: the next
        // read starts on a fresh one.
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(out?)
    }

    pub fn get_run(&self, tenant: &TenantId, id: &str) -> Result<Option<Run>, StoreError> {
        let row = self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ? AND id = ?"
            ))?
            .query_row(params![tenant.as_str(), id], RunRow::from_columns)
            .optional()
        })?;
        row.map(Run::try_from).transpose()
    }

    pub fn events_after(
        &self,
        tenant: &TenantId,
        run_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM run_events \
                 WHERE run_key = {RUN_KEY_OF} AND tenant_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            ))?
            .query_map(
                params![run_id, tenant.as_str(), after_seq, limit as i64],
                EventRow::from_columns,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(Event::try_from).collect()
    }

    /// A session's history, read at the start of each of its runs.
    pub fn session_messages(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = self.with(|c| {
            c.prepare_cached(
                "SELECT idx, run_id, role, content, created_at FROM messages \
                 WHERE tenant_id = ? AND session_id = ? ORDER BY idx",
            )?
            .query_map(params![tenant.as_str(), id], MessageRow::from_columns)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows.into_iter().map(Message::from).collect())
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}
