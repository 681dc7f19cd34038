//! The OpenAI provider against the fake's scripted turns: reasoning,
//! text, and tool calls whose arguments arrive in fragments.

mod support;

use agentd_core::Usage;
use agentd_engine::Provider;
use agentd_engine::models::{ChatMessage, ModelDelta, ModelRequest, ToolCall, ToolSpec};
use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::json;
use support::{KEY, collect, spec};

#[tokio::test]
async fn fragmented_tool_calls_are_assembled_and_reasoning_is_thinking() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([ScriptedTurn::call(
        "call_1",
        "run_code",
        json!({"language": "python", "code": "print('é')"}),
    )
    .and_call(
        "call_2",
        "http_fetch",
        json!({"url": "https://example.com"}),
    )
    .with_thinking(&["Two ", "tools."])
    .with_text(&["On it."])]);
    let request = ModelRequest {
        messages: vec![ChatMessage::user("do both")],
        tools: vec![ToolSpec {
            name: "run_code".into(),
            description: "Runs code.".into(),
            parameters: json!({"type": "object"}),
        }],
        max_output_tokens: 128,
    };
    let (deltas, err) = collect(&spec(Provider::Openai, fake.base_url()), &request).await;
    assert_eq!(err, None);
    assert_eq!(
        deltas,
        vec![
            ModelDelta::Thinking("Two ".into()),
            ModelDelta::Thinking("tools.".into()),
            ModelDelta::Content("On it.".into()),
            ModelDelta::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "run_code".into(),
                arguments: json!({"language": "python", "code": "print('é')"}),
            }),
            ModelDelta::ToolCall(ToolCall {
                id: "call_2".into(),
                name: "http_fetch".into(),
                arguments: json!({"url": "https://example.com"}),
            }),
            // Two words in; two reasoning chunks, one text chunk, two calls.
            ModelDelta::Usage(Usage {
                input_tokens: 2,
                output_tokens: 5,
                total_tokens: 7,
                model_calls: 0,
            }),
        ]
    );
    assert_eq!(fake.authorizations(), vec![Some(format!("Bearer {KEY}"))]);
    let sent = fake.requests();
    assert_eq!(
        sent[0]["tools"],
        json!([{"type": "function", "function": {
            "name": "run_code", "description": "Runs code.", "parameters": {"type": "object"}}}])
    );
}

#[tokio::test]
async fn a_tool_turn_goes_back_as_tool_calls_and_tool_messages() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([ScriptedTurn::text(&["Fine."])]);
    let request = ModelRequest {
        messages: vec![
            ChatMessage::user("go"),
            ChatMessage::Assistant(agentd_engine::models::AssistantTurn {
                content: String::new(),
                thinking: vec![],
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "run_code".into(),
                    arguments: json!({"code": "1"}),
                }],
            }),
            ChatMessage::Tool(agentd_engine::models::ToolResult {
                tool_call_id: "call_1".into(),
                name: "run_code".into(),
                content: "1".into(),
                is_error: false,
            }),
        ],
        tools: vec![],
        max_output_tokens: 128,
    };
    let (deltas, err) = collect(&spec(Provider::Openai, fake.base_url()), &request).await;
    assert_eq!(err, None);
    assert_eq!(deltas.first(), Some(&ModelDelta::Content("Fine.".into())));
    assert_eq!(
        fake.requests()[0]["messages"],
        json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "run_code", "arguments": "{\"code\":\"1\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        ])
    );
}
