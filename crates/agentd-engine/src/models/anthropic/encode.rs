//! The conversation in Messages API form. Anthropic differs from Chat
//! Completions in ways that shape this file: system text is a top-level
//! field, tool results travel as `tool_result` blocks of a *user* message
//! (every result of a turn in the same one), and an assistant turn's
//! thinking blocks must come back exactly as they were given, signatures
//! included, before its text and tool calls.

use serde_json::{Map, Value, json};

use crate::models::{AssistantTurn, Attachment, ChatMessage, ThinkingBlock, ToolCall, ToolSpec};

/// The request's `system` (every system message, in order, joined by blank
/// lines; `None` when there is none) and its `messages`.
pub fn encode_messages(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut system: Vec<&str> = Vec::new();
    let mut out = Messages::default();
    for m in messages {
        match m {
            ChatMessage::System { content } => system.push(content),
            ChatMessage::User {
                content,
                attachments,
            } => {
                // Files first (Anthropic's advice for images), then the text.
                for a in attachments {
                    out.user_block(attachment_block(a));
                }
                // The API refuses empty text blocks.
                if !content.is_empty() {
                    out.user_text(content);
                }
            }
            ChatMessage::Tool(r) => out.tool_result(json!({
                "type": "tool_result",
                "tool_use_id": r.tool_call_id,
                "content": r.content,
                "is_error": r.is_error,
            })),
            ChatMessage::Assistant(turn) => out.assistant(assistant_blocks(turn)),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    (system, out.finish())
}

/// An image or document block carrying the file inline.
fn attachment_block(a: &Attachment) -> Value {
    let kind = if a.is_image() { "image" } else { "document" };
    json!({"type": kind, "source": {"type": "base64", "media_type": a.mime_type, "data": a.data}})
}

/// The `tools` array: name, description and the arguments' JSON Schema.
pub fn encode_tools(tools: &[ToolSpec]) -> Vec<Value> {
    tools
        .iter()
        .map(
            |t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}),
        )
        .collect()
}

/// An assistant turn's blocks: thinking first (the API checks that a tool
/// turn's thinking precedes its `tool_use`), then text, then tool calls.
fn assistant_blocks(turn: &AssistantTurn) -> Vec<Value> {
    let mut blocks: Vec<Value> = turn.thinking.iter().filter_map(thinking_block).collect();
    if !turn.content.is_empty() {
        blocks.push(json!({"type": "text", "text": turn.content}));
    }
    blocks.extend(turn.tool_calls.iter().map(tool_use_block));
    blocks
}

/// A thinking block as it was received. One without a signature cannot
/// have come from Anthropic (another provider's reasoning); the API would
/// refuse it, so it is left out rather than sent unsigned.
fn thinking_block(b: &ThinkingBlock) -> Option<Value> {
    if b.redacted {
        return Some(json!({"type": "redacted_thinking", "data": b.thinking}));
    }
    let signature = b.signature.as_deref()?;
    Some(json!({"type": "thinking", "thinking": b.thinking, "signature": signature}))
}

/// `input` must be an object; arguments that were not one (unparseable
/// text the tool already refused, or a bare value) are sent as `{}` so the
/// history stays acceptable.
fn tool_use_block(c: &ToolCall) -> Value {
    let input = match &c.arguments {
        Value::Object(o) => Value::Object(o.clone()),
        _ => Value::Object(Map::new()),
    };
    json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input})
}

/// Builds the message list, merging neighbours of the same role: the API
/// wants every `tool_result` answering one assistant turn in a single user
/// message, and roles that alternate.
#[derive(Default)]
struct Messages {
    done: Vec<Value>,
    /// The user message being gathered: its tool results, then its text.
    results: Vec<Value>,
    texts: Vec<Value>,
    /// The assistant message being gathered.
    assistant: Vec<Value>,
}

impl Messages {
    fn user_text(&mut self, text: &str) {
        self.user_block(json!({"type": "text", "text": text}));
    }

    fn user_block(&mut self, block: Value) {
        self.flush_assistant();
        self.texts.push(block);
    }

    fn tool_result(&mut self, block: Value) {
        self.flush_assistant();
        self.results.push(block);
    }

    fn assistant(&mut self, blocks: Vec<Value>) {
        // A turn with nothing to say (no text, thinking or calls) would be
        // an empty message, which the API refuses; it is skipped.
        if blocks.is_empty() {
            return;
        }
        self.flush_user();
        self.assistant.extend(blocks);
    }

    /// Tool results go before any text: the API wants a user message that
    /// answers tool calls to start with its `tool_result` blocks.
    fn flush_user(&mut self) {
        if self.results.is_empty() && self.texts.is_empty() {
            return;
        }
        let mut content = std::mem::take(&mut self.results);
        content.append(&mut self.texts);
        self.done.push(json!({"role": "user", "content": content}));
    }

