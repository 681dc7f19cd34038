//! The group-commit writer on PostgreSQL (DESIGN §4): one task per node; every
//! write is a job on its queue, and all jobs that arrived while the previous
//! transaction committed go into the next one. The batch's last statement is
//! its `NOTIFY` (delivered by PostgreSQL only if the batch commits), and this
//! node's readers are woken after the commit, so what anyone sees is durable.
//!
//! Unlike SQLite's writer, this one is not the database's only writer (other
//! nodes write too), so it caches nothing about runs: every append is fenced
//! by one conditional UPDATE of the run row.

use std::collections::HashSet;

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

use super::batch::Ctx;
use super::notify::Note;
use super::plain::{PlainJob, apply_group};
use crate::hub::EventHub;
use crate::metrics::StoreMetrics;
use crate::{Lease, StoreError};
use agentd_core::{Event, NewEvent};

/// Jobs in one transaction at most; bounds a batch's latency.
const MAX_BATCH: usize = 1024;
/// Queue depth before submitters wait (back-pressure instead of memory).
const QUEUE_DEPTH: usize = 16 * 1024;

/// What a job did inside the transaction; acted on only after the commit.
pub(crate) struct Applied<R> {
    pub value: R,
    /// Newly appended events, per run, to announce once durable.
    pub events: Vec<Event>,
    /// A run may have become claimable (on any node).
    pub wake_workers: bool,
    /// Runs with a new control row for their lease holder (on any node).
    pub controls: Vec<String>,
    /// API keys revoked or rotated: other nodes close streams they opened.
    pub keys: Vec<String>,
}

impl<R> Applied<R> {
    pub fn value(value: R) -> Self {
        Applied {
            value,
            events: Vec::new(),
            wake_workers: false,
            controls: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// One write operation: a plain async fn over the connection, the batch
/// context and its arguments.
pub(crate) type OpFn<A, R> =
    for<'c> fn(&'c mut PgConnection, &'c mut Ctx, &'c A) -> BoxFuture<'c, sqlx::Result<Applied<R>>>;

#[async_trait]
pub(crate) trait Job: Send {
    /// Plain appends may leave their rows to the batch's flush; everything
    /// else gets a flush first, so it reads the log as the appends left it.
    fn deferrable(&self) -> bool;
    /// A plain append, which the writer groups with its neighbours.
    fn plain(&mut self) -> Option<&mut PlainJob> {
        None
    }
    async fn apply(&mut self, conn: &mut PgConnection, ctx: &mut Ctx) -> sqlx::Result<()>;
    /// Adds what other nodes must hear about to the batch's notification.
    fn note(&self, note: &mut Note);
    /// Called once: announces the job's effects if it committed, then
    /// replies. Returns how many events it appended.
    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize;
}

struct TypedJob<A, R> {
    args: A,
    op: OpFn<A, R>,
    applied: Option<Applied<R>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

#[async_trait]
impl<A: Send + Sync, R: Send> Job for TypedJob<A, R> {
    fn deferrable(&self) -> bool {
        false
    }

    async fn apply(&mut self, conn: &mut PgConnection, ctx: &mut Ctx) -> sqlx::Result<()> {
        self.applied = None;
        let applied = (self.op)(conn, ctx, &self.args).await?;
        self.applied = Some(applied);
        Ok(())
    }

    fn note(&self, note: &mut Note) {
        if let Some(a) = &self.applied {
            note.add(&a.events, a.wake_workers, &a.controls, &a.keys);
        }
    }

    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize {
        let mut appended = 0;
        let result = match (outcome, self.applied) {
            (Ok(()), Some(applied)) => {
                let (value, events) = announce(hub, applied);
                appended = events;
                Ok(value)
            }
            (Ok(()), None) => Err(StoreError::Closed),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(result);
        appended
    }
}

/// This node's own readers and workers hear of a commit here; other nodes
/// through the batch's NOTIFY.
/// Returns the job's value and how many events it appended.
pub(crate) fn announce<R>(hub: &EventHub, applied: Applied<R>) -> (R, usize) {
    let appended = applied.events.len();
    hub.announce_commit(applied.events, &applied.controls, applied.wake_workers);
    (applied.value, appended)
}

/// The submitting side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
}

/// Who the writer is and where it announces.
pub(crate) struct WriterSetup {
    pub pool: PgPool,
    pub hub: EventHub,
    pub metrics: StoreMetrics,
    /// The NOTIFY channel (schema-prefixed).
    pub channel: String,
    /// This node's id, so its own listener skips its own notifications.
    pub node: String,
}

impl Writer {
    pub fn spawn(setup: WriterSetup) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(setup, rx));
        Writer { tx }
    }

    pub async fn submit<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.enqueue(op, args).await
    }

