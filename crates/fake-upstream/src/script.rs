//! Scripted answers: tests queue the turns a model will give, tool calls
//! included, and each request takes the next one. The same script is spoken
//! in each provider's wire format.

use serde_json::Value;

/// One model answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScriptedTurn {
    /// Reasoning chunks (OpenAI-compatible `reasoning_content`, Anthropic
    /// `thinking` blocks).
    pub thinking: Vec<String>,
    /// Answer text chunks.
    pub text: Vec<String>,
    pub tool_calls: Vec<ScriptedCall>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScriptedCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

impl ScriptedTurn {
    /// A plain answer in these chunks.
    pub fn text(chunks: &[&str]) -> Self {
        ScriptedTurn {
            text: chunks.iter().map(|c| (*c).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// An answer asking for one tool call.
    pub fn call(id: &str, name: &str, arguments: Value) -> Self {
        Self::default().and_call(id, name, arguments)
    }

    /// Adds another tool call to the same answer (parallel calls).
    pub fn and_call(mut self, id: &str, name: &str, arguments: Value) -> Self {
        self.tool_calls.push(ScriptedCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments,
        });
        self
    }

    pub fn with_thinking(mut self, chunks: &[&str]) -> Self {
        self.thinking = chunks.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    pub fn with_text(mut self, chunks: &[&str]) -> Self {
        self.text = chunks.iter().map(|c| (*c).to_owned()).collect();
        self
    }
}
