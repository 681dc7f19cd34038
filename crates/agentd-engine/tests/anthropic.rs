//! The Anthropic provider against the fake upstream's Messages API: deltas,
//! thinking with signatures, tool calls, the request body it sends, and how
//! failures are classified.

mod support;

use agentd_core::Usage;
use agentd_engine::Provider;
use agentd_engine::models::{
    AssistantTurn, ChatMessage, ModelDelta, ModelError, ModelRequest, ThinkingBlock, ToolCall,
    ToolResult, ToolSpec,
};
use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::json;
use support::{KEY, collect, spec};

fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        messages: vec![ChatMessage::system("Be brief."), ChatMessage::user(text)],
        tools: vec![],
        max_output_tokens: 256,
    }
}

fn usage(input: u64, output: u64) -> ModelDelta {
    ModelDelta::Usage(Usage {
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        model_calls: 0,
    })
}

#[tokio::test]
async fn a_plain_answer_streams_content_then_usage() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(3);
    let (deltas, err) = collect(
        &spec(Provider::Anthropic, fake.base_url()),
        &ask("hello there"),
    )
    .await;
    assert_eq!(err, None);
    assert_eq!(
        deltas,
        vec![
            ModelDelta::Content("t0 ".into()),
            ModelDelta::Content("t1 ".into()),
            ModelDelta::Content("t2 ".into()),
            // "Be brief." and "hello there": four words in.
            usage(4, 3),
        ]
    );
    // The key went out as x-api-key; the fake refuses any request without
    // `anthropic-version: 2023-06-01`, so the answer proves that one too.
    assert_eq!(fake.authorizations(), vec![Some(KEY.to_owned())]);
}

#[tokio::test]
async fn a_base_url_without_v1_reaches_the_same_endpoint() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(1);
    let base = format!("http://{}/", fake.addr);
    let (deltas, err) = collect(&spec(Provider::Anthropic, base), &ask("hi")).await;
    assert_eq!(err, None);
    assert_eq!(deltas.first(), Some(&ModelDelta::Content("t0 ".into())));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn thinking_text_and_two_tool_calls_come_out_whole() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([ScriptedTurn::call(
        "toolu_1",
        "run_code",
        json!({"language": "python", "code": "print(1)"}),
    )
    .and_call(
        "toolu_2",
        "http_fetch",
        json!({"url": "https://example.com"}),
    )
    .with_thinking(&["Let me ", "check."])
    .with_text(&["Checking."])]);
    let (deltas, err) = collect(&spec(Provider::Anthropic, fake.base_url()), &ask("go")).await;
    assert_eq!(err, None);
    assert_eq!(
        deltas,
        vec![
            ModelDelta::Thinking("Let me ".into()),
            ModelDelta::Thinking("check.".into()),
            ModelDelta::ThinkingBlock(ThinkingBlock {
                thinking: "Let me check.".into(),
                signature: Some("sig-0".into()),
                redacted: false,
            }),
            ModelDelta::Content("Checking.".into()),
            ModelDelta::ToolCall(ToolCall {
                id: "toolu_1".into(),
                name: "run_code".into(),
                arguments: json!({"language": "python", "code": "print(1)"}),
            }),
            ModelDelta::ToolCall(ToolCall {
                id: "toolu_2".into(),
                name: "http_fetch".into(),
                arguments: json!({"url": "https://example.com"}),
            }),
            // Three words in; two thinking chunks, a text chunk, two calls out.
            usage(3, 5),
        ]
    );
}

/// The turn a stream amounts to, as the agent loop keeps it.
fn turn_from(deltas: Vec<ModelDelta>) -> AssistantTurn {
    let mut turn = AssistantTurn::default();
    for d in deltas {
        match d {
            ModelDelta::Content(t) => turn.content.push_str(&t),
            ModelDelta::ThinkingBlock(b) => turn.thinking.push(b),
            ModelDelta::ToolCall(c) => turn.tool_calls.push(c),
            ModelDelta::Thinking(_) | ModelDelta::Usage(_) => {}
        }
    }
    turn
}

