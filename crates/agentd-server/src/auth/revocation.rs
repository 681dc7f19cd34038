//! Open streams by the key that opened them, so revoking or rotating a key
//! closes them at once (DESIGN §2) instead of when the client hangs up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentd_store::SecretDigest;
use tokio_util::sync::CancellationToken;

use super::Credential;

/// One key's open streams: slot → (the secret it authenticated with, its token).
type Slots = HashMap<u64, (SecretDigest, CancellationToken)>;

#[derive(Default)]
pub(crate) struct KeyStreams {
    next: AtomicU64,
    /// By key id.
    open: Mutex<HashMap<String, Slots>>,
}

/// Held by a stream for its life; deregisters it when dropped.
pub(crate) struct StreamSlot {
    streams: Arc<KeyStreams>,
    key_id: String,
    slot: u64,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slots) = open.get_mut(&self.key_id) {
            slots.remove(&self.slot);
            if slots.is_empty() {
                open.remove(&self.key_id);
            }
        }
    }
}

impl KeyStreams {
    /// A token for a new stream: a child of `parent` (shutdown), also
    /// cancelled when the credential's key is revoked or rotated away.
    pub fn open(
        self: &Arc<Self>,
        parent: &CancellationToken,
        credential: &Credential,
    ) -> (CancellationToken, Option<StreamSlot>) {
        let token = parent.child_token();
        let Credential::Key { id, secret } = credential else {
            return (token, None);
        };
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .insert(slot, (*secret, token.clone()));
        let guard = StreamSlot {
            streams: self.clone(),
            key_id: id.clone(),
            slot,
        };
        (token, Some(guard))
    }

    /// Closes the key's streams, except those opened with `keep` (the new
    /// secret after a rotation, or the old one still in its grace period).
    pub fn close(&self, key_id: &str, keep: &[SecretDigest]) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slots) = open.get(key_id) {
            for (secret, token) in slots.values() {
                if !keep.contains(secret) {
                    token.cancel();
                }
            }
        }
    }
}

/// Closes streams whose key was revoked or rotated on another node (the
/// PostgreSQL store announces such changes; SQLite has no other node): the
/// key is re-read, and only streams on a secret it still accepts stay open.
/// A rotation's old secret is closed again when its grace ends.
pub(crate) async fn follow_remote_changes(
    streams: Arc<KeyStreams>,
    store: Arc<dyn agentd_store::Store>,
    mut changes: tokio::sync::broadcast::Receiver<String>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let key_id = tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.recv() => match change {
                Ok(id) => id,
                // Missed announcements: nothing to re-read by name; a
                // revoked key is still refused at its next request.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
        };
        let key = match store.find_api_key(&key_id).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                streams.close(&key_id, &[]);
                continue;
            }
            Err(e) => {
                tracing::warn!(key = key_id, error = %e, "cannot re-read a changed key");
                continue;
            }
        };
        if key.revoked_at.is_some() {
            streams.close(&key_id, &[]);
            continue;
        }
        let now = agentd_core::time::now_millis();
        match key.previous.filter(|p| p.valid_until > now) {
            None => streams.close(&key_id, &[key.secret]),
            Some(previous) => {
                streams.close(&key_id, &[key.secret, previous.digest]);
                let streams = streams.clone();
                let wait = std::time::Duration::from_millis((previous.valid_until - now) as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    streams.close(&key_id, &[key.secret]);
                });
            }
        }
    }
}
