//! End-to-end tests: a real `agentd serve` process against a fake
//! OpenAI-compatible upstream, driven over HTTP and SSE.

mod api;
mod chat;
mod cors;
mod durability;
mod keys;
mod local_model;
mod mcp;
mod sandbox;
mod sandbox_egress;
mod sandbox_store;
mod startup;
mod streaming;
mod support;
mod tenancy;
mod tools;
