//! The tool calls of the newest model turn: run the ones policy allows,
//! answer the ones a human decided, and collect what still needs a human.
//!
//! `tool.started` is durable before a tool runs, so a call interrupted by a
//! crash is recognised on recovery and answered `TOOL_INTERRUPTED` instead of
//! being run a second time (DESIGN §4).

use agentd_core::event::payload::{tool_finished, tool_started};
use agentd_core::signal::{InputKind, PendingRequest, SignalAction};
use agentd_store::Lease;
use serde_json::Value;

use super::replay::Transcript;
use super::{RunContext, Stop, append};
use crate::models::{ToolCall, ToolResult};
use crate::tools::builtin::ASK_USER;
use crate::tools::{ToolContext, ToolOutput, ToolSet};

/// Answers every open call it can; returns the requests that wait for a human.
pub(crate) async fn resolve(
    ctx: &RunContext,
    lease: &Lease,
    tools: &ToolSet,
    t: &mut Transcript,
) -> Result<Vec<PendingRequest>, Stop> {
    let mut waiting = Vec::new();
    for call in t.open_calls() {
        let request_id = PendingRequest::id_for(&call.id);
        if t.started_tools.contains(&call.id) {
            let out = ToolOutput::error(
                "TOOL_INTERRUPTED: the call was interrupted (the worker stopped) and was not run again; its effects are unknown",
            );
            finish(ctx, t, &call, out, Some("TOOL_INTERRUPTED")).await?;
            continue;
        }
        let decision = t.pause.decision(&request_id).cloned();
        if call.name == ASK_USER && tools.asks_user() {
            match decision {
                Some(d) if d.action == SignalAction::SubmitInput => {
                    let answer = match &d.payload["input"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    started(ctx, &call).await?;
                    finish(ctx, t, &call, ToolOutput::ok(answer), None).await?;
                }
                _ => waiting.push(PendingRequest {
                    request_id,
                    tool_call_id: call.id.clone(),
                    tool: call.name.clone(),
                    kind: InputKind::Input,
                    arguments: None,
                    question: Some(question_of(&call.arguments)),
                }),
            }
            continue;
        }
        let Some(tool) = tools.get(&call.name).cloned() else {
            let out = ToolOutput::error(format!(
                "UNKNOWN_TOOL: there is no tool named {:?}",
                call.name
            ));
            finish(ctx, t, &call, out, Some("UNKNOWN_TOOL")).await?;
            continue;
        };
        if tools.needs_approval(&call.name, tool.as_ref()) {
            match decision.map(|d| (d.action, d.payload)) {
                None => {
                    waiting.push(PendingRequest {
                        request_id,
                        tool_call_id: call.id.clone(),
                        tool: call.name.clone(),
                        kind: InputKind::Approval,
                        arguments: Some(call.arguments.clone()),
                        question: None,
                    });
                    continue;
                }
                Some((SignalAction::Reject, payload)) => {
                    let reason = payload["reason"].as_str().unwrap_or("no reason given");
                    let out = ToolOutput::error(format!(
                        "REJECTED: a human refused this call ({reason})"
                    ));
                    finish(ctx, t, &call, out, Some("REJECTED")).await?;
                    continue;
                }
                Some((SignalAction::Approve | SignalAction::SubmitInput, _)) => {}
            }
        }
        started(ctx, &call).await?;
        let tool_ctx = ToolContext {
            run_id: lease.run_id().to_owned(),
            tenant: lease.tenant_id().clone(),
            cancel: ctx.handle.cancel.child_token(),
        };
        let out = ctx
            .guard(tool.call(&tool_ctx, call.arguments.clone()))
            .await?;
        finish(ctx, t, &call, out, None).await?;
    }
    Ok(waiting)
}

fn question_of(arguments: &Value) -> String {
    match &arguments["question"] {
        Value::String(q) => q.clone(),
        _ => arguments.to_string(),
    }
}

/// Makes `tool.started` durable before the tool runs.
async fn started(ctx: &RunContext, call: &ToolCall) -> Result<(), Stop> {
    append(
        ctx,
        vec![tool_started(&call.id, &call.name, &call.arguments)],
    )
    .await?;
    ctx.appender.flush().await?;
    Ok(())
}

async fn finish(
    ctx: &RunContext,
    t: &mut Transcript,
    call: &ToolCall,
    out: ToolOutput,
    reason_code: Option<&str>,
) -> Result<(), Stop> {
    let event = tool_finished(
        &call.id,
        &call.name,
        &out.content,
        out.is_error,
        reason_code,
    );
    append(ctx, vec![event]).await?;
    t.push_result(ToolResult {
        tool_call_id: call.id.clone(),
        name: call.name.clone(),
        content: out.content,
        is_error: out.is_error,
    });
    Ok(())
}
