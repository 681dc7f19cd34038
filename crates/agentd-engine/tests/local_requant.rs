//! Re-quantisation at load (`models::local::requant`), on GGUF files written
//! here with candle's own writer: which tensors are converted, to what, how
//! close the converted weights stay to the stored ones, and that the result
//! is the same on every load. The built-in model's end-to-end load and
//! generation with it is covered by the e2e suite (`local_model.rs`).

use std::io::Cursor;

use agentd_engine::models::local::requant::{self, DEFAULT_REQUANT, Requant};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};

/// Deterministic weights with a spread of magnitudes, like a layer's.
fn weights(rows: usize, cols: usize, phase: f32) -> Tensor {
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let x = i as f32 * 0.37 + phase;
            x.sin() * (1.0 + (x * 0.011).cos()) * 0.05
        })
        .collect();
    Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
}

fn quantized(rows: usize, cols: usize, phase: f32, dtype: GgmlDType) -> QTensor {
    QTensor::quantize(&weights(rows, cols, phase), dtype).unwrap()
}

/// A GGUF in memory with these tensors (and one metadata key).
fn gguf(tensors: &[(&str, QTensor)]) -> Vec<u8> {
    let arch = gguf_file::Value::String("llama".into());
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &[("general.architecture", &arch)], &refs).unwrap();
    out.into_inner()
}

fn convert(bytes: &[u8], how: Requant) -> Result<requant::Converted, gguf_file::Content> {
    let mut reader = Cursor::new(bytes);
    let ct = gguf_file::Content::read(&mut reader).unwrap();
    requant::convert(ct, &mut reader, how).unwrap()
}

