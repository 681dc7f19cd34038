//! Re-quantisation at load: weights stored in a GGML type that candle runs
//! with a portable (scalar) dot product only are converted to one it has
//! SIMD kernels for, before the model is built from them.
//!
//! Why: candle 0.11 picks AVX2/NEON dot products at run time for Q4_0, Q8_0
//! and the K quants, but Q4_1, Q5_0, Q5_1 and Q8_1 have only a portable loop
//! (see docs/models.md). The default model is Q4_1, so without this its
//! matmuls are scalar. Converting costs a fraction of a second at load and
//! is deterministic (the same GGUF always gives the same weights).
//!
//! candle's `ModelWeights::from_gguf` reads tensors from a GGUF `Content`
//! and a reader, so the converted tensors are laid out in one in-memory
//! buffer with a `Content` pointing into it; the buffer is dropped once the
//! model is built.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::str::FromStr;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};

/// What the loader does with weights of a type candle has no SIMD kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requant {
    /// Load them as stored (the benchmark's baseline).
    Keep,
    /// Convert them to this type; a tensor whose rows do not split into its
    /// blocks (K quants need rows of 256) gets [`FALLBACK`] instead.
    To(GgmlDType),
}

/// Chosen by measurement (bench/README.md, "The local model"): fastest of
/// the types tried, and the closest to the stored weights.
pub const DEFAULT_REQUANT: Requant = Requant::To(GgmlDType::Q8_0);

/// Every 32-wide row (all GGUF block types) fits Q8_0, which candle
/// vectorises; it is also the most precise of the fast types.
const FALLBACK: GgmlDType = GgmlDType::Q8_0;

/// The source types candle 0.11 runs with a portable dot product only.
fn is_slow(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

impl FromStr for Requant {
    type Err = String;

    /// `keep`, or a target type: `q8_0`, `q4_0`, `q4k`, `q5k`, `q6k`, `q8k`.
    fn from_str(s: &str) -> Result<Requant, String> {
        let to = match s.to_ascii_lowercase().as_str() {
            "keep" | "none" | "off" => return Ok(Requant::Keep),
            "q8_0" => GgmlDType::Q8_0,
            "q4_0" => GgmlDType::Q4_0,
            "q4k" | "q4_k" => GgmlDType::Q4K,
            "q5k" | "q5_k" => GgmlDType::Q5K,
            "q6k" | "q6_k" => GgmlDType::Q6K,
            "q8k" | "q8_k" => GgmlDType::Q8K,
            other => {
                return Err(format!(
                    "unknown re-quantisation {other:?} (keep, q8_0, q4_0, q4k, q5k, q6k, q8k)"
                ));
            }
        };
        Ok(Requant::To(to))
    }
}

/// What a load converted, for the log and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct RequantSummary {
    /// Tensors converted, and how many of them took [`FALLBACK`].
    pub converted: usize,
    pub fallback: usize,
    /// The types converted from and to, as GGML names them (`q4_1 -> q8_0`).
    pub conversions: Vec<String>,
    /// Wall time of the conversion alone.
    pub secs: f64,
}

/// A GGUF's tensors, some converted, in memory: what `from_gguf` reads.
pub struct Converted {
    pub content: gguf_file::Content,
    pub data: Cursor<Vec<u8>>,
    pub summary: RequantSummary,
}

/// The name candle's quantized llama reads a separate output projection
/// from, and the embedding table it uses for it when that is absent.
const OUTPUT: &str = "output.weight";
const EMBEDDINGS: &str = "token_embd.weight";