    /// A plain append: grouped with the batch's other plain appends.
    pub async fn submit_plain(
        &self,
        lease: Lease,
        events: Vec<NewEvent>,
    ) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(PlainJob::new(lease, events, reply));
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn enqueue<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            args,
            op,
            applied: None,
            reply,
        });
        self.tx.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run(setup: WriterSetup, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let WriterSetup {
        pool,
        hub,
        metrics,
        channel,
        node,
    } = setup;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                // PostgreSQL is gone: answer at once (503), retry nothing.
                fail_all(&mut batch, &hub, &e);
                continue;
            }
        };
        let mut ctx = Ctx::default();
        match apply_all(&mut conn, &mut ctx, &mut batch, &channel, &node).await {
            Ok(()) => {
                let jobs = batch.len();
                let events: usize = batch.drain(..).map(|job| job.finish(&hub, Ok(()))).sum();
                metrics.committed(jobs, events);
            }
            Err(e) if is_connection_error(&e) => {
                // The connection died mid-batch: whether a COMMIT in flight
                // landed is unknown, and redoing jobs would only fail again.
                conn.close_on_drop();
                tracing::warn!(error = %e, jobs = batch.len(), "store connection lost");
                fail_all(&mut batch, &hub, &e);
            }
            Err(e) => {
                // One bad job must not fail its neighbours: redo each alone.
                tracing::warn!(error = %e, jobs = batch.len(), "batch failed; retrying jobs one by one");
                metrics.batch_failed();
                for mut job in batch.drain(..) {
                    let mut ctx = Ctx::default();
                    let outcome = apply_all(
                        &mut conn,
                        &mut ctx,
                        std::slice::from_mut(&mut job),
                        &channel,
                        &node,
                    )
                    .await;
                    let committed = outcome.is_ok();
                    let events = job.finish(&hub, outcome.map_err(StoreError::from));
                    if committed {
                        metrics.committed(1, events);
                    }
                }
            }
        }
    }
}

/// Answers every job of the batch with [`StoreError::Unavailable`].
fn fail_all(batch: &mut Vec<Box<dyn Job>>, hub: &EventHub, e: &sqlx::Error) {
    for job in batch.drain(..) {
        job.finish(hub, Err(unavailable(e)));
    }
}

/// An owned copy of a connection failure, one per waiting caller.
fn unavailable(e: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(e.to_string())))
}

/// Failures that mean "PostgreSQL cannot be reached", as opposed to a
/// statement the database refused.
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: the server is shutting down
        // or restarting.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

async fn apply_all(
    conn: &mut PoolConnection<Postgres>,
    ctx: &mut Ctx,
    jobs: &mut [Box<dyn Job>],
    channel: &str,
    node: &str,
) -> sqlx::Result<()> {
    let mut tx = conn.begin().await?;
    ctx.start(&mut tx).await?;
    // Consecutive plain appends of distinct runs run as one group.
    let mut group: Vec<&mut PlainJob> = Vec::new();
    let mut runs: HashSet<String> = HashSet::new();
    for job in jobs.iter_mut() {
        if job.plain().is_some() {
            let run = job
                .plain()
                .map(|p| p.lease.run_id().to_owned())
                .unwrap_or_default();
            if runs.contains(&run) {
                apply_group(&mut tx, ctx, &mut group).await?;
                group.clear();
                runs.clear();
            }
            runs.insert(run);
            if let Some(p) = job.plain() {
                group.push(p);
            }
            continue;
        }
        if !group.is_empty() {
            apply_group(&mut tx, ctx, &mut group).await?;
            group.clear();
            runs.clear();
        }
        if !job.deferrable() {
            ctx.flush(&mut tx).await?;
        }
        job.apply(&mut tx, ctx).await?;
    }
    if !group.is_empty() {
        apply_group(&mut tx, ctx, &mut group).await?;
    }
    drop(group);
    ctx.flush(&mut tx).await?;
    let mut note = Note::new(node);
    for job in jobs.iter() {
        job.note(&mut note);
    }
    for payload in note.payloads() {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
