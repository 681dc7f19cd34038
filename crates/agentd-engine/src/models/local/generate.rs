//! The model in memory and one generation: prompt in, tokens out one at a
//! time, on a blocking thread (candle's CPU kernels use every core through
//! rayon; the async runtime is never held).

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{self, ModelWeights};

use super::LocalError;
use super::requant::{self, DEFAULT_REQUANT, Requant, RequantSummary};
use super::vocab::Vocab;
use crate::models::ChatMessage;

/// GGUF architectures candle's quantized llama runs (their metadata keys
/// are `llama.*`); documented in docs/models.md.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Used when the model does not set them: SmolLM2's card recommends a low
/// temperature with nucleus sampling.
const DEFAULT_TEMPERATURE: f64 = 0.2;
const DEFAULT_TOP_P: f64 = 0.9;
const DEFAULT_SEED: u64 = 299_792_458;

/// A loaded model, shared by every run that uses it.
pub struct LoadedModel {
    /// Never run itself: each generation clones it (the quantized tensors
    /// are reference-counted, so a clone costs only its own KV cache).
    weights: ModelWeights,
    pub vocab: Vocab,
    /// Prompt plus reply, in tokens: the GGUF's context length, capped by
    /// candle's rotary table.
    pub context: usize,
    /// What the load converted (`None`: the weights run as stored).
    pub requant: Option<RequantSummary>,
    device: Device,
}

/// How one generation samples.
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Keep going past stop tokens: the benchmark measures a fixed length.
    pub ignore_stop: bool,
}

/// One generation's measurements (the benchmark prints them; usage is
/// built from the counts).
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing, which ends with the first token sampled.
    pub prompt_secs: f64,
    /// Every later token.
    pub decode_secs: f64,
}

impl LoadedModel {
    /// Reads a GGUF: architecture checked, tokenizer and template built,
    /// weights loaded quantized, those of a type candle has no SIMD kernel
    /// for converted to Q8_0 (see [`requant`]).
    pub fn load(path: &Path) -> Result<LoadedModel, LocalError> {
        LoadedModel::load_with(path, DEFAULT_REQUANT)
    }

    /// [`LoadedModel::load`] with another re-quantisation (the benchmark
    /// compares them).
    pub fn load_with(path: &Path, requant: Requant) -> Result<LoadedModel, LocalError> {
        let mut file = File::open(path).map_err(|e| LocalError::io(path, e))?;
        let ct = gguf_file::Content::read(&mut file)
            .map_err(|e| LocalError::Unsupported(format!("{}: {e}", path.display())))?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(LocalError::Unsupported(format!(
                "GGUF architecture {arch:?} is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let vocab = Vocab::from_gguf(&ct)?;
        let context = ct
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(quantized_llama::MAX_SEQ_LEN, |c| c as usize)
            .min(quantized_llama::MAX_SEQ_LEN);
        let device = Device::Cpu;
        let bad =
            |e: candle_core::Error| LocalError::Unsupported(format!("{}: {e}", path.display()));
        let (weights, requant) = match requant::convert(ct, &mut file, requant).map_err(bad)? {
            Ok(mut converted) => {
                let weights =
                    ModelWeights::from_gguf(converted.content, &mut converted.data, &device)
                        .map_err(bad)?;
                (weights, Some(converted.summary))
            }
            Err(ct) => (
                ModelWeights::from_gguf(ct, &mut file, &device).map_err(bad)?,
                None,
            ),
        };
        Ok(LoadedModel {
            weights,
            vocab,
            context,
            requant,
            device,
        })
    }

    /// The prompt's tokens: the conversation rendered by the model's
    /// template. When it does not fit (leaving room for at least some
    /// reply), the oldest turns after the system message are dropped.
    pub fn prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LocalError> {
        let reserve = (self.context / 8).max(16);
        let system = matches!(messages.first(), Some(ChatMessage::System { .. })) as usize;
        let mut skip = 0;
        loop {
            let kept: Vec<ChatMessage> = messages[..system]
                .iter()
                .chain(&messages[system + skip..])
                .cloned()
                .collect();
            let tokens = self.vocab.encode(&self.vocab.render(&kept)?)?;
            if tokens.len() + reserve <= self.context {
                return Ok(tokens);
            }
            if system + skip + 1 >= messages.len() {
                return Err(LocalError::ContextExceeded {
                    tokens: tokens.len(),
                    context: self.context,
                });
            }
            skip += 1;
        }
    }

    /// Generates after `prompt`, handing each piece of text to `emit` as
    /// soon as it is whole UTF-8; stops at a stop token, at `max_tokens`,
    /// at the context's end, or when `emit` returns false (nobody listens).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: SamplingParams,
        mut emit: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, LocalError> {
        let mut weights = self.weights.clone();
        let temperature = params
            .temperature
            .map_or(DEFAULT_TEMPERATURE, f64::from)
            .max(0.0);
        let sampling = if temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            Sampling::TopP {
                p: params.top_p.map_or(DEFAULT_TOP_P, f64::from),
                temperature,
            }
        };
        let mut sampler =
            LogitsProcessor::from_sampling(params.seed.unwrap_or(DEFAULT_SEED), sampling);
        let budget = params
            .max_tokens
            .min(self.context.saturating_sub(prompt.len()));
        let mut stats = GenerationStats {
            prompt_tokens: prompt.len(),
            ..GenerationStats::default()
        };
        let mut decoder = self.vocab.tokenizer.decode_stream(true);
        let started = Instant::now();
        let mut input = prompt.to_vec();
        let mut pos = 0;
        while stats.generated_tokens < budget {
            let x = Tensor::new(input.as_slice(), &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(LocalError::inference)?;
            let logits = weights
                .forward(&x, pos)
                .and_then(|l| l.squeeze(0))
                .map_err(LocalError::inference)?;
            let next = sampler.sample(&logits).map_err(LocalError::inference)?;
            if stats.generated_tokens == 0 {
                stats.prompt_secs = started.elapsed().as_secs_f64();
            }
            pos += input.len();
            stats.generated_tokens += 1;
            if !params.ignore_stop && self.vocab.stop_ids.contains(&next) {
                break;
            }
            let piece = decoder
                .step(next)
                .map_err(|e| LocalError::Internal(format!("tokenizer: {e}")))?;
            if let Some(text) = piece
                && !text.is_empty()
                && !emit(&text)
            {
                break;
            }
            input = vec![next];
        }
        stats.decode_secs = started.elapsed().as_secs_f64() - stats.prompt_secs;
        Ok(stats)
    }
}
