//! The group-commit writer (DESIGN §4): one connection, one task; every
//! write is a job on its queue, and all jobs that arrived while the previous
//! transaction committed go into the next one. Readers are woken after the
//! commit, so what they see is durable.
//!
//! The connection is rusqlite's, owned by the writer's task, and a batch runs
//! inline on whichever runtime worker polls it: its statements are function
//! calls, and the jobs' submitters and the readers it wakes are often on the
//! same worker, so a delta's way from the agent loop to its reader crosses no
//! thread. (Through sqlx each statement was a round trip to sqlx's own
//! connection thread; on a thread of its own the writer still cost two
//! thread wake-ups a batch. bench/README.md has the figures.) A batch holds
//! its worker for as long as it runs: MAX_BATCH bounds that.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::batch::Ctx;
use super::checkpoint::CheckpointDue;
use crate::StoreError;
use crate::hub::EventHub;
use crate::metrics::StoreMetrics;
use agentd_core::Event;

/// Jobs in one transaction at most; bounds a batch's latency.
const MAX_BATCH: usize = 1024;
/// Below this many jobs the writer yields once before committing.
const SMALL_BATCH: usize = 32;
/// Queue depth before submitters wait (back-pressure instead of memory).
const QUEUE_DEPTH: usize = 16 * 1024;

/// What a job did inside the transaction; acted on only after the commit.
pub(crate) struct Applied<R> {
    pub value: R,
    /// Newly appended events, per run, to announce once durable.
    pub events: Vec<Event>,
    /// A run may have become claimable.
    pub wake_workers: bool,
    /// Runs with a new control row for their lease holder.
    pub controls: Vec<String>,
}

impl<R> Applied<R> {
    pub fn value(value: R) -> Self {
        Applied {
            value,
            events: Vec::new(),
            wake_workers: false,
            controls: Vec::new(),
        }
    }
}

/// One write operation: a plain function over the writer's connection
/// (inside the batch's transaction), its batch context and its arguments.
pub(crate) type OpFn<A, R> = fn(&Connection, &mut Ctx, &A) -> rusqlite::Result<Applied<R>>;

trait Job: Send {
    /// Plain appends may run on deferred state; everything else gets a flush first.
    fn deferrable(&self) -> bool;
    fn apply(&mut self, conn: &Connection, ctx: &mut Ctx) -> rusqlite::Result<()>;
    /// Called once: announces the job's effects if it committed, then
    /// replies. Returns how many events it appended.
    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize;
}

struct TypedJob<A, R> {
    args: A,
    op: OpFn<A, R>,
    deferrable: bool,
    applied: Option<Applied<R>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<A: Send, R: Send> Job for TypedJob<A, R> {
    fn deferrable(&self) -> bool {
        self.deferrable
    }

    fn apply(&mut self, conn: &Connection, ctx: &mut Ctx) -> rusqlite::Result<()> {
        self.applied = Some((self.op)(conn, ctx, &self.args)?);
        Ok(())
    }

    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize {
        let mut appended = 0;
        let result = match (outcome, self.applied) {
            (Ok(()), Some(applied)) => {
                appended = applied.events.len();
                hub.announce_commit(applied.events, &applied.controls, applied.wake_workers);
                Ok(applied.value)
            }
            (Ok(()), None) => Err(StoreError::Closed),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(result);
        appended
    }
}

/// The submitting side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer's task on `conn` (call inside the runtime). It runs
    /// until every `Writer` clone is dropped, then closes the connection
    /// (checkpointing the WAL).
    pub fn spawn(
        conn: Connection,
        hub: EventHub,
        metrics: StoreMetrics,
        checkpoint: CheckpointDue,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(conn, rx, hub, metrics, checkpoint));
        Writer { tx }
    }

    pub async fn submit<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.enqueue(op, args, false).await
    }

    /// For `ops::append` only: may use the cache and defer its insert.
    pub async fn submit_deferrable<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        self.enqueue(op, args, true).await
    }

    async fn enqueue<A, R>(
        &self,
        op: OpFn<A, R>,
        args: A,
        deferrable: bool,
    ) -> Result<R, StoreError>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            args,
            op,
            deferrable,
            applied: None,
            reply,
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer's task: takes every job that is waiting (up to
/// [`MAX_BATCH`]), runs them in one transaction as plain calls, commits,
/// then announces and replies. It awaits only for the next job (and one
/// yield before a small batch): a statement is a function call, not a
/// round trip to another thread.
async fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    hub: EventHub,
    metrics: StoreMetrics,
    checkpoint: CheckpointDue,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut ctx = Ctx::default();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < SMALL_BATCH {
            // Let the tasks that are already runnable go first: whatever
            // they submit joins this batch. Nothing here sleeps, and a
            // trickle of appends makes one commit instead of many. A batch
            // that is already big commits at once: behind a long run queue
            // the wait would cost more latency than the commit saves.
            tokio::task::yield_now().await;
            top_up(&mut rx, &mut batch);
        }
        match apply_all(&conn, &mut ctx, &mut batch) {
            Ok(()) => {
                let jobs = batch.len();
                let events: usize = batch.drain(..).map(|job| job.finish(&hub, Ok(()))).sum();
                metrics.committed(jobs, events);
                checkpoint.committed();
            }
            Err(e) => {
                // One bad job must not fail its neighbours: redo each alone.
                tracing::warn!(error = %e, jobs = batch.len(), "batch failed; retrying jobs one by one");
                metrics.batch_failed();
                for mut job in batch.drain(..) {
                    let outcome = apply_all(&conn, &mut ctx, std::slice::from_mut(&mut job));
                    let committed = outcome.is_ok();
                    let events = job.finish(&hub, outcome.map_err(StoreError::from));
                    if committed {
                        metrics.committed(1, events);
                    }
                }
                checkpoint.committed();
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the database failed");
    }
}

/// Adds the jobs waiting now, without waiting for more.
fn top_up(rx: &mut mpsc::Receiver<Box<dyn Job>>, batch: &mut Vec<Box<dyn Job>>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

fn apply_all(conn: &Connection, ctx: &mut Ctx, jobs: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    let result = (|| {
        conn.prepare_cached("BEGIN")?.execute([])?;
        for job in jobs.iter_mut() {
            if !job.deferrable() {
                ctx.flush(conn)?;
            }
            job.apply(conn, ctx)?;
        }
        ctx.flush(conn)?;
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    })();
    if result.is_err() {
        // The transaction rolls back; so does everything the cache learned in it.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        ctx.reset();
    }
    result
}
