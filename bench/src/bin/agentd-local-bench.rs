//! The `local` provider's inference speed beside llama.cpp on the same GGUF,
//! in the same run: time to first token, prompt tokens/s, decode tokens/s
//! and resident memory. agentd's side is the code runs use (`LoadedModel`:
//! candle's quantized llama, the GGUF's own tokenizer); llama.cpp's is
//! `llama-cpp-python` driven by `bench/local_llamacpp.py` over the very same
//! prompt token ids, greedy, for the same number of tokens.
//!
//! `agentd-local-bench [--gguf PATH] [--prompt-tokens 256] [--decode-tokens 128]
//!  [--rounds 3] [--python python3] [--requant q8_0|q4_0|q4k|q8k|keep]`
//!
//! Without `--gguf`, the built-in model is taken from the models cache
//! (fetched there first if missing). llama.cpp is skipped, with a note, when
//! the Python interpreter cannot import `llama_cpp`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agentd_engine::models::ChatMessage;
use agentd_engine::models::local::fetch::{self, DEFAULT_MODEL, FetchOptions};
use agentd_engine::models::local::generate::{LoadedModel, SamplingParams};
use agentd_engine::models::local::requant::{DEFAULT_REQUANT, Requant};
use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// The GGUF to run (default: the built-in model from the cache).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Prompt length, about (a passage repeated, in the chat template).
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Tokens generated per round (stop tokens ignored).
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Rounds per engine; the best round is reported (the first warms caches).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The interpreter that has `llama-cpp-python` installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// What the load converts weights candle has no SIMD kernel for to
    /// (`keep`: run them as stored); default: what agentd does.
    #[arg(long)]
    requant: Option<Requant>,
}

/// One engine's best round.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    ttft_ms: f64,
    prompt_tps: f64,
    decode_tps: f64,
    rss_mib: f64,
}

