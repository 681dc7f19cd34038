//! Small built-in tools and the `ask_user` spec.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolOutput};
use crate::models::ToolSpec;

/// The model asks the user a question; the run pauses (`run.awaiting_input`,
/// input_kind `input`) until `submit_input` answers. The agent loop handles
/// it; this is only what the model is told.
pub const ASK_USER: &str = "ask_user";

pub fn ask_user_spec() -> ToolSpec {
    ToolSpec {
        name: ASK_USER.into(),
        description: "Ask the user a question and wait for the answer. Use it when you \
                      cannot go on without information only the user has."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {"question": {"type": "string", "description": "What to ask"}},
            "required": ["question"],
            "additionalProperties": false,
        }),
    }
}

/// The current date and time: models do not know it, and guessing it is a
/// classic source of wrong answers.
pub struct CurrentTime;

#[async_trait]
impl Tool for CurrentTime {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "current_time".into(),
            description: "The current date and time in UTC (RFC 3339).".into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        }
    }

    async fn call(&self, _ctx: &ToolContext, arguments: Value) -> ToolOutput {
        match arguments {
            Value::Object(map) if map.is_empty() => ToolOutput::ok(
                json!({"utc": agentd_core::time::to_rfc3339(agentd_core::time::now_millis())})
                    .to_string(),
            ),
            Value::Object(_) => ToolOutput::error("current_time takes no arguments"),
            _ => ToolOutput::error("arguments must be a JSON object"),
        }
    }
}
