//! Plain appends (a run's deltas, no state change), the hot path, batched:
//! the consecutive plain appends of one transaction are fenced and given
//! their seqs by one `UPDATE … FROM unnest(…) RETURNING` over all their runs,
//! and their rows join the batch's multi-row INSERT. So a batch of N appends
//! costs two statements, not N + 1 round trips to the database.

use std::collections::HashMap;

use agentd_core::NewEvent;
use async_trait::async_trait;
use sqlx::PgConnection;
use tokio::sync::oneshot;

use super::batch::Ctx;
use super::notify::Note;
use super::writer::{Applied, Job, announce};
use crate::hub::EventHub;
use crate::number_events;
use crate::{Lease, StoreError};

/// One plain append waiting in the writer's queue.
pub(crate) struct PlainJob {
    pub lease: Lease,
    pub events: Vec<NewEvent>,
    /// Set once its group ran in the current transaction.
    applied: Option<Applied<Result<i64, StoreError>>>,
    reply: oneshot::Sender<Result<i64, StoreError>>,
}

impl PlainJob {
    pub fn new(
        lease: Lease,
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    ) -> PlainJob {
        PlainJob {
            lease,
            events,
            applied: None,
            reply,
        }
    }
}

#[async_trait]
impl Job for PlainJob {
    fn deferrable(&self) -> bool {
        true
    }

    fn plain(&mut self) -> Option<&mut PlainJob> {
        Some(self)
    }

    /// Alone (the writer groups plain appends itself; this is the group of one).
    async fn apply(&mut self, conn: &mut PgConnection, ctx: &mut Ctx) -> sqlx::Result<()> {
        apply_group(conn, ctx, &mut [self]).await
    }

    fn note(&self, note: &mut Note) {
        if let Some(a) = &self.applied {
            note.add(&a.events, false, &[], &[]);
        }
    }

    fn finish(self: Box<Self>, hub: &EventHub, outcome: Result<(), StoreError>) -> usize {
        let mut appended = 0;
        let result = match (outcome, self.applied) {
            (Ok(()), Some(applied)) => {
                let (value, events) = announce(hub, applied);
                appended = events;
                value
            }
            (Ok(()), None) => Err(StoreError::Closed),
            (Err(e), _) => Err(e),
        };
        let _ = self.reply.send(result);
        appended
    }
}

/// Fences and numbers a group of plain appends of distinct runs in one
/// statement, and defers their rows to the batch's flush. A run whose lease
/// is no longer `(epoch, owner)` or which is no longer running matches
/// nothing: its append gets [`StoreError::LeaseLost`].
pub(crate) async fn apply_group(
    c: &mut PgConnection,
    ctx: &mut Ctx,
    group: &mut [&mut PlainJob],
) -> sqlx::Result<()> {
    let ids: Vec<&str> = group.iter().map(|j| j.lease.run_id()).collect();
    let epochs: Vec<i64> = group.iter().map(|j| j.lease.epoch()).collect();
    let owners: Vec<&str> = group.iter().map(|j| j.lease.owner()).collect();
    let counts: Vec<i64> = group.iter().map(|j| j.events.len() as i64).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE runs AS r SET last_seq = r.last_seq + v.n \
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS v(id, epoch, owner, n) \
         WHERE r.id = v.id AND r.lease_epoch = v.epoch AND r.lease_owner = v.owner \
           AND r.status = 'running' \
         RETURNING r.id, r.last_seq",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&owners)
    .bind(&counts)
    .fetch_all(&mut *c)
    .await?;
    let last: HashMap<String, i64> = rows.into_iter().collect();
    for job in group.iter_mut() {
        job.applied = Some(match last.get(job.lease.run_id()) {
            None => Applied::value(Err(StoreError::LeaseLost)),
            Some(&last_seq) => {
                let n = job.events.len() as i64;
                let events = number_events(job.lease.run_id(), last_seq - n, &job.events, ctx.now);
                ctx.defer(job.lease.tenant_id(), &events);
                Applied {
                    events,
                    ..Applied::value(Ok(last_seq))
                }
            }
        });
    }
    Ok(())
}
