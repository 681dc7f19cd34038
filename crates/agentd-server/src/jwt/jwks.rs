//! RS256 public keys from a JWKS (RFC 7517): a file read once at startup, or
//! a URL fetched at startup and kept fresh, because identity providers
//! rotate keys and publish the new one before they sign with it.
//!
//! A URL is refetched every 10 minutes, and when a token names an unknown
//! `kid` — at most once a minute, so a flood of forged `kid`s cannot turn
//! agentd into a load generator against the provider. A failed refresh keeps
//! the keys already held.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;

use super::JwtConfigError;

/// How long a JWKS fetch may take before startup or a refresh gives up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Larger than any real key set; a bigger answer is not one.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Keys below 2048 bits are within reach of factoring; never trust them.
const MIN_MODULUS_BYTES: usize = 256;

/// When a URL's keys are refetched.
pub(super) struct Timing {
    /// Unconditionally, this often.
    pub(super) every: Duration,
    /// On an unknown `kid`, no more often than this.
    pub(super) unknown_kid_gap: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            every: Duration::from_secs(600),
            unknown_kid_gap: Duration::from_secs(60),
        }
    }
}

/// The verifier's key set, and for a URL the task that refreshes it.
pub(super) struct JwksKeys {
    shared: Arc<Shared>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JwksKeys {
    /// The refresher lives exactly as long as the verifier that owns it.
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

struct Shared {
    set: RwLock<Arc<KeySet>>,
    remote: Option<Remote>,
}

struct Remote {
    url: reqwest::Url,
    client: reqwest::Client,
    timing: Timing,
    /// When an unknown `kid` last caused a refetch.
    last_kid_refresh: Mutex<Option<Instant>>,
    /// Wakes the refresher early (an unknown `kid` seen by sync `verify`).
    wake: tokio::sync::Notify,
    /// One fetch at a time; a waiter learns when the one in flight is done.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksKeys {
    pub(super) fn from_file(path: &Path) -> Result<JwksKeys, JwtConfigError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| JwtConfigError::JwksRead {
            path: origin.clone(),
            source,
        })?;
        Ok(JwksKeys {
            shared: Arc::new(Shared {
                set: RwLock::new(Arc::new(KeySet::parse(&bytes, &origin)?)),
                remote: None,
            }),
            refresher: None,
        })
    }

    /// Fetches the set now (startup fails if that fails) and starts the
    /// refresher on the current tokio runtime.
    pub(super) async fn from_url(text: &str, timing: Timing) -> Result<JwksKeys, JwtConfigError> {
        let url = check_url(text)?;
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT / 2)
            // Keys come from the configured place or not at all.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JwtConfigError::JwksFetch {
                url: text.to_owned(),
                reason: e.to_string(),
            })?;
        let set = fetch(&client, &url).await?;
        let shared = Arc::new(Shared {
            set: RwLock::new(Arc::new(set)),
            remote: Some(Remote {
                url,
                client,
                timing,
                last_kid_refresh: Mutex::new(None),
                wake: tokio::sync::Notify::new(),
                fetching: tokio::sync::Mutex::new(()),
            }),
        });
        let refresher = tokio::spawn(refresh_loop(shared.clone()));
        Ok(JwksKeys {
            shared,
            refresher: Some(refresher),
        })
    }

    pub(super) fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        let set = self
            .shared
            .set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        set.find(kid)
    }

    /// An unknown `kid` was seen: wake the refresher, if a minute has passed.
    pub(super) fn request_refresh(&self) {
        if let Some(remote) = &self.shared.remote
            && remote.claim_kid_refresh()
        {
            remote.wake.notify_one();
        }
    }

    /// An unknown `kid` was seen: refetch now if a minute has passed, else
    /// wait for a fetch already in flight (if any) to land.
    pub(super) async fn refresh_for_unknown_kid(&self) {
        let Some(remote) = &self.shared.remote else {
            return;
        };
        if remote.claim_kid_refresh() {
            self.shared.refresh().await;
        } else {
            drop(remote.fetching.lock().await);
        }
    }
}

impl Remote {
    /// True at most once per `unknown_kid_gap`.
    fn claim_kid_refresh(&self) -> bool {
        let mut last = self
            .last_kid_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < self.timing.unknown_kid_gap => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

impl Shared {
    async fn refresh(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        let _one_at_a_time = remote.fetching.lock().await;
        match fetch(&remote.client, &remote.url).await {
            Ok(set) => {
                let count = set.keys.len();
                *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                tracing::debug!(url = %remote.url, keys = count, "JWKS refreshed");
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys held"),
        }
    }
}

async fn refresh_loop(shared: Arc<Shared>) {
    let Some(remote) = &shared.remote else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(remote.timing.every) => {}
            _ = remote.wake.notified() => {}
        }
        shared.refresh().await;
    }
}

/// https anywhere; plain http only to this machine, since keys fetched over
/// a network in clear text could be swapped for an attacker's.
fn check_url(text: &str) -> Result<reqwest::Url, JwtConfigError> {
    let refuse = |reason| JwtConfigError::JwksUrl {
        url: text.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(text).map_err(|_| refuse("not an absolute URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(refuse("the scheme must be https"));
    }
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => return Err(refuse("no host")),
    };
    if url.scheme() == "http" && !loopback {
        return Err(refuse(
            "plain http is allowed only to a loopback host; use https",
        ));
    }
    Ok(url)
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<KeySet, JwtConfigError> {
    let failed = |reason: String| JwtConfigError::JwksFetch {
        url: url.to_string(),
        reason,
    };
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(failed(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
    }
    KeySet::parse(&body, url.as_str())
}

/// The usable keys of one JWKS document.
struct KeySet {
    keys: Vec<(Option<String>, Arc<DecodingKey>)>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Value>,
}

impl KeySet {
    /// Keeps RSA signing keys of 2048 bits or more meant for RS256 (or for
    /// no stated algorithm); skips the rest, since a provider's set often
    /// also holds EC or encryption keys that are none of our business.
    fn parse(bytes: &[u8], origin: &str) -> Result<KeySet, JwtConfigError> {
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|e| JwtConfigError::JwksInvalid {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
        let keys: Vec<_> = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter(usable)
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some((jwk.common.key_id, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err(JwtConfigError::JwksNoKeys {
                origin: origin.to_owned(),
            });
        }
        Ok(KeySet { keys })
    }

    /// The key a token's `kid` names; without a `kid`, the only key if the
    /// set has exactly one (never a guess among several).
    fn find(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _)| k.as_deref() == Some(kid))
                .map(|(_, key)| key.clone()),
            None => match self.keys.as_slice() {
                [(_, key)] => Some(key.clone()),
                _ => None,
            },
        }
    }
}

fn usable(jwk: &Jwk) -> bool {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return false;
    };
    let big_enough = URL_SAFE_NO_PAD.decode(&rsa.n).is_ok_and(|n| {
        let significant = n.iter().skip_while(|b| **b == 0).count();
        significant >= MIN_MODULUS_BYTES
    });
    let for_rs256 = jwk
        .common
        .key_algorithm
        .is_none_or(|a| a == KeyAlgorithm::RS256);
    let for_signing = jwk
        .common
        .public_key_use
        .as_ref()
        .is_none_or(|u| *u == PublicKeyUse::Signature);
    big_enough && for_rs256 && for_signing
}
