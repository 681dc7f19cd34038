//! Following a run's events: replay from the store, then live from the hub,
//! without gap or duplicate (DESIGN §4).
//!
//! A task per follower pushes into a small bounded channel. If the client is
//! slow the channel fills, the task stops draining the hub, its broadcast
//! receiver lags, and it goes back to the store by cursor: a slow reader costs
//! neither memory nor the run's progress.

use std::sync::Arc;
use std::time::Duration;

use agentd_core::{Event, TenantId};
use agentd_store::{HubMessage, Store, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events buffered per follower.
const BUFFER: usize = 64;
/// Events read from the store per page while catching up.
const PAGE: u32 = 500;
/// How long a follower waits for an unavailable store before it gives up
/// (and the stream ends with an error event), and how often it tries.
const STORE_WAIT: Duration = Duration::from_secs(60);
const STORE_RETRY: Duration = Duration::from_millis(250);

/// Events of `run_id` after `after_seq`, ending after the terminal event, when
/// `stop` fires, or when the receiver is dropped.
pub fn follow(
    store: Arc<dyn Store>,
    tenant: TenantId,
    run_id: String,
    after_seq: i64,
    stop: CancellationToken,
) -> mpsc::Receiver<Result<Event, StoreError>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    let client = tx.clone();
    tokio::spawn(async move {
        let mut f = Follower {
            store,
            tenant,
            run_id,
            last: after_seq,
            tx,
        };
        // A client that went away while the run is quiet must not leave
        // this task waiting for the run's next event.
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = client.closed() => {}
            _ = f.run() => {}
        }
    });
    rx
}

struct Follower {
    store: Arc<dyn Store>,
    tenant: TenantId,
    run_id: String,
    /// Highest seq sent.
    last: i64,
    tx: mpsc::Sender<Result<Event, StoreError>>,
}

/// Why following ended.
enum End {
    Terminal,
    Gone,
}

impl Follower {
    async fn run(&mut self) {
        // Subscribe first: anything committed after this is announced to us,
        // anything before it is in the store.
        let mut sub = self.store.hub().subscribe(&self.run_id);
        if self.catch_up().await.is_err() {
            return;
        }
        loop {
            let more = match sub.recv().await {
                Ok(HubMessage::Events(events)) => self.take_live(&events).await,
                Ok(HubMessage::Upto(seq)) if seq > self.last => self.catch_up().await,
                Ok(HubMessage::Upto(_)) => Ok(()),
                Err(RecvError::Lagged(_)) => self.catch_up().await,
                Err(RecvError::Closed) => return,
            };
            if more.is_err() {
                return;
            }
        }
    }

    async fn take_live(&mut self, events: &[Event]) -> Result<(), End> {
        for e in events {
            if e.seq <= self.last {
                continue;
            }
            if e.seq != self.last + 1 {
                // Something in between was not announced to us: read it.
                return self.catch_up().await;
            }
            self.send(e.clone()).await?;
        }
        Ok(())
    }

    async fn catch_up(&mut self) -> Result<(), End> {
        let mut waited = Duration::ZERO;
        loop {
            let page = self
                .store
                .events_after(&self.tenant, &self.run_id, self.last, PAGE)
                .await;
            let page = match page {
                Ok(p) => p,
                // The database is away (a PostgreSQL restart): the stream
                // stays open (keep-alives go on) and reads again, rather than
                // ending on an error every reader would reconnect after.
                Err(StoreError::Unavailable(e)) if waited < STORE_WAIT => {
                    tracing::debug!(run = self.run_id, error = %e, "store unavailable; reading again shortly");
                    tokio::time::sleep(STORE_RETRY).await;
                    waited += STORE_RETRY;
                    continue;
                }
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return Err(End::Gone);
                }
            };
            let full = page.len() == PAGE as usize;
            for e in page {
                self.send(e).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, e: Event) -> Result<(), End> {
        let terminal = e.kind.is_terminal();
        self.last = e.seq;
        self.tx.send(Ok(e)).await.map_err(|_| End::Gone)?;
        if terminal { Err(End::Terminal) } else { Ok(()) }
    }
}
