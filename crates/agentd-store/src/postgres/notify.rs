//! Cross-node fan-out (DESIGN §4): each commit batch ends with one `NOTIFY` on
//! the schema's channel carrying `(run_id, max_seq)` pairs and wake-ups, and a
//! listener per node feeds what other nodes committed into its own
//! [`EventHub`]. Notifications are only hints: a reader told `Upto(seq)`
//! reads the store, and after a listener reconnect every reader re-reads.

use std::collections::BTreeMap;
use std::time::Duration;

use agentd_core::Event;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::hub::{EventHub, HubMessage};

/// PostgreSQL refuses payloads of 8000 bytes or more; stay below.
const MAX_PAYLOAD: usize = 7000;

/// One batch's announcement, as sent on the wire (short keys: it is JSON in
/// a size-limited payload).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Note {
    /// The node that committed it; its own listener skips it.
    #[serde(rename = "n")]
    node: String,
    /// Highest committed seq per run.
    #[serde(rename = "e", default, skip_serializing_if = "BTreeMap::is_empty")]
    events: BTreeMap<String, i64>,
    /// A run may have become claimable.
    #[serde(rename = "w", default, skip_serializing_if = "std::ops::Not::not")]
    wake: bool,
    /// Runs with a new control row (cancel) for their lease holder.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    controls: Vec<String>,
    /// API keys revoked or rotated.
    #[serde(rename = "k", default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
}

impl Note {
    pub fn new(node: &str) -> Note {
        Note {
            node: node.to_owned(),
            ..Note::default()
        }
    }

    pub fn add(&mut self, events: &[Event], wake: bool, controls: &[String], keys: &[String]) {
        for e in events {
            let seq = self.events.entry(e.run_id.clone()).or_insert(e.seq);
            *seq = (*seq).max(e.seq);
        }
        self.wake |= wake;
        self.controls.extend(controls.iter().cloned());
        self.keys.extend(keys.iter().cloned());
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && !self.wake && self.controls.is_empty() && self.keys.is_empty()
    }

    /// The payloads to send: one, unless the batch touched so many runs that
    /// it must be split to fit PostgreSQL's limit.
    pub fn payloads(self) -> Vec<String> {
        if self.is_empty() {
            return Vec::new();
        }
        let whole = serde_json::to_string(&self).unwrap_or_default();
        if whole.len() <= MAX_PAYLOAD {
            return vec![whole];
        }
        let mut out = Vec::new();
        let mut part = Note {
            node: self.node.clone(),
            wake: self.wake,
            controls: self.controls,
            keys: self.keys,
            ..Note::default()
        };
        let mut size = 0;
        for (run, seq) in self.events {
            size += run.len() + 24;
            part.events.insert(run, seq);
            if size > MAX_PAYLOAD - 1000 {
                out.push(serde_json::to_string(&part).unwrap_or_default());
                part = Note::new(&self.node);
                size = 0;
            }
        }
        if !part.is_empty() {
            out.push(serde_json::to_string(&part).unwrap_or_default());
        }
        out
    }

    /// Feeds another node's announcement into this node's hub.
    fn deliver(self, hub: &EventHub) {
        for (run, seq) in &self.events {
            hub.publish(run, HubMessage::Upto(*seq));
        }
        for run in &self.controls {
            hub.publish_control(run);
        }
        for key in &self.keys {
            hub.publish_key_change(key);
        }
        if self.wake {
            hub.wake_workers();
        }
    }
}

/// The listener task: connects, LISTENs, and delivers other nodes' notes
/// until the pool closes. After every (re)connect it tells every reader to
/// re-read the store and every worker to look for work, since anything
/// announced while it was away was missed.
pub(crate) async fn listen(pool: PgPool, hub: EventHub, channel: String, node: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "store listener cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::debug!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        hub.resync_all();
        hub.wake_workers();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match serde_json::from_str::<Note>(n.payload()) {
                    Ok(note) if note.node == node => {}
                    Ok(note) => note.deliver(&hub),
                    Err(e) => tracing::warn!(error = %e, "unreadable store notification"),
                },
                Ok(None) => {
                    tracing::warn!("store listener lost its connection; reconnecting");
                    break;
                }
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "store listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentd_core::EventType;

    fn event(run: &str, seq: i64) -> Event {
        Event::new(
            run.into(),
            seq,
            EventType::StepProgress,
            0,
            serde_json::Value::Null.into(),
        )
    }

    #[test]
    fn a_batch_announces_each_runs_highest_seq() {
        let mut note = Note::new("n1");
        note.add(&[event("r1", 3), event("r1", 4)], false, &[], &[]);
        note.add(&[event("r2", 9)], true, &["r3".into()], &[]);
        let payloads = note.payloads();
        assert_eq!(payloads.len(), 1);
        let back: Note = serde_json::from_str(&payloads[0]).unwrap();
        assert_eq!(back.events.get("r1"), Some(&4));
        assert_eq!(back.events.get("r2"), Some(&9));
        assert!(back.wake);
        assert_eq!(back.controls, vec!["r3".to_string()]);
    }

    #[test]
    fn a_large_batch_is_split_under_the_payload_limit() {
        let mut note = Note::new("n1");
        let events: Vec<Event> = (0..2000)
            .map(|i| event(&format!("run_{i:026}"), i))
            .collect();
        note.add(&events, true, &[], &[]);
        let payloads = note.payloads();
        assert!(payloads.len() > 1);
        let mut seen = 0;
        for p in &payloads {
            assert!(p.len() < 8000, "{} bytes", p.len());
            seen += serde_json::from_str::<Note>(p).unwrap().events.len();
        }
        assert_eq!(seen, 2000);
    }

    #[test]
    fn nothing_to_say_sends_nothing() {
        assert!(Note::new("n1").payloads().is_empty());
    }
}
