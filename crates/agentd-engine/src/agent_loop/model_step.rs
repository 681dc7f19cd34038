//! One model step: a streaming call whose text and thinking are appended as
//! coalesced `step.progress` deltas, retried from its start on transient
//! upstream failures (`step.done {retry_step}`).

use std::time::Duration;

use agentd_core::Usage;
use agentd_core::event::payload::{
    StepKind, StepOutcome, content_delta, step_done, step_started, thinking_delta, tool_call,
};
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use super::{RunContext, Stop, append};
use crate::agents::AgentSnapshot;
use crate::models::{self, AssistantTurn, ModelDelta, ModelError, ModelRequest};

/// At most one `step.progress` per run per this interval (DESIGN §4); the
/// first delta of a burst goes out at once so time to first token stays low.
const COALESCE: Duration = Duration::from_millis(10);

/// How a model step ended, when the run goes on.
pub(crate) enum StepEnd {
    Done {
        turn: AssistantTurn,
        usage: Usage,
    },
    /// Retries exhausted or a fatal upstream answer: the run fails with this.
    Failed {
        error: ModelError,
        usage: Usage,
    },
}

/// Runs step `step_id` from `attempt` until it succeeds or cannot.
pub(crate) async fn run(
    ctx: &RunContext,
    agent: &AgentSnapshot,
    request: &ModelRequest,
    step_id: &str,
    mut attempt: u32,
) -> Result<StepEnd, Stop> {
    let max_attempts = attempt + agent.model.max_retries;
    let mut usage = Usage::default();
    loop {
        append(ctx, vec![step_started(step_id, attempt, StepKind::Model)]).await?;
        usage.model_calls += 1;
        match stream_once(ctx, agent, request, step_id, attempt).await? {
            Ok((turn, step_usage)) => {
                usage.add(&step_usage);
                let done = step_done(
                    step_id,
                    attempt,
                    StepOutcome::Succeeded,
                    None,
                    json!({"usage": step_usage, "message": turn}),
                );
                append(ctx, vec![done]).await?;
                return Ok(StepEnd::Done { turn, usage });
            }
            Err(ModelError::Transient {
                reason_code,
                message,
            }) if attempt < max_attempts => {
                let done = step_done(
                    step_id,
                    attempt,
                    StepOutcome::RetryStep,
                    Some(reason_code),
                    json!({"error": message}),
                );
                append(ctx, vec![done]).await?;
                let wait = backoff(agent.model.retry_backoff_ms, attempt);
                ctx.guard(tokio::time::sleep(wait)).await?;
                attempt += 1;
            }
            Err(error) => {
                let done = step_done(
                    step_id,
                    attempt,
                    StepOutcome::FailRun,
                    Some(error.reason_code()),
                    json!({"error": error.to_string()}),
                );
                append(ctx, vec![done]).await?;
                return Ok(StepEnd::Failed { error, usage });
            }
        }
    }
}

fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = base_ms.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let jitter = rand::thread_rng().gen_range(0..=exp / 4 + 1);
    Duration::from_millis(exp + jitter)
}

/// Deltas waiting for the next flush, by kind, in arrival order per kind.
#[derive(Default)]
struct Pending {
    content: String,
    thinking: String,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.content.is_empty() && self.thinking.is_empty()
    }
}

/// One model call. The outer `Result` stops the run; the inner one is the
/// call's own outcome.
async fn stream_once(
    ctx: &RunContext,
    agent: &AgentSnapshot,
    request: &ModelRequest,
    step_id: &str,
    attempt: u32,
) -> Result<Result<(AssistantTurn, Usage), ModelError>, Stop> {
    let mut stream = match ctx
        .guard(models::stream(
            &ctx.http,
            &ctx.local_models,
            &agent.model,
            request,
        ))
        .await?
    {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut turn = AssistantTurn::default();
    let mut pending = Pending::default();
    let mut usage = Usage::default();
    // One stop future and one flush timer for the whole call, not one per
    // chunk: each would register with the cancel tokens and the timer
    // wheel on every delta.
    let stopped = ctx.stopped();
    tokio::pin!(stopped);
    let mut last_flush = Instant::now() - COALESCE;
    let next_flush = tokio::time::sleep_until(last_flush + COALESCE);
    tokio::pin!(next_flush);
    loop {
        let item = tokio::select! {
            biased;
            stop = &mut stopped => return Err(stop),
            _ = &mut next_flush, if !pending.is_empty() => {
                flush(ctx, step_id, attempt, &mut pending).await?;
                last_flush = Instant::now();
                next_flush.as_mut().reset(last_flush + COALESCE);
                continue;
            }
            item = stream.next() => item,
        };
        match item {
            Some(Ok(ModelDelta::Content(delta))) => {
                turn.content.push_str(&delta);
                pending.content.push_str(&delta);
            }
            Some(Ok(ModelDelta::Thinking(delta))) => pending.thinking.push_str(&delta),
            Some(Ok(ModelDelta::ThinkingBlock(block))) => turn.thinking.push(block),
            Some(Ok(ModelDelta::ToolCall(call))) => {
                flush(ctx, step_id, attempt, &mut pending).await?;
                let progress = tool_call(
                    step_id,
                    attempt,
                    serde_json::to_value(&call).unwrap_or_default(),
                );
                append(ctx, vec![progress]).await?;
                turn.tool_calls.push(call);
                continue;
            }
            Some(Ok(ModelDelta::Usage(u))) => {
                usage = u;
                continue;
            }
            Some(Err(e)) => return Ok(Err(e)),
            None => {
                flush(ctx, step_id, attempt, &mut pending).await?;
                return Ok(Ok((turn, usage)));
            }
        }
        if last_flush.elapsed() >= COALESCE {
            flush(ctx, step_id, attempt, &mut pending).await?;
            last_flush = Instant::now();
            next_flush.as_mut().reset(last_flush + COALESCE);
        }
    }
}

async fn flush(
    ctx: &RunContext,
    step_id: &str,
    attempt: u32,
    pending: &mut Pending,
) -> Result<(), Stop> {
    let mut events = Vec::new();
    if !pending.thinking.is_empty() {
        events.push(thinking_delta(
            step_id,
            attempt,
            &std::mem::take(&mut pending.thinking),
        ));
    }
    if !pending.content.is_empty() {
        events.push(content_delta(
            step_id,
            attempt,
            &std::mem::take(&mut pending.content),
        ));
    }
    if events.is_empty() {
        return Ok(());
    }
    append(ctx, events).await
}
