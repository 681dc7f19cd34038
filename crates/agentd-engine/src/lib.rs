//! agentd's engine: workers that claim queued runs under fenced leases and
//! drive each through the agent loop against its model.
//!
//! Boundaries: the engine talks to the world through the [`agentd_store::Store`]
//! trait (durable state, events, wake-ups) and to models over HTTP. It never
//! serves clients; the server only creates runs and reads what the engine wrote.

mod agent_loop;
pub mod agents;
mod appender;
pub mod models;
pub mod scrub;
pub mod tools;
mod worker;

pub use agents::{AgentCatalog, AgentSnapshot, AgentSpec, ModelSpec, Provider};
pub use scrub::Scrubber;
pub use tools::ToolRegistry;
pub use tools::mcp::McpServerSpec;
pub use worker::{Engine, EngineConfig, RunSlot};
