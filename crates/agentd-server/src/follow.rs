//! Following a run's events: replay from the store, then live from the hub,
//! without gap or duplicate (DESIGN §4).
//!
//! The follower is a stream the response body polls directly: no task and no
//! channel of its own, so a live event costs one wake-up (the body's), not
//! two. It pulls from the hub only when the client takes the next event; if
//! the client is slow, its broadcast receiver lags and it goes back to the
//! store by cursor: a slow reader costs neither memory nor the run's progress.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use agentd_core::{Event, TenantId};
use agentd_store::{HubMessage, RunSubscription, Store, StoreError};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Events read from the store per page while catching up.
const PAGE: u32 = 500;
/// How long a follower waits for an unavailable store before it gives up
/// (and the stream ends with an error event), and how often it tries.
const STORE_WAIT: Duration = Duration::from_secs(60);
const STORE_RETRY: Duration = Duration::from_millis(250);

/// One event handed out, inside the batch it arrived in: a live batch is
/// shared by every follower of the run, so a reader costs no copy of it.
pub struct Followed {
    batch: Arc<[Event]>,
    index: usize,
}

impl Deref for Followed {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.batch[self.index]
    }
}

/// Events of `run_id` after `after_seq`, ending after the terminal event, on
/// a store error (yielded last), or when `stop` fires.
pub fn follow(
    store: Arc<dyn Store>,
    tenant: TenantId,
    run_id: String,
    after_seq: i64,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Followed, StoreError>> + Send + 'static {
    let follower = Follower {
        store,
        tenant,
        run_id,
        last: after_seq,
        sub: None,
        ready: Arc::new([]),
        next: 0,
        more_stored: true,
        ended: false,
    };
    futures::stream::unfold(follower, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    })
    .take_until(stop.cancelled_owned())
}

struct Follower {
    store: Arc<dyn Store>,
    tenant: TenantId,
    run_id: String,
    /// Highest seq handed out.
    last: i64,
    /// Taken on the first poll, before the first store read: anything
    /// committed after it is announced to us, anything before is stored.
    sub: Option<RunSubscription>,
    /// The batch being handed out (a store page or a hub message), in seq
    /// order, and the index of its next event.
    ready: Arc<[Event]>,
    next: usize,
    /// The store may hold events after `last` that the hub will not announce
    /// (first read, a full page, a lag, a notice from another node).
    more_stored: bool,
    /// The terminal event or an error was handed out.
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Followed, StoreError>> {
        if self.ended {
            return None;
        }
        if self.sub.is_none() {
            self.sub = Some(self.store.hub().subscribe(&self.run_id));
        }
        loop {
            while let Some(e) = self.ready.get(self.next) {
                let index = self.next;
                self.next += 1;
                if e.seq <= self.last {
                    continue;
                }
                if e.seq != self.last + 1 {
                    // Something in between was not announced to us: read it.
                    self.next = self.ready.len();
                    self.more_stored = true;
                    break;
                }
                self.last = e.seq;
                self.ended = e.kind.is_terminal();
                return Some(Ok(Followed {
                    batch: self.ready.clone(),
                    index,
                }));
            }
            if self.more_stored {
                if let Err(e) = self.read_page().await {
                    self.ended = true;
                    return Some(Err(e));
                }
                continue;
            }
            let sub = self.sub.as_mut()?;
            match sub.recv().await {
                Ok(HubMessage::Events(events)) => self.hand_out(events),
                Ok(HubMessage::Upto(seq)) => self.more_stored = seq > self.last,
                Err(RecvError::Lagged(_)) => self.more_stored = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Called only once the previous batch is handed out.
    fn hand_out(&mut self, batch: Arc<[Event]>) {
        self.ready = batch;
        self.next = 0;
    }

    /// One page after `last` into `ready`, waiting out a store that is away.
    async fn read_page(&mut self) -> Result<(), StoreError> {
        let mut waited = Duration::ZERO;
        loop {
            match self
                .store
                .events_after(&self.tenant, &self.run_id, self.last, PAGE)
                .await
            {
                Ok(page) => {
                    self.more_stored = page.len() == PAGE as usize;
                    self.hand_out(page.into());
                    return Ok(());
                }
                // The database is away (a PostgreSQL restart): the stream
                // stays open (keep-alives go on) and reads again, rather than
                // ending on an error every reader would reconnect after.
                Err(StoreError::Unavailable(e)) if waited < STORE_WAIT => {
                    tracing::debug!(run = self.run_id, error = %e, "store unavailable; reading again shortly");
                    tokio::time::sleep(STORE_RETRY).await;
                    waited += STORE_RETRY;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
