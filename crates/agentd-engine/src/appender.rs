//! A run's plain appends, written in order without holding up the model
//! stream: the agent loop queues events here (up to a bound) and goes back to
//! reading, and one task per run writes them, putting everything that queued
//! while the previous append committed into the next one. The claim's last
//! write (its state change) goes through here too, so it joins the deltas
//! queued before it in one commit instead of waiting for theirs first.

use std::sync::Arc;

use agentd_core::NewEvent;
use agentd_store::{Lease, RunUpdate, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::agent_loop::scrub_events;
use crate::scrub::Scrubber;

enum Msg {
    Events(Vec<NewEvent>),
    /// Answered once everything queued before it is durable.
    Barrier(oneshot::Sender<bool>),
    /// The claim's state change and its events, written with whatever is
    /// still queued before them; nothing is written after it.
    Finish(Box<Finish>),
}

/// Boxed in [`Msg`]: a run update is large, and every slot of the queue is
/// as big as the largest message.
struct Finish {
    events: Vec<NewEvent>,
    update: RunUpdate,
    written: oneshot::Sender<bool>,
}

/// Why the appender stopped: the run must stop writing.
#[derive(Debug)]
pub(crate) struct AppenderClosed;

/// Messages queued per run before the loop waits: enough to ride out a slow
/// commit, few enough that a saturated writer slows the model stream down
/// instead of filling memory.
const QUEUE: usize = 64;

pub(crate) struct Appender {
    tx: mpsc::Sender<Msg>,
}

impl Appender {
    pub fn start(store: Arc<dyn Store>, lease: Lease, scrubber: Arc<Scrubber>) -> Appender {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_in_order(store, lease, scrubber, rx));
        Appender { tx }
    }

    pub async fn send(&self, events: Vec<NewEvent>) -> Result<(), AppenderClosed> {
        self.tx
            .send(Msg::Events(events))
            .await
            .map_err(|_| AppenderClosed)
    }

    /// Waits until everything sent so far is durable. State changes (which
    /// the loop appends itself) go after this, so they stay last.
    pub async fn flush(&self) -> Result<(), AppenderClosed> {
        self.written(Msg::Barrier).await
    }

    /// Ends the claim: `events` and `update` (already scrubbed) commit after
    /// everything sent so far, in the same transaction when it is still
    /// queued. Fails, writing nothing, if an earlier append failed.
    pub async fn finish(
        &self,
        events: Vec<NewEvent>,
        update: RunUpdate,
    ) -> Result<(), AppenderClosed> {
        self.written(|written| {
            Msg::Finish(Box::new(Finish {
                events,
                update,
                written,
            }))
        })
        .await
    }

    /// Sends the message `msg` makes around a reply and waits for the reply.
    async fn written(
        &self,
        msg: impl FnOnce(oneshot::Sender<bool>) -> Msg,
    ) -> Result<(), AppenderClosed> {
        let (reply, written) = oneshot::channel();
        self.tx.send(msg(reply)).await.map_err(|_| AppenderClosed)?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(AppenderClosed),
        }
    }
}

async fn write_in_order(
    store: Arc<dyn Store>,
    lease: Lease,
    scrubber: Arc<Scrubber>,
    mut rx: mpsc::Receiver<Msg>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut barriers = Vec::new();
        let mut finish = None;
        let mut take = |msg| match msg {
            Msg::Events(e) => events.extend(e),
            Msg::Barrier(b) => barriers.push(b),
            Msg::Finish(last) => {
                let Finish {
                    events: last,
                    update,
                    written,
                } = *last;
                events.extend(last);
                finish = Some((update, written));
            }
        };
        take(first);
        // Nothing is sent after a finish, so draining cannot reorder it.
        while let Ok(msg) = rx.try_recv() {
            take(msg);
        }
        let (update, written) = finish.unzip();
        let ok = if events.is_empty() && update.is_none() {
            true
        } else {
            scrub_events(&scrubber, &mut events);
            match store.append(&lease, events, update).await {
                Ok(_) => true,
                Err(StoreError::LeaseLost) => {
                    tracing::warn!(
                        run = lease.run_id(),
                        "lease lost to another worker; stopping"
                    );
                    false
                }
                Err(e) => {
                    tracing::warn!(run = lease.run_id(), error = %e, "store write failed; abandoning run");
                    false
                }
            }
        };
        for b in barriers.into_iter().chain(written) {
            let _ = b.send(ok);
        }
        if !ok {
            // Dropping the receiver makes every later send fail: the run stops.
            return;
        }
    }
}
