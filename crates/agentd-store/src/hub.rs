//! In-process fan-out of committed events and wake-ups.
//!
//! The store publishes here only after a commit, so anything a reader receives
//! is already durable. Readers never depend on the hub for completeness: a
//! lagging receiver, or a [`HubMessage::Upto`] from another node, sends them
//! back to the store by cursor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentd_core::Event;
use tokio::sync::{Notify, broadcast};

/// Batches buffered per run before a slow reader is told it lagged (it then
/// re-reads the store, losing nothing). Small on purpose: a broadcast ring
/// keeps its last messages alive until overwritten, so at 64 every streaming
/// run held ~50 KB of old events; readers keep up with far fewer.
const RUN_CHANNEL_CAPACITY: usize = 16;

#[derive(Clone, Debug)]
pub enum HubMessage {
    /// Newly committed events of one run, in seq order.
    Events(Arc<[Event]>),
    /// Events up to this seq are committed (sent where only the fact is known,
    /// e.g. from another node); read them from the store.
    Upto(i64),
}

/// A cheap-to-clone handle; all clones share one hub.
#[derive(Clone, Default)]
pub struct EventHub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Only runs someone is watching have an entry.
    runs: Mutex<HashMap<String, broadcast::Sender<HubMessage>>>,
    /// Workers wait on this for newly claimable runs.
    work: Notify,
    /// Run ids with a new control row (cancel, signal) for their lease holder.
    controls: Mutex<Option<broadcast::Sender<String>>>,
    /// Ids of API keys revoked or rotated on another node, so this node closes
    /// the streams they opened here (the local node closes its own directly).
    keys: Mutex<Option<broadcast::Sender<String>>>,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follow one run. Subscribe before reading the store, then skip what the
    /// read already returned: nothing committed in between is missed.
    pub fn subscribe(&self, run_id: &str) -> RunSubscription {
        let mut runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        let rx = runs
            .entry(run_id.to_owned())
            .or_insert_with(|| broadcast::channel(RUN_CHANNEL_CAPACITY).0)
            .subscribe();
        RunSubscription {
            hub: self.clone(),
            run_id: run_id.to_owned(),
            rx: Some(rx),
        }
    }

    pub fn publish(&self, run_id: &str, message: HubMessage) {
        let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = runs.get(run_id) {
            let _ = tx.send(message);
        }
    }

    /// Number of runs with at least one watcher (for metrics and tests).
    pub fn watched_runs(&self) -> usize {
        self.inner.runs.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Tell workers there may be a run to claim.
    pub fn wake_workers(&self) {
        self.inner.work.notify_waiters();
        self.inner.work.notify_one();
    }

    /// Resolves on the next [`EventHub::wake_workers`]. Call `enable()` on the
    /// pinned future before looking for work so a wake-up in between is kept.
    pub fn work_available(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.work.notified()
    }

    /// What a committed write tells this process: each run's new events to
    /// its watchers (`events` grouped by run, as writers append them), control
    /// rows to lease holders, and maybe a wake-up to idle workers. The events
    /// move into the messages: every watcher of a run shares one copy.
    pub(crate) fn announce_commit(
        &self,
        events: Vec<Event>,
        controls: &[String],
        wake_workers: bool,
    ) {
        let mut events = events.into_iter().peekable();
        while let Some(first) = events.next() {
            let mut group = vec![first];
            while let Some(e) = events.next_if(|e| e.run_id == group[0].run_id) {
                group.push(e);
            }
            let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = runs.get(&group[0].run_id) {
                let _ = tx.send(HubMessage::Events(group.into()));
            }
        }
        for run_id in controls {
            self.publish_control(run_id);
        }
        if wake_workers {
            self.wake_workers();
        }
    }

    pub fn subscribe_controls(&self) -> broadcast::Receiver<String> {
        let mut guard = self
            .inner
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard
            .get_or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    pub fn publish_control(&self, run_id: &str) {
        let guard = self
            .inner
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(run_id.to_owned());
        }
    }
}

impl EventHub {
    /// Sends every follower back to the store: after a gap in what this hub
    /// could have heard (another node's notifications were missed while the
    /// listener reconnected), a re-read is the only way to be sure.
    pub fn resync_all(&self) {
        let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        for tx in runs.values() {
            let _ = tx.send(HubMessage::Upto(i64::MAX));
        }
    }

    /// Key ids changed by another node; see [`EventHub::publish_key_change`].
    pub fn subscribe_key_changes(&self) -> broadcast::Receiver<String> {
        let mut guard = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .get_or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
    }

    /// An API key was revoked or rotated elsewhere: whoever holds streams
    /// opened with it re-reads the key and closes what it no longer allows.
    pub fn publish_key_change(&self, key_id: &str) {
        let guard = self.inner.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(key_id.to_owned());
        }
    }
}

/// A reader's subscription to one run; dropping the last one frees the entry.
pub struct RunSubscription {
    hub: EventHub,
    run_id: String,
    rx: Option<broadcast::Receiver<HubMessage>>,
}

impl RunSubscription {
    /// The next message; `Err(Lagged)` means messages were dropped and the
    /// reader must catch up from the store.
    pub async fn recv(&mut self) -> Result<HubMessage, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for RunSubscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut runs = self
            .hub
            .inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if runs
            .get(&self.run_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            runs.remove(&self.run_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_are_freed_with_their_last_subscriber() {
        let hub = EventHub::new();
        let mut a = hub.subscribe("r1");
        let b = hub.subscribe("r1");
        assert_eq!(hub.watched_runs(), 1);
        hub.publish("r1", HubMessage::Upto(3));
        assert!(matches!(a.recv().await, Ok(HubMessage::Upto(3))));
        drop(a);
        assert_eq!(hub.watched_runs(), 1);
        drop(b);
        assert_eq!(hub.watched_runs(), 0);
    }
}
