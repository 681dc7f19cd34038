//! One run, driven to a terminal state: the model step (retried on transient
//! failures), streamed deltas coalesced into events, and the final state
//! written together with its events and the session's new turns.

use std::sync::Arc;
use std::time::Duration;

use agentd_core::event::payload::{StepKind, StepOutcome, content_delta, step_done, step_started};
use agentd_core::{EventType, NewEvent, RunTransition, Usage};
use agentd_store::{ClaimedRun, Lease, RunUpdate, Store, StoreError};
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use tokio::time::Instant;

use crate::agents::AgentSnapshot;
use crate::appender::{Appender, AppenderClosed};
use crate::models::{self, ChatMessage, ModelDelta, ModelError, ModelRequest};
use crate::scrub::Scrubber;
use crate::worker::RunHandle;

/// At most one `step.progress` per run per this interval (DESIGN §4); the
/// first delta of a burst goes out at once so time to first token stays low.
const COALESCE: Duration = Duration::from_millis(10);

pub(crate) struct RunContext {
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    pub handle: RunHandle,
    /// The run's plain appends (step boundaries, deltas), in order.
    pub appender: Appender,
    pub scrubber: Arc<Scrubber>,
}

impl RunContext {
    /// Appends events with a state change, secrets scrubbed from both.
    async fn commit(
        &self,
        lease: &Lease,
        mut events: Vec<NewEvent>,
        mut update: RunUpdate,
    ) -> Result<i64, StoreError> {
        scrub_events(&self.scrubber, &mut events);
        for text in [&mut update.error]
            .into_iter()
            .flatten()
            .chain(update.messages.iter_mut().map(|(_, content)| content))
        {
            if let Some(clean) = self.scrubber.scrub_str(text) {
                *text = clean;
            }
        }
        if let Some(output) = &mut update.output {
            self.scrubber.scrub_value(output);
        }
        self.store.append(lease, events, Some(update)).await
    }
}

/// Scrubs every event's payload in place (DESIGN §3: before it is written).
pub(crate) fn scrub_events(scrubber: &Scrubber, events: &mut [NewEvent]) {
    for e in events {
        scrubber.scrub_value(&mut e.value);
    }
}

impl From<AppenderClosed> for Stop {
    fn from(_: AppenderClosed) -> Stop {
        Stop::Abandoned
    }
}

/// Why the loop stopped early.
enum Stop {
    /// Client cancel: write `run.cancelled`.
    Cancelled,
    /// Lease lost or process stopping: write nothing.
    Abandoned,
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        match e {
            StoreError::LeaseLost => tracing::warn!("lease lost to another worker; stopping"),
            e => tracing::warn!(error = %e, "store write failed; abandoning run"),
        }
        Stop::Abandoned
    }
}

pub(crate) async fn drive(ctx: RunContext, claimed: ClaimedRun) {
    let lease = claimed.lease.clone();
    let result = run_to_end(&ctx, &claimed).await;
    if let Err(Stop::Cancelled) = result {
        // Queued deltas first, so the terminal event stays last.
        let _ = ctx.appender.flush().await;
        let events = vec![NewEvent::new(
            EventType::Cancelled,
            json!({"reason": "cancelled by client", "from": "running"}),
        )];
        let mut update = RunUpdate::new(RunTransition::Cancel);
        update.consume_controls = true;
        if let Err(e) = ctx.commit(&lease, events, update).await {
            tracing::debug!(run = lease.run_id(), error = %e, "could not record cancel");
        }
    }
}

async fn run_to_end(ctx: &RunContext, claimed: &ClaimedRun) -> Result<(), Stop> {
    let lease = &claimed.lease;
    let run = &claimed.run;
    if ctx.handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let agent: AgentSnapshot = match serde_json::from_value(run.agent_config.clone()) {
        Ok(a) => a,
        Err(e) => {
            return fail(ctx, lease, None, "AGENT_CONFIG_INVALID", &e.to_string()).await;
        }
    };

    let history = ctx
        .store
        .session_messages(&run.tenant_id, &run.session_id)
        .await?;
    let mut messages = Vec::with_capacity(history.len() + 2);
    if !agent.instructions.is_empty() {
        messages.push(ChatMessage::system(agent.instructions.clone()));
    }
    messages.extend(history.into_iter().filter_map(|m| match m.role.as_str() {
        "user" => Some(ChatMessage::user(m.content)),
        "assistant" => Some(ChatMessage::assistant(m.content)),
        "system" => Some(ChatMessage::system(m.content)),
        _ => None,
    }));
    messages.push(ChatMessage::user(run.user_message.clone()));
    let request = ModelRequest {
        messages,
        tools: Vec::new(),
        max_output_tokens: agent.max_output_tokens,
    };

    let step_id = "step_1";
    let mut attempt = if claimed.recovered {
        last_attempt(ctx, lease, step_id).await? + 1
    } else {
        1
    };
    let mut usage = Usage::default();
    let max_attempts = agent.model.max_retries + 1;
    loop {
        append(ctx, vec![step_started(step_id, attempt, StepKind::Model)]).await?;
        usage.model_calls += 1;
        match model_step(ctx, &agent, &request, step_id, attempt).await? {
            Ok((text, step_usage)) => {
                usage.add(&step_usage);
                let events = vec![
                    step_done(
                        step_id,
                        attempt,
                        StepOutcome::Succeeded,
                        None,
                        json!({"usage": step_usage}),
                    ),
                    NewEvent::new(
                        EventType::WorkerSucceeded,
                        json!({"output": {"text": text}, "usage": usage}),
                    ),
                ];
                let mut update = RunUpdate::new(RunTransition::Succeed);
                update.output = Some(json!({"text": text}));
                update.usage = Some(usage);
                update.messages = vec![
                    ("user".to_owned(), run.user_message.clone()),
                    ("assistant".to_owned(), text),
                ];
                update.consume_controls = true;
                ctx.appender.flush().await?;
                ctx.commit(lease, events, update).await?;
                return Ok(());
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
                let backoff = backoff(agent.model.retry_backoff_ms, attempt);
                tokio::select! {
                    _ = ctx.handle.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = ctx.handle.abandon.cancelled() => return Err(Stop::Abandoned),
                    _ = tokio::time::sleep(backoff) => {}
                }
                attempt += 1;
            }
            Err(e) => {
                usage.model_calls = usage.model_calls.max(1);
                let done = step_done(
                    step_id,
                    attempt,
                    StepOutcome::FailRun,
                    Some(e.reason_code()),
                    json!({"error": e.to_string()}),
                );
                return fail_with(
                    ctx,
                    lease,
                    vec![done],
                    e.reason_code(),
                    &e.to_string(),
                    usage,
                )
                .await;
            }
        }
    }
}