fn values(t: &QTensor) -> Vec<f32> {
    t.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn read(c: &mut requant::Converted, name: &str) -> QTensor {
    c.content.tensor(&mut c.data, name, &Device::Cpu).unwrap()
}

#[test]
fn q4_1_weights_become_q8_0_and_stay_within_q8_0s_rounding() {
    let stored = quantized(32, 576, 0.0, GgmlDType::Q4_1);
    let norm = QTensor::quantize(
        &Tensor::ones(576, candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let file = gguf(&[
        (
            "blk.0.attn_q.weight",
            quantized(32, 576, 0.0, GgmlDType::Q4_1),
        ),
        ("output_norm.weight", norm),
        ("output.weight", quantized(64, 576, 1.0, GgmlDType::Q8_0)),
    ]);
    let mut converted = convert(&file, DEFAULT_REQUANT).expect("a Q4_1 tensor to convert");
    assert_eq!(converted.summary.converted, 1);
    assert_eq!(converted.summary.fallback, 0);
    assert_eq!(converted.summary.conversions, ["q4_1 -> q8_0"]);

    let q = read(&mut converted, "blk.0.attn_q.weight");
    assert_eq!(q.dtype(), GgmlDType::Q8_0);
    assert_eq!(q.shape().dims(), [32, 576]);
    // Q8_0 rounds each value to within half a step of its block's scale
    // d = max|x| / 127, plus up to 127 × d × 2^-11 from storing d as f16:
    // under 0.6 d, far inside Q4_1's own step (range / 15). Blocks of tiny
    // weights have d below f16's normal range, whose steps are 2^-24.
    let (before, after) = (values(&stored), values(&q));
    for (block_before, block_after) in before.chunks(32).zip(after.chunks(32)) {
        let max = block_before.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (b, a) in block_before.iter().zip(block_after) {
            let bound = 0.6 * max / 127.0 + 127.0 * 2f32.powi(-24);
            assert!((b - a).abs() <= bound, "{b} became {a}");
        }
    }
    // Types candle already vectorises, and plain floats, are copied as is.
    let out = read(&mut converted, "output.weight");
    assert_eq!(out.dtype(), GgmlDType::Q8_0);
    let original = quantized(64, 576, 1.0, GgmlDType::Q8_0);
    assert_eq!(out.data().unwrap(), original.data().unwrap());
    let norm = read(&mut converted, "output_norm.weight");
    assert_eq!(norm.dtype(), GgmlDType::F32);
    assert_eq!(values(&norm), vec![1.0; 576]);
}

#[test]
fn tied_embeddings_keep_the_stored_table_and_get_a_converted_output() {
    let stored = quantized(64, 576, 2.0, GgmlDType::Q4_1);
    let file = gguf(&[(
        "token_embd.weight",
        quantized(64, 576, 2.0, GgmlDType::Q4_1),
    )]);
    let mut converted = convert(&file, DEFAULT_REQUANT).expect("a Q4_1 tensor to convert");

    // The lookup table stays exactly as stored...
    let table = read(&mut converted, "token_embd.weight");
    assert_eq!(table.dtype(), GgmlDType::Q4_1);
    assert_eq!(table.data().unwrap(), stored.data().unwrap());
    // ...and the logits' matmul, which candle takes from `output.weight`
    // when present, runs on the converted copy.
    let output = read(&mut converted, "output.weight");
    assert_eq!(output.dtype(), GgmlDType::Q8_0);
    assert_eq!(output.shape().dims(), [64, 576]);
}

#[test]
fn k_quant_targets_fall_back_to_q8_0_for_rows_that_are_not_256_wide() {
    let file = gguf(&[
        (
            "blk.0.attn_q.weight",
            quantized(32, 576, 0.0, GgmlDType::Q4_1),
        ),
        (
            "blk.0.ffn_down.weight",
            quantized(32, 1536, 0.5, GgmlDType::Q5_0),
        ),
    ]);
    let mut converted = convert(&file, Requant::To(GgmlDType::Q4K)).expect("tensors to convert");
    assert_eq!(converted.summary.converted, 2);
    assert_eq!(converted.summary.fallback, 1);
    assert_eq!(
        converted.summary.conversions,
        ["q4_1 -> q8_0", "q5_0 -> q4_k"]
    );
    assert_eq!(
        read(&mut converted, "blk.0.attn_q.weight").dtype(),
        GgmlDType::Q8_0
    );
    assert_eq!(
        read(&mut converted, "blk.0.ffn_down.weight").dtype(),
        GgmlDType::Q4K
    );
}

#[test]
fn the_same_file_converts_to_the_same_bytes_every_time() {
    let file = gguf(&[
        (
            "token_embd.weight",
            quantized(64, 576, 2.0, GgmlDType::Q4_1),
        ),
        (
            "blk.0.attn_q.weight",
            quantized(32, 576, 0.0, GgmlDType::Q4_1),
        ),
        (
            "blk.0.attn_k.weight",
            quantized(32, 576, 3.0, GgmlDType::Q5_1),
        ),
    ]);
    let first = convert(&file, DEFAULT_REQUANT).expect("tensors to convert");
    let second = convert(&file, DEFAULT_REQUANT).expect("tensors to convert");
    assert_eq!(first.data.get_ref(), second.data.get_ref());
    for (name, info) in &first.content.tensor_infos {
        let other = &second.content.tensor_infos[name];
        assert_eq!(
            (info.offset, info.ggml_dtype),
            (other.offset, other.ggml_dtype)
        );
    }
}

#[test]
fn nothing_is_converted_when_asked_not_to_or_when_nothing_is_slow() {
    let slow = gguf(&[(
        "blk.0.attn_q.weight",
        quantized(32, 576, 0.0, GgmlDType::Q4_1),
    )]);
    let kept = convert(&slow, Requant::Keep).err().expect("kept as stored");
    assert_eq!(
        kept.tensor_infos["blk.0.attn_q.weight"].ggml_dtype,
        GgmlDType::Q4_1
    );

    let fast = gguf(&[
        (
            "blk.0.attn_q.weight",
            quantized(32, 576, 0.0, GgmlDType::Q8_0),
        ),
        (
            "blk.0.ffn_down.weight",
            quantized(32, 512, 0.0, GgmlDType::Q4K),
        ),
    ]);
    assert!(
        convert(&fast, DEFAULT_REQUANT).is_err(),
        "nothing to convert"
    );
}

#[test]
fn requant_names_parse_and_unknown_ones_are_refused() {
    assert_eq!("keep".parse::<Requant>(), Ok(Requant::Keep));
    assert_eq!("Q8_0".parse::<Requant>(), Ok(Requant::To(GgmlDType::Q8_0)));
    assert_eq!("q4k".parse::<Requant>(), Ok(Requant::To(GgmlDType::Q4K)));
    let err = "q3_k_m".parse::<Requant>().unwrap_err();
    assert!(err.contains("unknown re-quantisation \"q3_k_m\""), "{err}");
}