    fn flush_assistant(&mut self) {
        if self.assistant.is_empty() {
            return;
        }
        let content = std::mem::take(&mut self.assistant);
        self.done
            .push(json!({"role": "assistant", "content": content}));
    }

    fn finish(mut self) -> Vec<Value> {
        self.flush_user();
        self.flush_assistant();
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ToolResult;

    fn result(id: &str, content: &str, is_error: bool) -> ChatMessage {
        ChatMessage::Tool(ToolResult {
            tool_call_id: id.into(),
            name: "tool".into(),
            content: content.into(),
            is_error,
        })
    }

    fn call(id: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: "run_code".into(),
            arguments,
        }
    }

    #[test]
    fn system_messages_are_joined_and_lifted_out() {
        let (system, messages) = encode_messages(&[
            ChatMessage::system("one"),
            ChatMessage::user("hi"),
            ChatMessage::system("two"),
        ]);
        assert_eq!(system.as_deref(), Some("one\n\ntwo"));
        assert_eq!(
            messages,
            vec![json!({"role": "user", "content": [{"type": "text", "text": "hi"}]})]
        );
    }

    #[test]
    fn no_system_message_means_no_system() {
        let (system, messages) = encode_messages(&[ChatMessage::user("hi")]);
        assert_eq!(system, None);
        assert_eq!(messages.len(), 1);
    }

    #[test]
    fn consecutive_user_messages_are_merged() {
        let (_, messages) = encode_messages(&[
            ChatMessage::user("a"),
            ChatMessage::system("between"),
            ChatMessage::user("b"),
        ]);
        assert_eq!(
            messages,
            vec![json!({"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})]
        );
    }

    #[test]
    fn a_turns_tool_results_share_one_user_message_before_any_text() {
        let turn = AssistantTurn {
            content: String::new(),
            thinking: vec![],
            tool_calls: vec![call("c1", json!({"x": 1})), call("c2", json!({}))],
        };
        let (_, messages) = encode_messages(&[
            ChatMessage::user("go"),
            ChatMessage::Assistant(turn),
            result("c1", "one", false),
            result("c2", "boom", true),
            ChatMessage::user("and then?"),
        ]);
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "one", "is_error": false},
                {"type": "tool_result", "tool_use_id": "c2", "content": "boom", "is_error": true},
                {"type": "text", "text": "and then?"},
            ]})
        );
    }

    #[test]
    fn assistant_blocks_are_thinking_then_text_then_tool_use() {
        let turn = AssistantTurn {
            content: "let me check".into(),
            thinking: vec![
                ThinkingBlock {
                    thinking: "hmm".into(),
                    signature: Some("sig-a".into()),
                    redacted: false,
                },
                ThinkingBlock {
                    thinking: "opaque".into(),
                    signature: None,
                    redacted: true,
                },
            ],
            tool_calls: vec![call("c1", json!({"code": "1+1"}))],
        };
        let (_, messages) = encode_messages(&[ChatMessage::Assistant(turn)]);
        assert_eq!(
            messages,
            vec![json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig-a"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "let me check"},
                {"type": "tool_use", "id": "c1", "name": "run_code", "input": {"code": "1+1"}},
            ]})]
        );
    }

    #[test]
    fn unsigned_thinking_is_left_out() {
        let turn = AssistantTurn {
            content: "answer".into(),
            thinking: vec![ThinkingBlock {
                thinking: "from elsewhere".into(),
                signature: None,
                redacted: false,
            }],
            tool_calls: vec![],
        };
        let (_, messages) = encode_messages(&[ChatMessage::Assistant(turn)]);
        assert_eq!(
            messages[0]["content"],
            json!([{"type": "text", "text": "answer"}])
        );
    }

    #[test]
    fn non_object_arguments_become_an_empty_input() {
        let turn = AssistantTurn {
            tool_calls: vec![
                call("c1", Value::String("{not json".into())),
                call("c2", json!([1, 2])),
                call("c3", Value::Null),
            ],
            ..AssistantTurn::default()
        };
        let (_, messages) = encode_messages(&[ChatMessage::Assistant(turn)]);
        let inputs: Vec<&Value> = messages[0]["content"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| &b["input"])
            .collect();
        assert_eq!(inputs, vec![&json!({}), &json!({}), &json!({})]);
    }

    #[test]
    fn empty_turns_and_texts_leave_no_empty_message() {
        let (_, messages) = encode_messages(&[
            ChatMessage::user("a"),
            ChatMessage::assistant(""),
            ChatMessage::user(""),
            ChatMessage::user("b"),
        ]);
        assert_eq!(
            messages,
            vec![json!({"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})]
        );
    }

    #[test]
    fn tools_carry_their_schema_as_input_schema() {
        let tools = encode_tools(&[ToolSpec {
            name: "ask_user".into(),
            description: "Ask.".into(),
            parameters: json!({"type": "object"}),
        }]);
        assert_eq!(
            tools,
            vec![json!({"name": "ask_user", "description": "Ask.",
                        "input_schema": {"type": "object"}})]
        );
    }
}
