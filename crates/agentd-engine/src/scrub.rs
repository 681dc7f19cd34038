//! Scrubbing secrets out of what agentd writes (DESIGN §3): configured secret
//! values (model keys, the admin token, static keys, `[redaction]` variables)
//! and credential headers are replaced before an event is appended, so no
//! reader, log or backup ever holds them.

use regex::Regex;
use serde_json::Value;

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not scrubbed: replacing every `abc` in a
/// model's answer would destroy text and protect nothing.
const MIN_SECRET_LEN: usize = 8;

/// Cheap to share behind an `Arc`; built once at startup.
#[derive(Debug)]
pub struct Scrubber {
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
    /// `Authorization: Bearer …`, `x-api-key=…` and friends: the value goes.
    header: Regex,
    /// A bare `Bearer <token>` outside a header line.
    bearer: Regex,
}

impl Scrubber {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Scrubber {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber {
            secrets,
            header: Regex::new(
                r#"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key|x-agentd-daemon-token|x-session-api-key|set-cookie|cookie)(\s*["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?[^\s"',;]+"#,
            )
            .expect("the header pattern compiles"),
            bearer: Regex::new(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/:=-]{8,}")
                .expect("the bearer pattern compiles"),
        }
    }

    /// A scrubber that changes nothing (tests, tools).
    pub fn none() -> Scrubber {
        Scrubber::new(Vec::new())
    }

    /// `Some(scrubbed)` when `text` held anything to scrub.
    pub fn scrub_str(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in &self.secrets {
            let current = out.as_deref().unwrap_or(text);
            if current.contains(secret.as_str()) {
                out = Some(current.replace(secret.as_str(), REDACTED));
            }
        }
        let current = out.as_deref().unwrap_or(text);
        if self.header.is_match(current) {
            out = Some(
                self.header
                    .replace_all(current, "$1$2[REDACTED]")
                    .into_owned(),
            );
        }
        let current = out.as_deref().unwrap_or(text);
        if self.bearer.is_match(current) {
            out = Some(
                self.bearer
                    .replace_all(current, "$1[REDACTED]")
                    .into_owned(),
            );
        }
        out
    }

    /// Scrubs every string in `value` in place; `true` if any changed.
    pub fn scrub_value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => match self.scrub_str(s) {
                Some(clean) => {
                    *s = clean;
                    true
                }
                None => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, v| self.scrub_value(v) | changed),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |changed, v| self.scrub_value(v) | changed),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configured_secrets_and_credential_headers_are_scrubbed() {
        let s = Scrubber::new(["sk-live-123456789".to_owned(), "short".to_owned()]);
        let cases = [
            ("key is sk-live-123456789!", "key is [REDACTED]!"),
            ("short stays", "short stays"),
            (
                "Authorization: Bearer abc.def.ghi",
                "Authorization: [REDACTED]",
            ),
            (
                "curl -H 'x-api-key: zzz' url",
                "curl -H 'x-api-key: [REDACTED]' url",
            ),
            (r#"{"api_key": "v4lue"}"#, r#"{"api_key": "[REDACTED]"}"#),
            (
                "use bearer eyJhbGciOiJIUzI1NiJ9 now",
                "use bearer [REDACTED] now",
            ),
            ("Cookie: sid=abc; x=1", "Cookie: [REDACTED]; x=1"),
        ];
        for (input, want) in cases {
            assert_eq!(
                s.scrub_str(input).as_deref().unwrap_or(input),
                want,
                "{input}"
            );
        }
        assert_eq!(s.scrub_str("nothing to see"), None);
    }

    #[test]
    fn values_are_walked() {
        let s = Scrubber::new(["hunter2hunter2".to_owned()]);
        let mut v = json!({"a": ["x hunter2hunter2", 1, {"b": "hunter2hunter2"}], "c": true});
        assert!(s.scrub_value(&mut v));
        assert_eq!(
            v,
            json!({"a": ["x [REDACTED]", 1, {"b": "[REDACTED]"}], "c": true})
        );
        assert!(!s.scrub_value(&mut v));
    }
}
