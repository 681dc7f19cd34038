//! Sessions: conversations whose history lives on the server.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::TenantId;
use crate::time::Millis;

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub tenant_id: TenantId,
    pub id: String,
    /// The agent new runs on this session use unless they name another.
    pub agent: String,
    pub metadata: serde_json::Value,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One turn of a session's history, in the order the model sees them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Position in the session, from 1.
    pub index: i64,
    /// `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
    /// The run that produced this turn.
    pub run_id: String,
    #[schema(value_type = String)]
    pub created_at: String,
}
