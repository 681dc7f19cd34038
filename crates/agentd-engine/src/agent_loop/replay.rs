//! A run's progress, rebuilt from its own events every time a worker takes
//! it (first claim, resume after a signal, recovery after a crash). The
//! events are the only record: nothing else says which model steps finished,
//! which tools ran, or what a human decided.

use std::collections::{HashMap, HashSet};

use agentd_core::signal::PauseState;
use agentd_core::time::Millis;
use agentd_core::{Event, EventType};
use agentd_store::Lease;

use super::{RunContext, Stop};
use crate::models::{AssistantTurn, ChatMessage, ToolCall, ToolResult};

#[derive(Debug, Default)]
pub(crate) struct Transcript {
    /// The run's own turns after the user's message: assistant turns and
    /// tool results, in order.
    pub turns: Vec<ChatMessage>,
    /// Model steps that finished.
    pub model_steps: u32,
    /// Highest attempt recorded per step id.
    pub attempts: HashMap<String, u32>,
    /// Tool calls whose `tool.started` is durable.
    pub started_tools: HashSet<String>,
    /// Tool calls with a result.
    pub finished_tools: HashSet<String>,
    pub pause: PauseState,
    /// Output tokens of the finished model steps.
    pub output_tokens: u64,
    /// When the first worker started it.
    pub started_at: Option<Millis>,
    /// Time spent waiting for humans, excluded from `timeout_secs`.
    pub paused_ms: i64,
    paused_since: Option<Millis>,
}

impl Transcript {
    /// A run on its first claim: no steps, started now.
    pub fn starting_now() -> Transcript {
        Transcript {
            started_at: Some(agentd_core::time::now_millis()),
            ..Transcript::default()
        }
    }

    pub async fn load(ctx: &RunContext, lease: &Lease) -> Result<Transcript, Stop> {
        let mut t = Transcript::default();
        let mut after = 0;
        loop {
            let page = ctx
                .store
                .events_after(lease.tenant_id(), lease.run_id(), after, 1000)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                t.observe(e);
            }
        }
        Ok(t)
    }

    fn observe(&mut self, e: &Event) {
        let v = e.value();
        match e.kind {
            EventType::WorkerStarted | EventType::WorkerRecovered => {
                self.started_at.get_or_insert(e.created_at);
            }
            EventType::StepStarted => {
                if let Some(step) = v["step_id"].as_str() {
                    let attempt = v["attempt"].as_u64().unwrap_or(1) as u32;
                    let seen = self.attempts.entry(step.to_owned()).or_default();
                    *seen = (*seen).max(attempt);
                }
            }
            EventType::StepDone if v["outcome"] == "succeeded" => {
                if let Ok(turn) = serde_json::from_value::<AssistantTurn>(v["message"].clone()) {
                    self.model_steps += 1;
                    self.output_tokens += v["usage"]["output_tokens"].as_u64().unwrap_or(0);
                    self.turns.push(ChatMessage::Assistant(turn));
                }
            }
            EventType::ToolStarted => {
                if let Some(id) = v["tool_call_id"].as_str() {
                    self.started_tools.insert(id.to_owned());
                }
            }
            EventType::ToolFinished => {
                if let Some(id) = v["tool_call_id"].as_str() {
                    self.finished_tools.insert(id.to_owned());
                    self.turns.push(ChatMessage::Tool(ToolResult {
                        tool_call_id: id.to_owned(),
                        name: v["tool"].as_str().unwrap_or_default().to_owned(),
                        content: v["content"].as_str().unwrap_or_default().to_owned(),
                        is_error: v["is_error"].as_bool().unwrap_or(false),
                    }));
                }
            }
            EventType::AwaitingInput => {
                self.pause.observe(e);
                self.paused_since = Some(e.created_at);
            }
            EventType::SignalReceived => self.pause.observe(e),
            EventType::Resumed => {
                if let Some(since) = self.paused_since.take() {
                    self.paused_ms += (e.created_at - since).max(0);
                }
            }
            _ => {}
        }
    }

    /// The next attempt number of `step_id`.
    pub fn next_attempt(&self, step_id: &str) -> u32 {
        self.attempts.get(step_id).copied().unwrap_or(0) + 1
    }

    /// The newest assistant turn, if the run's last model step produced one.
    pub fn last_assistant(&self) -> Option<&AssistantTurn> {
        self.turns.iter().rev().find_map(|m| match m {
            ChatMessage::Assistant(t) => Some(t),
            _ => None,
        })
    }

    /// Calls of the newest assistant turn that have no result yet.
    pub fn open_calls(&self) -> Vec<ToolCall> {
        self.last_assistant()
            .map(|t| {
                t.tool_calls
                    .iter()
                    .filter(|c| !self.finished_tools.contains(&c.id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Running time so far (waiting for humans excluded).
    pub fn running_ms(&self, now: Millis) -> i64 {
        match self.started_at {
            Some(start) => (now - start - self.paused_ms).max(0),
            None => 0,
        }
    }

    pub fn push_result(&mut self, result: ToolResult) {
        self.finished_tools.insert(result.tool_call_id.clone());
        self.turns.push(ChatMessage::Tool(result));
    }

    pub fn push_assistant(&mut self, turn: AssistantTurn, output_tokens: u64) {
        self.model_steps += 1;
        self.output_tokens += output_tokens;
        self.turns.push(ChatMessage::Assistant(turn));
    }
}
