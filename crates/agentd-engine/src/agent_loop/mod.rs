//! One claimed run, driven until it ends or pauses: rebuild its progress
//! from its events, answer the newest turn's tool calls, call the model,
//! repeat. A run pauses (releasing its worker and lease) when a call needs
//! a human, and stops at its agent's limits.

mod calls;
mod model_step;
mod replay;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentd_core::signal::{PendingRequest, awaiting_payload};
use agentd_core::time::now_millis;
use agentd_core::{EventType, NewEvent, RunTransition, Usage};
use agentd_store::{ClaimedRun, RunUpdate, Store, StoreError};
use serde_json::json;
use tokio::time::Instant;

use self::model_step::StepEnd;
use self::replay::Transcript;
use crate::agents::AgentSnapshot;
use crate::appender::{Appender, AppenderClosed};
use crate::models::{ChatMessage, ModelRequest};
use crate::scrub::Scrubber;
use crate::tools::ToolRegistry;
use crate::worker::RunHandle;

pub(crate) struct RunContext {
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    pub handle: RunHandle,
    /// The run's plain appends (step boundaries, deltas), in order.
    pub appender: Appender,
    pub scrubber: Arc<Scrubber>,
    pub tools: Arc<ToolRegistry>,
    /// The in-process models (`provider = "local"`), shared by every run.
    pub local_models: crate::models::local::LocalModels,
    /// When the run's `timeout_secs` of running time ends; set once its
    /// progress is known.
    pub deadline: OnceLock<Instant>,
}

impl RunContext {
    /// Ends the claim: its last events and state change, secrets scrubbed
    /// from both, committed behind everything queued before them.
    async fn commit(
        &self,
        events: Vec<NewEvent>,
        mut update: RunUpdate,
    ) -> Result<(), AppenderClosed> {
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
        // The appender scrubs the events with the deltas queued before them.
        self.appender.finish(events, update).await
    }

    /// Resolves when the run must stop: lease lost or shutdown (abandon),
    /// client cancel, or its running time is up.
    async fn stopped(&self) -> Stop {
        let deadline = self.deadline.get().copied();
        tokio::select! {
            biased;
            _ = self.handle.abandon.cancelled() => Stop::Abandoned,
            _ = self.handle.cancel.cancelled() => Stop::Cancelled,
            _ = sleep_until(deadline) => Stop::TimedOut,
        }
    }