const PASSAGE: &str = "The lighthouse keeper walked up the spiral stairs every evening, \
counting the steps, checking the lamp and writing the weather in a small notebook. ";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gguf = match &args.gguf {
        Some(p) => p.clone(),
        None => {
            let source = fetch::builtin(DEFAULT_MODEL).expect("the built-in model");
            let options = FetchOptions::from_env();
            fetch::ensure(&fetch::http_client()?, &source, &options, &|_, _| {})
                .await
                .context("cannot fetch the built-in model")?
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("model: {}", gguf.display());
    // `-C target-cpu=native` on a modern x86 turns these on at compile time.
    println!(
        "cores: {cores}; compiled with avx2: {}, fma: {}",
        cfg!(target_feature = "avx2"),
        cfg!(target_feature = "fma")
    );

    let started = Instant::now();
    let model = LoadedModel::load_with(&gguf, args.requant.unwrap_or(DEFAULT_REQUANT))?;
    println!(
        "agentd load: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    match &model.requant {
        Some(r) => println!(
            "re-quantised at load: {} tensors ({}; {} fell back to q8_0) in {:.0} ms",
            r.converted,
            r.conversions.join(", "),
            r.fallback,
            r.secs * 1e3
        ),
        None => println!("re-quantised at load: nothing (weights as stored)"),
    }
    let prompt = build_prompt(&model, args.prompt_tokens)?;
    println!(
        "prompt: {} tokens; decode: {} tokens; rounds: {}",
        prompt.len(),
        args.decode_tokens,
        args.rounds
    );

    let (candle, model) = tokio::task::spawn_blocking({
        let prompt = prompt.clone();
        let (rounds, n) = (args.rounds, args.decode_tokens);
        move || run_candle(&model, &prompt, n, rounds).map(|f| (f, model))
    })
    .await??;
    let llama = run_llamacpp(&args, &gguf, &prompt);
    let reply = sample_reply(&model)?;

    println!();
    println!(
        "{:<22} {:>10} {:>14} {:>14} {:>10}",
        "engine", "ttft ms", "prompt tok/s", "decode tok/s", "RSS MiB"
    );
    print_row("agentd (candle)", &candle);
    match llama {
        Ok(l) => {
            print_row("llama.cpp", &l);
            println!(
                "{:<22} {:>10.2} {:>14.2} {:>14.2} {:>10.2}",
                "ratio agentd/llama.cpp",
                candle.ttft_ms / l.ttft_ms,
                candle.prompt_tps / l.prompt_tps,
                candle.decode_tps / l.decode_tps,
                candle.rss_mib / l.rss_mib
            );
        }
        Err(e) => println!("llama.cpp: skipped ({e:#})"),
    }
    println!();
    println!("greedy reply to {SAMPLE_QUESTION:?}:\n{reply}");
    Ok(())
}

/// Asked once, greedy, so a re-quantisation's effect on the text can be
/// read beside its speed.
const SAMPLE_QUESTION: &str = "What is the capital of France? Answer in two sentences.";

fn sample_reply(model: &LoadedModel) -> anyhow::Result<String> {
    let prompt = model.prompt(&[ChatMessage::user(SAMPLE_QUESTION.to_owned())])?;
    let params = SamplingParams {
        temperature: Some(0.0),
        top_p: None,
        seed: Some(1),
        max_tokens: 48,
        ignore_stop: false,
    };
    let mut reply = String::new();
    model.generate(&prompt, params, |text| {
        reply.push_str(text);
        true
    })?;
    Ok(reply)
}

fn print_row(name: &str, f: &Figures) {
    println!(
        "{:<22} {:>10.1} {:>14.1} {:>14.1} {:>10.1}",
        name, f.ttft_ms, f.prompt_tps, f.decode_tps, f.rss_mib
    );
}

/// A user turn of about `tokens` tokens, rendered by the model's template.
fn build_prompt(model: &LoadedModel, tokens: usize) -> anyhow::Result<Vec<u32>> {
    let mut text = String::from("Summarize this text in one sentence.\n\n");
    loop {
        let ids = model.prompt(&[ChatMessage::user(text.clone())])?;
        if ids.len() >= tokens {
            return Ok(ids);
        }
        text.push_str(PASSAGE);
    }
}

fn run_candle(
    model: &LoadedModel,
    prompt: &[u32],
    decode: usize,
    rounds: usize,
) -> anyhow::Result<Figures> {
    let mut best: Option<Figures> = None;
    for _ in 0..rounds.max(1) {
        let params = SamplingParams {
            temperature: Some(0.0),
            top_p: None,
            seed: Some(1),
            max_tokens: decode,
            ignore_stop: true,
        };
        let stats = model.generate(prompt, params, |_| true)?;
        let f = Figures {
            ttft_ms: stats.prompt_secs * 1e3,
            prompt_tps: stats.prompt_tokens as f64 / stats.prompt_secs,
            decode_tps: (stats.generated_tokens - 1) as f64 / stats.decode_secs,
            rss_mib: self_rss_mib(),
        };
        best = Some(match best {
            Some(b) if b.ttft_ms + 1e3 / b.decode_tps <= f.ttft_ms + 1e3 / f.decode_tps => b,
            _ => f,
        });
    }
    Ok(best.expect("at least one round"))
}

fn self_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn run_llamacpp(args: &Args, gguf: &Path, prompt: &[u32]) -> anyhow::Result<Figures> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("local_llamacpp.py");
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .arg(gguf)
        .arg(serde_json::to_string(prompt)?)
        .arg(args.decode_tokens.to_string())
        .arg(args.rounds.to_string())
        .output()
        .with_context(|| format!("cannot run {}", args.python))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}", err.lines().last().unwrap_or("failed"));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("the script's JSON")?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    Ok(Figures {
        ttft_ms: num("ttft_ms")?,
        prompt_tps: num("prompt_tps")?,
        decode_tps: num("decode_tps")?,
        rss_mib: num("rss_mib")?,
    })
}
