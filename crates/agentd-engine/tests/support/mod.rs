//! What the provider tests share: a model spec aimed at the fake, and a
//! stream read to its end.

use agentd_engine::models::{self, ModelDelta, ModelError, ModelRequest};
use agentd_engine::{ModelSpec, Provider};
use futures::StreamExt;

/// A variable cargo sets in every test process. Reading the key from it
/// spares the tests `std::env::set_var`, which is unsafe while other test
/// threads run.
pub const KEY_ENV: &str = "CARGO_PKG_NAME";

/// The key the provider should send: [`KEY_ENV`]'s value.
pub const KEY: &str = env!("CARGO_PKG_NAME");

pub fn spec(provider: Provider, base_url: String) -> ModelSpec {
    ModelSpec {
        provider,
        base_url: Some(base_url),
        model: "test-model".into(),
        api_key_env: Some(KEY_ENV.into()),
        max_retries: 0,
        retry_backoff_ms: 0,
        idle_timeout_secs: 5,
        temperature: None,
        thinking_budget_tokens: None,
        model_path: None,
        top_p: None,
        seed: None,
    }
}

/// Every delta of one call, and the error that ended it, if one did.
pub async fn collect(
    spec: &ModelSpec,
    request: &ModelRequest,
) -> (Vec<ModelDelta>, Option<ModelError>) {
    let http = reqwest::Client::new();
    let local = models::local::LocalModels::default();
    let mut stream = match models::stream(&http, &local, spec, request).await {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut deltas = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(d) => deltas.push(d),
            Err(e) => return (deltas, Some(e)),
        }
    }
    (deltas, None)
}
