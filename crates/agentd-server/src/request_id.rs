//! Gives every request an id (`x-request-id` on every response) and renders
//! error envelopes with it.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorEnvelope;

/// The id of the request being served; handlers put it in bodies that echo it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Largest plain-text error body from a framework layer worth reading.
const MAX_FOREIGN_ERROR: usize = 4096;

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = agentd_core::new_id("req");
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    let envelope = match response.extensions_mut().remove::<ErrorEnvelope>() {
        Some(e) => Some(e),
        None if is_foreign_error(&response) => {
            // A rejection from a framework layer: keep its words, give it our shape.
            let (parts, body) = std::mem::take(&mut response).into_parts();
            let text = axum::body::to_bytes(body, MAX_FOREIGN_ERROR)
                .await
                .unwrap_or_default();
            response = Response::from_parts(parts, Body::empty());
            Some(ErrorEnvelope {
                error: String::from_utf8_lossy(&text).trim().to_owned(),
                reason_code: reason_for(response.status()),
                request_id: String::new(),
            })
        }
        None => None,
    };
    if let Some(mut envelope) = envelope {
        envelope.request_id = id.clone();
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        *response.body_mut() = Body::from(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.remove(header::CONTENT_LENGTH);
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was never read: this connection cannot carry
        // another request, so say so rather than let a client reuse it.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn is_foreign_error(response: &Response) -> bool {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !json
}

fn reason_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        s if s.is_client_error() => "INVALID_REQUEST",
        _ => "INTERNAL",
    }
}
