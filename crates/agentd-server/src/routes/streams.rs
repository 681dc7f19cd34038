//! Reading a run's events: a page, the `run_event` SSE stream (seed 001), and
//! the `run_updated` snapshot stream (seed 000).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use agentd_core::event::PublicEvent;
use agentd_store::StoreError;

use super::find_run;
use crate::AppState;
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::follow::follow;
use crate::sse;
use crate::views::{MAX_PAGE, RunView};

/// The first frame: clients are told to wait 1 s before reconnecting.
const HELLO_FRAME: Bytes = sse::fixed_frame("retry: 1000\n: stream open\n\n");

#[derive(Deserialize)]
pub struct EventsQuery {
    after_seq: Option<i64>,
    limit: Option<u32>,
}

/// A page of events in seq order.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub data: Vec<PublicEvent>,
    /// Pass as `after_seq` for the next page; null when this page was the last so far.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "events",
    params(("after_seq" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = EventPage), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn events_page(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    principal.require(Scope::RunsRead)?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "invalid field `limit`: must be between 1 and 1000".into(),
        ));
    }
    let after = q.after_seq.unwrap_or(0).max(0);
    find_run(&state, &principal, &id).await?;
    let events = state
        .store()
        .events_after(&principal.tenant, &id, after, limit)
        .await?;
    let next_cursor = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.seq.to_string()))
        .flatten();
    let read_inputs = principal.can(Scope::RunsReadInputs);
    Ok(Json(EventPage {
        data: events
            .iter()
            .map(|e| e.to_public_for(read_inputs))
            .collect(),
        next_cursor,
    }))
}

/// Where a reconnecting client resumes: `Last-Event-ID` wins over `?after_seq=`.
fn resume_point(headers: &HeaderMap, after_seq: Option<i64>) -> Result<i64, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let seq = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .ok_or_else(|| {
                ApiError::InvalidRequest("invalid Last-Event-ID header: expected a seq".into())
            })?;
        return Ok(seq);
    }
    Ok(after_seq.unwrap_or(0).max(0))
}

fn sse<S>(frames: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    sse::response(stream::once(async { HELLO_FRAME }).chain(frames))
}

/// A stream that cannot go on says why, with the reason code the same
/// failure gets as an HTTP error (`STORE_UNAVAILABLE` for a store outage).
fn error_event(e: StoreError) -> Bytes {
    let message = e.to_string();
    let reason = ApiError::from(e).reason_code();
    let data = serde_json::json!({"error": message, "reason_code": reason}).to_string();
    sse::frame(Some("error"), None, data.len(), |buf| buf.push_str(&data))
}

/// Every event of the run after the resume point, live, closing after the terminal one.
#[utoipa::path(get, path = "/v1/runs/{id}/events/stream", tag = "events",
    params(("after_seq" = Option<i64>, Query), ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream of `run_event`s; `id:` is the seq", body = PublicEvent)),
    security(("bearer" = [])))]
pub async fn events_stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    principal.require(Scope::RunsRead)?;
    let after = resume_point(&headers, q.after_seq)?;
    find_run(&state, &principal, &id).await?;
    let read_inputs = principal.can(Scope::RunsReadInputs);
    let (token, slot) = state.stream_token(&principal);
    let events =
        follow(state.store().clone(), principal.tenant, id, after, token).map(move |item| {
            // The stream owns its registration: dropped, it deregisters.
            let _slot = &slot;
            match item {
                Ok(e) => sse::frame(
                    Some("run_event"),
                    Some(e.seq),
                    e.public_json_len_hint(),
                    |buf| e.write_public_json(read_inputs, buf),
                ),
                Err(e) => error_event(e),
            }
        });
    Ok(sse(events))
}

/// Seed 000's stream: the run's snapshot at once, then one per status or step change.
#[utoipa::path(get, path = "/v1/runs/{id}/stream", tag = "events",
    responses((status = 200, description = "text/event-stream of `run_updated` snapshots", body = RunView)),
    security(("bearer" = [])))]
pub async fn run_updates(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Scope::RunsRead)?;
    let run = find_run(&state, &principal, &id).await?;
    let read_inputs = principal.can(Scope::RunsReadInputs);
    let snapshot = move |run: &agentd_core::Run| {
        let view = RunView::of(run).redacted_unless(read_inputs);
        let data = serde_json::to_string(&view).unwrap_or_default();
        sse::frame(Some("run_updated"), None, data.len(), |buf| {
            buf.push_str(&data)
        })
    };
    let first = snapshot(&run);
    if run.status.is_terminal() {
        return Ok(sse(stream::iter([first]).boxed()));
    }
    let store = state.store().clone();
    let tenant = principal.tenant.clone();
    let (token, slot) = state.stream_token(&principal);
    let updates = follow(
        store.clone(),
        principal.tenant,
        id.clone(),
        run.last_seq,
        token,
    )
    .filter_map(move |item| {
        let _slot = &slot;
        let store = store.clone();
        let tenant = tenant.clone();
        let id = id.clone();
        async move {
            match item {
                Ok(e) if e.kind.changes_snapshot() => match store.get_run(&tenant, &id).await {
                    Ok(Some(run)) => Some(snapshot(&run)),
                    Ok(None) => None,
                    Err(e) => Some(error_event(e)),
                },
                Ok(_) => None,
                Err(e) => Some(error_event(e)),
            }
        }
    });
    Ok(sse(stream::once(async move { first })
        .chain(updates)
        .boxed()))
}
