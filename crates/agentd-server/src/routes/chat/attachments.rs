//! Seed 002's attachments: images and PDFs, base64, checked where they come
//! in — type, encoding, size, and that the bytes are what the type says —
//! so a model never gets a file silently dropped or mislabelled.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// Largest file, decoded (seed 002: 20 MB).
pub const MAX_ATTACHMENT_BYTES: usize = 20 * 1024 * 1024;

/// Room for four largest attachments (base64 is 4/3 of the bytes) and the
/// rest of the message.
pub const CHAT_BODY_LIMIT: usize = 4 * MAX_ATTACHMENT_BYTES * 4 / 3 + 1024 * 1024;

/// What each supported type's bytes start with.
const SUPPORTED: [(&str, &[&[u8]]); 5] = [
    ("image/jpeg", &[b"\xFF\xD8\xFF"]),
    ("image/png", &[b"\x89PNG\r\n\x1a\n"]),
    ("image/gif", &[b"GIF87a", b"GIF89a"]),
    ("image/webp", &[b"RIFF"]),
    ("application/pdf", &[b"%PDF-"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentIn {
    pub mime_type: String,
    pub data: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// Checks every attachment; returns them as the run's input keeps them
/// (`{mime_type, data, name}`, data re-encoded as plain standard base64).
pub fn check(items: &[Value]) -> Result<Vec<Value>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| check_one(i, item))
        .collect()
}

fn check_one(i: usize, item: &Value) -> Result<Value, ApiError> {
    let field = |name: &str| format!("attachments[{i}].{name}");
    let a: AttachmentIn = serde_json::from_value(item.clone())
        .map_err(|e| ApiError::InvalidRequest(format!("invalid field `attachments[{i}]`: {e}")))?;
    let mime = a.mime_type.trim().to_ascii_lowercase();
    let Some((_, magics)) = SUPPORTED.iter().find(|(m, _)| *m == mime) else {
        let names: Vec<&str> = SUPPORTED.iter().map(|(m, _)| *m).collect();
        return Err(ApiError::InvalidRequest(format!(
            "invalid field `{}`: unsupported type {:?} (supported: {})",
            field("mime_type"),
            a.mime_type,
            names.join(", ")
        )));
    };
    // A data URL's prefix is tolerated; whitespace (line-wrapped base64) too.
    let raw = a
        .data
        .split_once(";base64,")
        .filter(|(head, _)| head.starts_with("data:"))
        .map_or(a.data.as_str(), |(_, b64)| b64);
    let compact: String = raw.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.len() / 4 * 3 > MAX_ATTACHMENT_BYTES + 3 {
        return Err(too_large(&field("data")));
    }
    let bytes = STANDARD.decode(compact.as_bytes()).map_err(|_| {
        ApiError::InvalidRequest(format!(
            "invalid field `{}`: not valid base64",
            field("data")
        ))
    })?;
    if bytes.len() > MAX_ATTACHMENT_BYTES {
        return Err(too_large(&field("data")));
    }
    if bytes.is_empty() || !magics.iter().any(|m| bytes.starts_with(m)) {
        return Err(ApiError::InvalidRequest(format!(
            "invalid field `{}`: the bytes are not a {mime} file",
            field("data")
        )));
    }
    Ok(json!({
        "mime_type": mime,
        "data": STANDARD.encode(&bytes),
        "name": a.name.unwrap_or_default(),
    }))
}

fn too_large(field: &str) -> ApiError {
    ApiError::AttachmentTooLarge(format!(
        "`{field}` is over the {} MB limit for one attachment",
        MAX_ATTACHMENT_BYTES / (1024 * 1024)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    #[test]
    fn supported_files_pass_and_everything_else_is_refused() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        let ok =
            check(&[json!({"mime_type": "image/PNG", "data": b64(png), "name": "a.png"})]).unwrap();
        assert_eq!(ok[0]["mime_type"], "image/png");
        let url = format!("data:application/pdf;base64,{}", b64(b"%PDF-1.7 x"));
        assert!(check(&[json!({"mime_type": "application/pdf", "data": url})]).is_ok());
        for (item, why) in [
            (
                json!({"mime_type": "text/plain", "data": b64(b"hi")}),
                "unsupported",
            ),
            (json!({"mime_type": "image/png", "data": "***"}), "base64"),
            (
                json!({"mime_type": "image/png", "data": b64(b"%PDF-")}),
                "not a image/png",
            ),
            (json!({"mime_type": "image/png"}), "attachments[0]"),
        ] {
            let e = check(&[item]).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let big = vec![0xFFu8; MAX_ATTACHMENT_BYTES + 1];
        let e = check(&[json!({"mime_type": "image/jpeg", "data": b64(&big)})]).unwrap_err();
        assert!(matches!(e, ApiError::AttachmentTooLarge(_)));
    }
}