/// Queues plain events; they are written in order behind the loop's back.
async fn append(ctx: &RunContext, events: Vec<NewEvent>) -> Result<(), Stop> {
    ctx.appender.send(events).await?;
    Ok(())
}

async fn fail(
    ctx: &RunContext,
    lease: &Lease,
    step: Option<NewEvent>,
    code: &str,
    message: &str,
) -> Result<(), Stop> {
    fail_with(
        ctx,
        lease,
        step.into_iter().collect(),
        code,
        message,
        Usage::default(),
    )
    .await
}

async fn fail_with(
    ctx: &RunContext,
    lease: &Lease,
    mut events: Vec<NewEvent>,
    code: &str,
    message: &str,
    usage: Usage,
) -> Result<(), Stop> {
    events.push(NewEvent::new(
        EventType::WorkerFailed,
        json!({"reason_code": code, "error": message}),
    ));
    let mut update = RunUpdate::new(RunTransition::Fail);
    update.reason_code = Some(code.to_owned());
    update.error = Some(message.to_owned());
    update.usage = Some(usage);
    update.consume_controls = true;
    ctx.appender.flush().await?;
    ctx.commit(lease, events, update).await?;
    Ok(())
}

/// The highest attempt of `step_id` already recorded (a recovered run retries
/// from the one after it).
async fn last_attempt(ctx: &RunContext, lease: &Lease, step_id: &str) -> Result<u32, Stop> {
    let mut after = 0;
    let mut last = 0;
    loop {
        let page = ctx
            .store
            .events_after(lease.tenant_id(), lease.run_id(), after, 1000)
            .await?;
        let Some(tail) = page.last() else { break };
        after = tail.seq;
        for e in &page {
            if e.kind == EventType::StepStarted && e.value["step_id"] == step_id {
                last = last.max(e.value["attempt"].as_u64().unwrap_or(0) as u32);
            }
        }
    }
    Ok(last)
}

fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = base_ms.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let jitter = rand::thread_rng().gen_range(0..=exp / 4 + 1);
    Duration::from_millis(exp + jitter)
}

/// One model call, its deltas appended as they come (coalesced). The outer
/// `Result` stops the run; the inner one is the call's own outcome.
async fn model_step(
    ctx: &RunContext,
    agent: &AgentSnapshot,
    request: &ModelRequest,
    step_id: &str,
    attempt: u32,
) -> Result<Result<(String, Usage), ModelError>, Stop> {
    let started = tokio::select! {
        _ = ctx.handle.cancel.cancelled() => return Err(Stop::Cancelled),
        _ = ctx.handle.abandon.cancelled() => return Err(Stop::Abandoned),
        s = models::stream(&ctx.http, &agent.model, request) => s,
    };
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut text = String::new();
    let mut pending = String::new();
    let mut usage = Usage::default();
    let mut last_flush = Instant::now() - COALESCE;
    loop {
        let flush_at = (!pending.is_empty()).then_some(last_flush + COALESCE);
        tokio::select! {
            biased;
            _ = ctx.handle.abandon.cancelled() => return Err(Stop::Abandoned),
            _ = ctx.handle.cancel.cancelled() => return Err(Stop::Cancelled),
            _ = sleep_until(flush_at), if flush_at.is_some() => {
                flush(ctx, step_id, attempt, &mut pending).await?;
                last_flush = Instant::now();
            }
            item = stream.next() => match item {
                Some(Ok(ModelDelta::Content(delta))) => {
                    text.push_str(&delta);
                    pending.push_str(&delta);
                    if last_flush.elapsed() >= COALESCE {
                        flush(ctx, step_id, attempt, &mut pending).await?;
                        last_flush = Instant::now();
                    }
                }
                Some(Ok(ModelDelta::Usage(u))) => usage = u,
                Some(Ok(ModelDelta::Thinking(_) | ModelDelta::ThinkingBlock(_) | ModelDelta::ToolCall(_))) => {}
                Some(Err(e)) => return Ok(Err(e)),
                None => {
                    flush(ctx, step_id, attempt, &mut pending).await?;
                    return Ok(Ok((text, usage)));
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn flush(
    ctx: &RunContext,
    step_id: &str,
    attempt: u32,
    pending: &mut String,
) -> Result<(), Stop> {
    if pending.is_empty() {
        return Ok(());
    }
    let delta = std::mem::take(pending);
    append(ctx, vec![content_delta(step_id, attempt, &delta)]).await
}