/// Converts `ct`'s slow tensors as `requant` says. `None` when there is
/// nothing to convert: the model then loads from the file as it is.
pub fn convert<R: Read + Seek>(
    ct: gguf_file::Content,
    reader: &mut R,
    requant: Requant,
) -> candle_core::Result<Result<Converted, gguf_file::Content>> {
    let Requant::To(target) = requant else {
        return Ok(Err(ct));
    };
    if !ct.tensor_infos.values().any(|t| is_slow(t.ggml_dtype)) {
        return Ok(Err(ct));
    }
    let started = std::time::Instant::now();
    // Sorted, so the buffer's layout is the same on every load.
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut data = Vec::new();
    let mut infos = std::collections::HashMap::new();
    let mut summary = RequantSummary::default();
    for name in names {
        let info = &ct.tensor_infos[name];
        if !is_slow(info.ggml_dtype) {
            let bytes = raw_bytes(info, ct.tensor_data_offset, reader)?;
            infos.insert(
                name.clone(),
                place(&mut data, info, info.ggml_dtype, &bytes),
            );
            continue;
        }
        let qtensor = info.read(reader, ct.tensor_data_offset, &Device::Cpu)?;
        let (bytes, dtype) = requantize(&qtensor, target, &mut summary)?;
        if name == EMBEDDINGS && !ct.tensor_infos.contains_key(OUTPUT) {
            // Tied embeddings: the model dequantizes the table to f32 for
            // the lookup (kept exact from the stored type) and multiplies
            // by it for the logits (the largest matmul, converted).
            let stored = raw_bytes(info, ct.tensor_data_offset, reader)?;
            infos.insert(
                name.clone(),
                place(&mut data, info, info.ggml_dtype, &stored),
            );
            infos.insert(OUTPUT.to_owned(), place(&mut data, info, dtype, &bytes));
        } else {
            infos.insert(name.clone(), place(&mut data, info, dtype, &bytes));
        }
    }
    summary.conversions.sort();
    summary.conversions.dedup();
    summary.secs = started.elapsed().as_secs_f64();
    let content = gguf_file::Content {
        magic: ct.magic,
        metadata: ct.metadata,
        tensor_infos: infos,
        tensor_data_offset: 0,
    };
    Ok(Ok(Converted {
        content,
        data: Cursor::new(data),
        summary,
    }))
}

/// `qtensor` in `target` (or [`FALLBACK`] when its rows do not fit
/// `target`'s blocks), as GGUF tensor data, with the type it ended up in.
fn requantize(
    qtensor: &QTensor,
    target: GgmlDType,
    summary: &mut RequantSummary,
) -> candle_core::Result<(Vec<u8>, GgmlDType)> {
    let row = qtensor.shape().dims().last().copied().unwrap_or(0);
    let dtype = if row.is_multiple_of(target.block_size()) {
        target
    } else {
        summary.fallback += 1;
        FALLBACK
    };
    let values = qtensor.dequantize(&Device::Cpu)?;
    let converted = QTensor::quantize(&values, dtype)?;
    summary.converted += 1;
    summary.conversions.push(format!(
        "{} -> {}",
        type_name(qtensor.dtype()),
        type_name(dtype)
    ));
    Ok((converted.data()?.into_owned(), dtype))
}

/// A tensor's stored bytes, as `TensorInfo::read` finds them.
fn raw_bytes<R: Read + Seek>(
    info: &gguf_file::TensorInfo,
    data_offset: u64,
    reader: &mut R,
) -> candle_core::Result<Vec<u8>> {
    let dtype = info.ggml_dtype;
    let len = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
    let mut bytes = vec![0u8; len];
    reader.seek(SeekFrom::Start(data_offset.saturating_add(info.offset)))?;
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Appends `bytes` to the buffer and describes them as a tensor of `info`'s
/// shape in `dtype`.
fn place(
    data: &mut Vec<u8>,
    info: &gguf_file::TensorInfo,
    dtype: GgmlDType,
    bytes: &[u8],
) -> gguf_file::TensorInfo {
    let offset = data.len() as u64;
    data.extend_from_slice(bytes);
    gguf_file::TensorInfo {
        ggml_dtype: dtype,
        shape: info.shape.clone(),
        offset,
    }
}

/// GGML's lower-case name of a type, as llama.cpp prints it.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}
