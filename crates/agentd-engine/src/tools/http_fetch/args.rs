//! The arguments a model passes to `http_fetch`, checked strictly: an
//! unknown field or a wrong type is an error naming the field, so a model
//! that misspells `headers` learns it instead of sending a bare request.

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::error::FetchError;

/// Methods a model may use. No CONNECT/TRACE/OPTIONS: nothing an API
/// client needs, and CONNECT would turn the tool into a tunnel.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Request headers the model may not set. `Host` would let a request for
/// an allowed name be routed as another virtual host; `Proxy-*` and the
/// hop-by-hop ones belong to the connection, which the tool owns.
const REFUSED_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

#[derive(Debug)]
pub struct FetchArgs {
    pub url: String,
    pub method: Method,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
}

/// The JSON Schema shown to the model.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "description": "Absolute http:// or https:// URL; its host must be on the agent's egress allow-list."
            },
            "method": {
                "type": "string",
                "enum": METHODS,
                "default": "GET"
            },
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Request headers. Host, Proxy-* and connection-level headers are refused."
            },
            "body": {
                "type": "string",
                "description": "Request body, sent as is."
            }
        },
        "required": ["url"],
        "additionalProperties": false
    })
}

pub fn parse(arguments: &Value) -> Result<FetchArgs, FetchError> {
    let bad = |msg: String| FetchError::InvalidArguments(msg);
    let obj = arguments.as_object().ok_or_else(|| {
        bad("arguments must be a JSON object like {\"url\": \"https://…\"}".into())
    })?;
    if let Some(field) = obj
        .keys()
        .find(|k| !["url", "method", "headers", "body"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown field {field:?} (expected url, method, headers, body)"
        )));
    }
    let url = match obj.get("url") {
        Some(Value::String(url)) => url.clone(),
        Some(_) => return Err(bad("field \"url\" must be a string".into())),
        None => return Err(bad("missing field \"url\"".into())),
    };
    let method = match obj.get("method") {
        None | Some(Value::Null) => Method::GET,
        Some(Value::String(m)) => {
            let upper = m.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(bad(format!(
                    "field \"method\": {m:?} is not one of {}",
                    METHODS.join(", ")
                )));
            }
            Method::from_bytes(upper.as_bytes())
                .map_err(|_| bad(format!("field \"method\": {m:?} is not a method")))?
        }
        Some(_) => return Err(bad("field \"method\" must be a string".into())),
    };
    let headers = match obj.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| header(name, value))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(
                "field \"headers\" must be an object of header names to string values".into(),
            ));
        }
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return Err(bad("field \"body\" must be a string".into())),
    };
    Ok(FetchArgs {
        url,
        method,
        headers,
        body,
    })
}

fn header(name: &str, value: &Value) -> Result<(HeaderName, HeaderValue), FetchError> {
    let bad = |msg: String| FetchError::InvalidArguments(msg);
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("headers: {name:?} is not a valid header name")))?;
    if REFUSED_HEADERS.contains(&parsed.as_str()) || parsed.as_str().starts_with("proxy-") {
        return Err(FetchError::Header(format!(
            "the {name} header is refused (Host, Proxy-* and connection-level headers are set by the tool)"
        )));
    }
    let Value::String(value) = value else {
        return Err(bad(format!("headers.{name} must be a string")));
    };
    let value = HeaderValue::from_str(value)
        .map_err(|_| bad(format!("headers.{name} is not a valid header value")))?;
    Ok((parsed, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        parse(&v).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_full_arguments() {
        let a = parse(&json!({"url": "https://example.com"})).unwrap();
        assert_eq!(a.method, Method::GET);
        assert!(a.headers.is_empty() && a.body.is_none());
        let a = parse(&json!({
            "url": "https://example.com",
            "method": "post",
            "headers": {"X-Api-Key": "k", "Accept": "application/json"},
            "body": "{}"
        }))
        .unwrap();
        assert_eq!(a.method, Method::POST);
        assert_eq!(a.headers.len(), 2);
        let key = a.headers.iter().find(|(n, _)| n.as_str() == "x-api-key");
        assert_eq!(key.map(|(_, v)| v.as_bytes()), Some(&b"k"[..]));
        assert_eq!(a.body.as_deref(), Some("{}"));
    }

    #[test]
    fn problems_name_the_field() {
        assert!(err(json!("https://x")).starts_with("INVALID_ARGUMENTS: arguments must be"));
        assert!(err(json!({})).contains("missing field \"url\""));
        assert!(err(json!({"url": 5})).contains("\"url\" must be a string"));
        assert!(err(json!({"url": "u", "urls": []})).contains("unknown field \"urls\""));
        assert!(err(json!({"url": "u", "method": "TRACE"})).contains("\"method\": \"TRACE\""));
        assert!(err(json!({"url": "u", "method": "CONNECT"})).contains("\"method\""));
        assert!(err(json!({"url": "u", "method": 1})).contains("\"method\" must be a string"));
        assert!(err(json!({"url": "u", "headers": []})).contains("\"headers\" must be an object"));
        assert!(
            err(json!({"url": "u", "headers": {"X-A": 1}}))
                .contains("headers.X-A must be a string")
        );
        assert!(err(json!({"url": "u", "headers": {"bad name": "v"}})).contains("\"bad name\""));
        assert!(err(json!({"url": "u", "headers": {"X-A": "a\nb"}})).contains("headers.X-A"));
        assert!(err(json!({"url": "u", "body": {"a": 1}})).contains("\"body\" must be a string"));
    }

    #[test]
    fn connection_level_headers_are_refused() {
        for name in [
            "Host",
            "hOsT",
            "Proxy-Authorization",
            "proxy-connection",
            "Connection",
            "Transfer-Encoding",
            "Upgrade",
            "TE",
            "Content-Length",
            "Keep-Alive",
            "Trailer",
        ] {
            let e = parse(&json!({"url": "u", "headers": {name: "x"}})).unwrap_err();
            assert_eq!(e.code(), "HEADER_NOT_ALLOWED", "{name}");
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
        for name in ["Authorization", "User-Agent", "Accept", "X-Proxied-For"] {
            assert!(
                parse(&json!({"url": "u", "headers": {name: "x"}})).is_ok(),
                "{name}"
            );
        }
    }
}
