//! Wire shapes: what clients send and receive. Built from domain types here so
//! handlers and the OpenAPI document share one definition.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use agentd_core::time::to_rfc3339;
use agentd_core::{Run, RunStatus, Session, Usage};
use agentd_store::{Cursor, PageRequest};

use crate::error::ApiError;

/// `{data, next_cursor}` (DESIGN §3).
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

pub const MAX_PAGE: u32 = 100;
const DEFAULT_PAGE: u32 = 20;

impl PageQuery {
    pub fn to_request(&self) -> Result<PageRequest, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::InvalidRequest(format!(
                "invalid field `limit`: must be between 1 and {MAX_PAGE}"
            )));
        }
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        Ok(PageRequest { limit, after })
    }
}

pub fn encode_cursor(c: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", c.created_at, c.id))
}

fn decode_cursor(s: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::InvalidRequest("invalid field `cursor`".into());
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (ms, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Cursor {
        created_at: ms.parse().map_err(|_| bad())?,
        id: id.to_owned(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    /// Same as `id`; seed clients read either.
    pub session_id: String,
    pub object: &'static str,
    pub agent: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        SessionView {
            id: s.id.clone(),
            session_id: s.id.clone(),
            object: "session",
            agent: s.agent.clone(),
            metadata: s.metadata.clone(),
            created_at: to_rfc3339(s.created_at),
            updated_at: to_rfc3339(s.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    /// Same as `id` (seed 000 reads `run_id`, seed 001 reads `id`).
    pub run_id: String,
    pub object: &'static str,
    pub session_id: String,
    pub agent: String,
    pub status: RunStatus,
    /// The input as sent; null when withheld (`redacted`).
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// True when the caller lacks `runs:read_inputs`: `input` and `metadata`
    /// are withheld (seed 001).
    pub redacted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_plugin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// `{"text": "..."}` once succeeded.
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    pub usage: Usage,
    pub reason_code: Option<String>,
    pub error: Option<String>,
    /// The seq of the newest event: resume a stream from here.
    pub last_seq: i64,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The request that created the run (on create and replay responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl RunView {
    pub fn of(run: &Run) -> Self {
        RunView {
            id: run.id.clone(),
            run_id: run.id.clone(),
            object: "run",
            session_id: run.session_id.clone(),
            agent: run.agent.clone(),
            status: run.status,
            input: run.input.clone(),
            metadata: run.metadata.clone(),
            redacted: false,
            source_plugin: run.source.source_plugin.clone(),
            source_kind: run.source.source_kind.clone(),
            actor_id: run.source.actor_id.clone(),
            output: run.output.clone(),
            usage: run.usage.clone(),
            reason_code: run.reason_code.clone(),
            error: run.error.clone(),
            last_seq: run.last_seq,
            created_at: to_rfc3339(run.created_at),
            updated_at: to_rfc3339(run.updated_at),
            started_at: run.started_at.map(to_rfc3339),
            finished_at: run.finished_at.map(to_rfc3339),
            request_id: None,
        }
    }

    /// Withholds the inputs unless the reader may see them.
    pub fn redacted_unless(mut self, read_inputs: bool) -> Self {
        if !read_inputs {
            self.input = Value::Null;
            self.metadata = Value::Null;
            self.redacted = true;
        }
        self
    }

    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(id.to_owned());
        self
    }
}

#[derive(Serialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    pub model: String,
    pub provider: String,
    pub tools: Vec<String>,
    pub default: bool,
}
