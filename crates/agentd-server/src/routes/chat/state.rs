//! The chat `state` (seed 002): what a client passes back to continue a
//! conversation. History stays on the server; the state only carries a token
//! binding the tenant to the conversation's session, HMAC-signed so a client
//! can neither forge one nor reach another tenant's history with it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use agentd_core::TenantId;

/// The server's signing key (`<data-dir>/chat-secret` or configured).
#[derive(Clone)]
pub struct ChatStateKey([u8; 32]);

impl ChatStateKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        ChatStateKey(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// `payload.signature`, both base64url.
    pub fn sign(&self, tenant: &TenantId, session_id: &str) -> String {
        let payload = serde_json::to_vec(&Binding {
            v: 1,
            t: tenant.to_string(),
            s: session_id.to_owned(),
        })
        .unwrap_or_default();
        let mut mac = self.mac();
        mac.update(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The binding a token carries, if this server signed it.
    pub fn verify(&self, token: &str) -> Option<(TenantId, String)> {
        let (payload, sig) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&sig).ok()?;
        let b: Binding = serde_json::from_slice(&payload).ok()?;
        Some((TenantId::parse(&b.t)?, b.s))
    }
}

#[derive(Serialize, Deserialize)]
struct Binding {
    v: u8,
    t: String,
    s: String,
}

/// The `state` object returned after a turn.
pub fn state_object(token: &str, response_id: &str, agent: &str) -> Value {
    json!({
        "session_token": token,
        "previous_response_id": response_id,
        "current_agent_name": agent,
        // Seed 002 clients expect the field; history lives on the server.
        "conversation_history": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_unaltered_and_with_the_same_key() {
        let key = ChatStateKey::new([7; 32]);
        let tenant = TenantId::parse("acme").unwrap();
        let token = key.sign(&tenant, "ses_1");
        assert_eq!(key.verify(&token), Some((tenant.clone(), "ses_1".into())));
        assert_eq!(ChatStateKey::new([8; 32]).verify(&token), None);
        let forged = key.sign(&TenantId::parse("other").unwrap(), "ses_1");
        let (forged_payload, _) = forged.split_once('.').unwrap();
        let (_, sig) = token.split_once('.').unwrap();
        assert_eq!(key.verify(&format!("{forged_payload}.{sig}")), None);
        assert_eq!(key.verify("garbage"), None);
        assert_eq!(key.verify(""), None);
    }
}
