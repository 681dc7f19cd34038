//! The group-commit writer (DESIGN §4): one connection, one task; every write
//! is a job on its queue, and all jobs that arrived while the previous
//! transaction committed go into the next one. Readers are woken after the
//! commit, so what they see is durable.

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::batch::Ctx;
use crate::StoreError;
use crate::hub::{EventHub, HubMessage};
use crate::metrics::StoreMetrics;
use agentd_core::Event;

/// Jobs in one transaction at most; bounds a batch's latency.
const MAX_BATCH: usize = 1024;
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

/// One write operation: a plain async fn over the connection, the writer's
/// batch context and its arguments.
pub(crate) type OpFn<A, R> = for<'c> fn(
    &'c mut SqliteConnection,
    &'c mut Ctx,
    &'c A,
) -> BoxFuture<'c, sqlx::Result<Applied<R>>>;

#[async_trait]
trait Job: Send {
    /// Plain appends may run on deferred state; everything else gets a flush first.
    fn deferrable(&self) -> bool;
    async fn apply(&mut self, conn: &mut SqliteConnection, ctx: &mut Ctx) -> sqlx::Result<()>;
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

#[async_trait]
impl<A: Send + Sync, R: Send> Job for TypedJob<A, R> {
    fn deferrable(&self) -> bool {
        self.deferrable
    }

    async fn apply(&mut self, conn: &mut SqliteConnection, ctx: &mut Ctx) -> sqlx::Result<()> {
        let applied = (self.op)(conn, ctx, &self.args).await?;
        self.applied = Some(applied);
        Ok(())
    }

    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize {
        let mut appended = 0;
        let result = match (outcome, self.applied) {
            (Ok(()), Some(applied)) => {
                announce(hub, &applied);
                appended = applied.events.len();
                Ok(applied.value)
            }
            (Ok(()), None) => Err(StoreError::Closed),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(result);
        appended
    }
}

fn announce<R>(hub: &EventHub, applied: &Applied<R>) {
    let mut rest = applied.events.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|e| e.run_id == first.run_id).count();
        if hub.is_watched(&first.run_id) {
            hub.publish(&first.run_id, HubMessage::Events(rest[..n].to_vec().into()));
        }
        rest = &rest[n..];
    }
    for run_id in &applied.controls {
        hub.publish_control(run_id);
    }
    if applied.wake_workers {
        hub.wake_workers();
    }
}

/// The submitting side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    pub fn spawn(conn: SqliteConnection, hub: EventHub, metrics: StoreMetrics) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(conn, rx, hub, metrics));
        Writer { tx }
    }

    pub async fn submit<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + Sync + 'static,
        R: Send + 'static,
    {
        self.enqueue(op, args, false).await
    }

    /// For `ops::append` only: may use the cache and defer its insert.
    pub async fn submit_deferrable<A, R>(&self, op: OpFn<A, R>, args: A) -> Result<R, StoreError>
    where
        A: Send + Sync + 'static,
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
        A: Send + Sync + 'static,
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

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    hub: EventHub,
    metrics: StoreMetrics,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut ctx = Ctx::default();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match apply_all(&mut conn, &mut ctx, &mut batch).await {
            Ok(()) => {
                let jobs = batch.len();
                let events: usize = batch.drain(..).map(|job| job.finish(&hub, Ok(()))).sum();
                metrics.committed(jobs, events);
            }
            Err(e) => {
                // One bad job must not fail its neighbours: redo each alone.
                tracing::warn!(error = %e, jobs = batch.len(), "batch failed; retrying jobs one by one");
                metrics.batch_failed();
                for mut job in batch.drain(..) {
                    let outcome =
                        apply_all(&mut conn, &mut ctx, std::slice::from_mut(&mut job)).await;
                    let committed = outcome.is_ok();
                    let events = job.finish(&hub, outcome.map_err(StoreError::from));
                    if committed {
                        metrics.committed(1, events);
                    }
                }
            }
        }
    }
    let _ = conn.close().await;
}

async fn apply_all(
    conn: &mut SqliteConnection,
    ctx: &mut Ctx,
    jobs: &mut [Box<dyn Job>],
) -> sqlx::Result<()> {
    let result = async {
        let mut tx = conn.begin().await?;
        for job in jobs.iter_mut() {
            if !job.deferrable() {
                ctx.flush(&mut tx).await?;
            }
            job.apply(&mut tx, ctx).await?;
        }
        ctx.flush(&mut tx).await?;
        tx.commit().await
    }
    .await;
    if result.is_err() {
        // The transaction rolled back; so did everything the cache learned in it.
        ctx.reset();
    }
    result
}
