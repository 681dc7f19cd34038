//! Request fingerprints for idempotency keys: SHA-256 over the body's
//! canonical JSON (keys sorted, no insignificant whitespace), so a retry that
//! re-serialises the same object in another key order still matches.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Longest key accepted; longer ones are a client bug.
const MAX_KEY_LEN: usize = 255;

pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(format!(
            "invalid idempotency-key header: 1 to {MAX_KEY_LEN} printable characters"
        )));
    }
    Ok(())
}

pub fn fingerprint(body: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"input": {"b": 1, "a": [1, {"y": 2, "x": 3}]}, "metadata": {}});
        let b: Value = serde_json::from_str(
            r#"{"metadata": {}, "input": {"a": [1, {"x": 3, "y": 2}], "b": 1}}"#,
        )
        .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"input": {}})));
    }
}
