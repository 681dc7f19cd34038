//! WAL checkpoints off the writer's path.
//!
//! A checkpoint copies the pages the WAL holds back into the database file
//! and syncs it: milliseconds. Left to SQLite's autocheckpoint it runs inside
//! the writer's commit, and every append queued behind that commit (every
//! streaming run's next delta) waits for it. Here a task of its own, on its
//! own connection, checkpoints `PASSIVE` (it never blocks the writer or a
//! reader) at most every [`INTERVAL`] while commits arrive, and again until
//! one has copied the whole WAL; after that it sleeps on its channel, so an
//! idle daemon does not wake for it. The writer
//! keeps an autocheckpoint far above what this leaves in the WAL, as a
//! backstop should this task fall behind.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;

/// At most one checkpoint per this interval: each copies the pages dirtied
/// since the last, and the hot ones (the tails of the event log and its
/// index) are rewritten by every commit, so a longer interval copies each
/// of them once for more commits.
const INTERVAL: Duration = Duration::from_millis(500);

/// The writer's handle: says a transaction committed. Cheap; never waits.
pub(crate) struct CheckpointDue(mpsc::Sender<()>);

impl CheckpointDue {
    pub fn committed(&self) {
        // Full means a checkpoint is already due; closed means the task
        // stopped (its connection failed), and the backstop takes over.
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpoint task on a connection of its own (call inside the
/// runtime). It ends when the returned handle (the writer's) is dropped.
pub(crate) fn spawn(path: &Path) -> rusqlite::Result<CheckpointDue> {
    // SQLite's default `synchronous` (FULL) is kept on purpose: a
    // checkpoint syncs the WAL before copying it back and the database file
    // after, so the WAL is never reused before its pages are on disk.
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(run(conn, rx));
    Ok(CheckpointDue(tx))
}

async fn run(mut conn: Connection, mut due: mpsc::Receiver<()>) {
    let mut unfinished = false;
    loop {
        // A checkpoint that could not copy everything (a reader's snapshot
        // pinned part of the WAL, or the lock was busy) is tried again
        // without waiting for another commit.
        if !unfinished && due.recv().await.is_none() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            let finished = checkpoint(&conn).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                false
            });
            (conn, finished)
        })
        .await;
        match done {
            Ok((c, finished)) => (conn, unfinished) = (c, !finished),
            Err(_) => return,
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// One `PASSIVE` checkpoint; whether it copied every frame of the WAL.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let (busy, log, copied): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(busy == 0 && copied >= log)
}