    /// Runs `fut` unless the run must stop first.
    async fn guard<F: Future>(&self, fut: F) -> Result<F::Output, Stop> {
        tokio::select! {
            biased;
            stop = self.stopped() => Err(stop),
            out = fut => Ok(out),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Scrubs every event's payload in place (DESIGN §3: before it is written).
pub(crate) fn scrub_events(scrubber: &Scrubber, events: &mut [NewEvent]) {
    for e in events {
        scrubber.scrub_value(Arc::make_mut(&mut e.value));
    }
}

/// Why the loop stopped early.
enum Stop {
    /// Client cancel: write `run.cancelled`.
    Cancelled,
    /// `timeout_secs` of running time passed: write `run.limit_exceeded`.
    TimedOut,
    /// Lease lost or process stopping: write nothing.
    Abandoned,
}

impl From<AppenderClosed> for Stop {
    fn from(_: AppenderClosed) -> Stop {
        Stop::Abandoned
    }
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

/// This claim's usage, committed (added to the run's) when the claim ends.
type ClaimUsage = std::sync::Mutex<Usage>;

pub(crate) async fn drive(ctx: RunContext, claimed: ClaimedRun) {
    let usage = ClaimUsage::default();
    let result = run_to_end(&ctx, &claimed, &usage).await;
    let (events, mut update) = match result {
        Ok(()) | Err(Stop::Abandoned) => return,
        Err(Stop::Cancelled) => (
            vec![NewEvent::new(
                EventType::Cancelled,
                json!({"reason": "cancelled by client", "from": "running"}),
            )],
            RunUpdate::new(RunTransition::Cancel),
        ),
        Err(Stop::TimedOut) => limit_events("timeout_secs", json!(null)),
    };
    update.consume_controls = true;
    update.usage = Some(take_usage(&usage));
    // Behind the queued deltas, so the terminal event stays last. A failure
    // was logged where the write failed.
    if ctx.commit(events, update).await.is_err() {
        tracing::debug!(run = claimed.lease.run_id(), "could not record the stop");
    }
}

fn take_usage(usage: &ClaimUsage) -> Usage {
    std::mem::take(&mut *usage.lock().unwrap_or_else(|e| e.into_inner()))
}

fn add_usage(usage: &ClaimUsage, add: &Usage) {
    usage.lock().unwrap_or_else(|e| e.into_inner()).add(add);
}

fn limit_events(limit: &str, value: serde_json::Value) -> (Vec<NewEvent>, RunUpdate) {
    let mut update = RunUpdate::new(RunTransition::ExceedLimit);
    update.reason_code = Some("LIMIT_EXCEEDED".into());
    update.error = Some(format!("the agent's {limit} limit was reached"));
    (
        vec![NewEvent::new(
            EventType::LimitExceeded,
            json!({"limit": limit, "value": value, "reason_code": "LIMIT_EXCEEDED"}),
        )],
        update,
    )
}

async fn run_to_end(
    ctx: &RunContext,
    claimed: &ClaimedRun,
    usage: &ClaimUsage,
) -> Result<(), Stop> {
    let lease = &claimed.lease;
    let run = &claimed.run;
    if ctx.handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let agent: AgentSnapshot = match serde_json::from_value(run.agent_config.clone()) {
        Ok(a) => a,
        Err(e) => return fail(ctx, "AGENT_CONFIG_INVALID", &e.to_string(), usage).await,
    };
    // The awaits besides the model step (tool set-up, which may start MCP
    // servers, a replay, tool calls, a pause) are boxed: an async fn's state
    // is as large as its largest await, and every run held the room for them
    // while it streamed (15.2 KB per run task before, 6.8 KB after).
    let tools = match ctx.guard(Box::pin(ctx.tools.for_agent(&agent))).await? {
        Ok(t) => t,
        Err(e) => return fail(ctx, e.reason_code, &e.to_string(), usage).await,
    };
    // A first claim has nothing to replay (its creation events and the
    // claim's own start): skip the read.
    let fresh = !claimed.recovered && run.last_seq <= agentd_store::CREATION_EVENTS + 1;
    let mut t = if fresh {
        Transcript::starting_now()
    } else {
        Box::pin(Transcript::load(ctx, lease)).await?
    };
    let left = agent.timeout_secs as i64 * 1000 - t.running_ms(now_millis());
    let _ = ctx
        .deadline
        .set(Instant::now() + Duration::from_millis(left.max(0) as u64));
    let base = base_messages(ctx, run, &agent).await?;

    loop {
        if !t.open_calls().is_empty() {
            let waiting = Box::pin(calls::resolve(ctx, lease, &tools, &mut t)).await?;
            if !waiting.is_empty() {
                return Box::pin(pause(ctx, &agent, &waiting, usage)).await;
            }
        } else if let Some(turn) = t.last_assistant()
            && turn.tool_calls.is_empty()
        {
            // The final answer was recorded but the run not finished (a crash
            // in between): finish it now, the answer as it was.
            let text = turn.content.clone();
            return succeed(ctx, &run.user_message, text, usage).await;
        }

        if t.model_steps >= agent.max_steps {
            return exceed(ctx, "max_steps", json!(agent.max_steps), usage).await;
        }
        let budget = u64::from(agent.max_output_tokens).saturating_sub(t.output_tokens);
        if budget == 0 {
            return exceed(
                ctx,
                "max_output_tokens",
                json!(agent.max_output_tokens),
                usage,
            )
            .await;
        }
        let mut messages = base.clone();
        messages.extend(t.turns.iter().cloned());
        let request = ModelRequest {
            messages,
            tools: tools.specs(),
            max_output_tokens: budget.min(u32::MAX as u64) as u32,
        };
        let step_id = format!("step_{}", t.model_steps + 1);
        let attempt = t.next_attempt(&step_id);
        match model_step::run(ctx, &agent, &request, &step_id, attempt).await? {
            StepEnd::Done { turn, usage: used } => {
                add_usage(usage, &used);
                let done = turn.tool_calls.is_empty();
                let text = turn.content.clone();
                t.push_assistant(turn, used.output_tokens);
                if done {
                    return succeed(ctx, &run.user_message, text, usage).await;
                }
            }
            StepEnd::Failed { error, usage: used } => {
                add_usage(usage, &used);
                return fail(ctx, error.reason_code(), &error.to_string(), usage).await;
            }
        }
    }
}

/// The conversation before this run's own turns: instructions, the
/// session's history, the user's new message.
async fn base_messages(
    ctx: &RunContext,
    run: &agentd_core::Run,
    agent: &AgentSnapshot,
) -> Result<Vec<ChatMessage>, Stop> {
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
    // Attachments were checked where they came in (the chat API).
    let attachments = serde_json::from_value(run.input["attachments"].clone()).unwrap_or_default();
    messages.push(ChatMessage::User {
        content: run.user_message.clone(),
        attachments,
    });
    Ok(messages)
}

/// Queues plain events; they are written in order behind the loop's back.
async fn append(ctx: &RunContext, events: Vec<NewEvent>) -> Result<(), Stop> {
    ctx.appender.send(events).await?;
    Ok(())
}

/// Ends a claim with a state change, after everything queued.
async fn finish(
    ctx: &RunContext,
    events: Vec<NewEvent>,
    mut update: RunUpdate,
    usage: &ClaimUsage,
) -> Result<(), Stop> {
    update.usage = Some(take_usage(usage));
    ctx.commit(events, update).await?;
    Ok(())
}

async fn succeed(
    ctx: &RunContext,
    user_message: &str,
    text: String,
    usage: &ClaimUsage,
) -> Result<(), Stop> {
    let total = usage.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let events = vec![NewEvent::new(
        EventType::WorkerSucceeded,
        json!({"output": {"text": text}, "usage": total}),
    )];
    let mut update = RunUpdate::new(RunTransition::Succeed);
    update.output = Some(json!({"text": text}));
    update.messages = vec![
        ("user".to_owned(), user_message.to_owned()),
        ("assistant".to_owned(), text),
    ];
    update.consume_controls = true;
    finish(ctx, events, update, usage).await
}

async fn fail(ctx: &RunContext, code: &str, message: &str, usage: &ClaimUsage) -> Result<(), Stop> {
    let events = vec![NewEvent::new(
        EventType::WorkerFailed,
        json!({"reason_code": code, "error": message}),
    )];
    let mut update = RunUpdate::new(RunTransition::Fail);
    update.reason_code = Some(code.to_owned());
    update.error = Some(message.to_owned());
    update.consume_controls = true;
    finish(ctx, events, update, usage).await
}

async fn exceed(
    ctx: &RunContext,
    limit: &str,
    value: serde_json::Value,
    usage: &ClaimUsage,
) -> Result<(), Stop> {
    let (events, mut update) = limit_events(limit, value);
    update.consume_controls = true;
    finish(ctx, events, update, usage).await
}

/// Hands the run to a human: `run.awaiting_input`, no lease, no worker,
/// until a signal resumes it or `approval_timeout_secs` ends the wait.
async fn pause(
    ctx: &RunContext,
    agent: &AgentSnapshot,
    waiting: &[PendingRequest],
    usage: &ClaimUsage,
) -> Result<(), Stop> {
    let events = vec![NewEvent::new(
        EventType::AwaitingInput,
        awaiting_payload(waiting),
    )];
    let mut update = RunUpdate::new(RunTransition::AwaitInput);
    update.wait_until = Some(now_millis() + agent.approval_timeout_secs as i64 * 1000);
    finish(ctx, events, update, usage).await
}
