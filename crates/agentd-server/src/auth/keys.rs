//! API key secrets: minting, and checking a presented `key_id:secret` in
//! time that does not depend on which part was wrong.

use agentd_core::TenantId;
use agentd_core::time::Millis;
use agentd_store::{ApiKey, SecretDigest, Store, StoreError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Every key id starts with this, which is how a bearer token is told
/// apart from the admin token, a static key or a JWT.
pub const KEY_ID_PREFIX: &str = "key_";

/// A freshly minted secret: shown to the caller once, stored as its digest.
pub struct MintedSecret {
    pub secret: String,
    pub digest: SecretDigest,
}

pub fn mint_secret() -> MintedSecret {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("sk_{}", URL_SAFE_NO_PAD.encode(bytes));
    MintedSecret {
        digest: digest(&secret),
        secret,
    }
}

pub fn digest(secret: &str) -> SecretDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// `key_id:secret` → its parts, when it has the shape of an API key.
pub fn split_credential(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once(':')?;
    (id.starts_with(KEY_ID_PREFIX) && id.len() <= 64 && !secret.is_empty()).then_some((id, secret))
}

/// What checking a presented key found.
#[derive(Debug)]
pub enum KeyCheck {
    /// Usable now. `secret` is the digest that matched (the current one, or
    /// the previous one inside a rotation's grace period).
    Valid {
        key: Box<ApiKey>,
        secret: SecretDigest,
    },
    /// Unknown, wrong secret, revoked or expired — one answer for all, so a
    /// caller learns nothing. `tenant` is known when the key id exists, for
    /// the audit trail only.
    Invalid { tenant: Option<TenantId> },
}

/// Compared against when the key id is unknown, so that path does the same
/// work as a known id with a wrong secret.
const DECOY: SecretDigest = [0x5a; 32];

/// Looks the key up and compares the secret's digest with the current and
/// previous digests in constant time, whatever is found.
pub async fn check_key(
    store: &dyn Store,
    key_id: &str,
    secret: &str,
    now: Millis,
) -> Result<KeyCheck, StoreError> {
    let presented = digest(secret);
    let key = store.find_api_key(key_id).await?;
    let (current, previous, previous_live) = match &key {
        Some(k) => match k.previous {
            Some(p) => (k.secret, p.digest, p.valid_until > now),
            None => (k.secret, DECOY, false),
        },
        None => (DECOY, DECOY, false),
    };
    let matches_current: Choice = presented.ct_eq(&current);
    let matches_previous: Choice = presented.ct_eq(&previous) & Choice::from(previous_live as u8);
    let Some(key) = key else {
        return Ok(KeyCheck::Invalid { tenant: None });
    };
    let usable = key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > now);
    if usable && bool::from(matches_current) {
        Ok(KeyCheck::Valid {
            key: Box::new(key),
            secret: current,
        })
    } else if usable && bool::from(matches_previous) {
        Ok(KeyCheck::Valid {
            key: Box::new(key),
            secret: previous,
        })
    } else {
        Ok(KeyCheck::Invalid {
            tenant: Some(key.tenant_id),
        })
    }
}

/// Keys from `AGENTD_API_KEYS`: the default tenant, the `chat` scope.
#[derive(Clone, Default)]
pub struct StaticKeys {
    digests: Vec<SecretDigest>,
}

impl StaticKeys {
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> StaticKeys {
        StaticKeys {
            digests: keys
                .into_iter()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(digest)
                .collect(),
        }
    }

    /// The index of the matching key. Every key is compared, always.
    pub fn find(&self, token: &str) -> Option<usize> {
        let presented = digest(token);
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(presented.ct_eq(d)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_split_only_with_a_key_id() {
        assert_eq!(split_credential("key_abc:s3"), Some(("key_abc", "s3")));
        assert_eq!(split_credential("key_abc:"), None);
        assert_eq!(split_credential("admin:xyz"), None);
        assert_eq!(split_credential("no-colon"), None);
    }

    #[test]
    fn minted_secrets_are_distinct_and_digested() {
        let a = mint_secret();
        let b = mint_secret();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.digest, digest(&a.secret));
        assert!(a.secret.len() > 40);
    }

    #[test]
    fn static_keys_match_exactly() {
        let keys = StaticKeys::new(["alpha-key-1", " beta-key-2 ", ""]);
        assert_eq!(keys.find("alpha-key-1"), Some(0));
        assert_eq!(keys.find("beta-key-2"), Some(1));
        assert_eq!(keys.find("alpha-key"), None);
        assert_eq!(keys.find(""), None);
    }
}