#[tokio::test]
async fn the_next_request_carries_signed_thinking_tool_use_and_merged_results() {
    let fake = FakeUpstream::start().await;
    fake.behavior().push_turns([
        ScriptedTurn::call("toolu_1", "run_code", json!({"code": "1+1"}))
            .and_call("toolu_2", "ask_user", json!({"question": "why?"}))
            .with_thinking(&["Two ", "tools."]),
        ScriptedTurn::text(&["Done."]),
    ]);
    let spec = support::spec(Provider::Anthropic, fake.base_url());
    let spec = agentd_engine::ModelSpec {
        thinking_budget_tokens: Some(1024),
        ..spec
    };
    let tools = vec![ToolSpec {
        name: "run_code".into(),
        description: "Runs code.".into(),
        parameters: json!({"type": "object", "properties": {"code": {"type": "string"}}}),
    }];
    // Anthropic wants the thinking budget below max_tokens.
    let mut request = ModelRequest {
        tools,
        max_output_tokens: 4096,
        ..ask("compute")
    };
    let (first, err) = collect(&spec, &request).await;
    assert_eq!(err, None);
    request
        .messages
        .push(ChatMessage::Assistant(turn_from(first)));
    for (id, content, is_error) in [("toolu_1", "2", false), ("toolu_2", "no human", true)] {
        request.messages.push(ChatMessage::Tool(ToolResult {
            tool_call_id: id.into(),
            name: "tool".into(),
            content: content.into(),
            is_error,
        }));
    }
    let (second, err) = collect(&spec, &request).await;
    assert_eq!(err, None);
    assert_eq!(second.first(), Some(&ModelDelta::Content("Done.".into())));

    let sent = fake.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1],
        json!({
            "model": "test-model",
            "max_tokens": 4096,
            "stream": true,
            "system": "Be brief.",
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [{"name": "run_code", "description": "Runs code.",
                       "input_schema": {"type": "object",
                                        "properties": {"code": {"type": "string"}}}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "compute"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two tools.", "signature": "sig-0"},
                    {"type": "tool_use", "id": "toolu_1", "name": "run_code",
                     "input": {"code": "1+1"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "ask_user",
                     "input": {"question": "why?"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "2",
                     "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no human",
                     "is_error": true},
                ]},
            ],
        })
    );
}

#[tokio::test]
async fn rate_limits_and_overload_may_be_retried() {
    let fake = FakeUpstream::start().await;
    let spec = spec(Provider::Anthropic, fake.base_url());
    for (status, code) in [
        (429, "UPSTREAM_RATE_LIMITED"),
        (529, "UPSTREAM_UNAVAILABLE"),
        (500, "UPSTREAM_UNAVAILABLE"),
    ] {
        fake.behavior().fail_next(1, status);
        let (deltas, err) = collect(&spec, &ask("hi")).await;
        assert!(deltas.is_empty());
        match err {
            Some(ModelError::Transient { reason_code, .. }) => assert_eq!(reason_code, code),
            other => panic!("{status}: expected a transient {code}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_rejected_request_is_fatal_and_says_why() {
    let fake = FakeUpstream::start().await;
    fake.behavior().fail_next(1, 400);
    let (_, err) = collect(&spec(Provider::Anthropic, fake.base_url()), &ask("hi")).await;
    match err {
        Some(ModelError::Fatal {
            reason_code,
            message,
        }) => {
            assert_eq!(reason_code, "UPSTREAM_REJECTED");
            assert!(
                message.contains("invalid_request_error: injected failure"),
                "{message}"
            );
        }
        other => panic!("expected a fatal rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_transient() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(4);
    fake.behavior().cut_next(1, 2);
    let (deltas, err) = collect(&spec(Provider::Anthropic, fake.base_url()), &ask("hi")).await;
    assert_eq!(
        deltas,
        vec![
            ModelDelta::Content("t0 ".into()),
            ModelDelta::Content("t1 ".into())
        ]
    );
    assert!(
        matches!(
            err,
            Some(ModelError::Transient {
                reason_code: "UPSTREAM_CLOSED",
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unset_key_variable_fails_before_any_request() {
    let fake = FakeUpstream::start().await;
    let spec = agentd_engine::ModelSpec {
        api_key_env: Some("AGENTD_TEST_ANTHROPIC_KEY_THAT_IS_NEVER_SET".into()),
        ..spec(Provider::Anthropic, fake.base_url())
    };
    let (_, err) = collect(&spec, &ask("hi")).await;
    assert!(
        matches!(
            err,
            Some(ModelError::Fatal {
                reason_code: "MODEL_API_KEY_MISSING",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(fake.requests().is_empty());
}
