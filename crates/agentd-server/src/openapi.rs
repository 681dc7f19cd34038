//! `/openapi.json`, generated from the handlers' own annotations and types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::sandboxes;
use crate::routes::{agents, audit, chat, health, keys, metrics, runs, sessions, signals, streams};

#[derive(OpenApi)]
#[openapi(
    info(title = "agentd", description = "A self-hosted runtime for AI agents."),
    paths(
        health::health, health::ready, health::info, metrics::metrics,
        agents::list,
        sessions::create, sessions::list, sessions::get, sessions::delete, sessions::messages,
        runs::create_on_session, runs::create, runs::list, runs::get, runs::cancel, signals::signal,
        streams::events_page, streams::events_stream, streams::run_updates,
        keys::create, keys::list, keys::revoke, keys::rotate,
        audit::list,
        chat::chat, chat::ws::ws_chat,
        sandboxes::create, sandboxes::list, sandboxes::get, sandboxes::result,
        sandboxes::audit, sandboxes::stream, sandboxes::delete,
    ),
    components(schemas(crate::error::ErrorEnvelope, agentd_core::event::EventPayload)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
