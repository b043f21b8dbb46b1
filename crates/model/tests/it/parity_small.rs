//! Parity of the full-size ViT-S/14 fixtures (random weights, real architecture) against
//! the PyTorch reference and onnxruntime. Integration tests: each load compiles an 88 MB
//! graph, so these take a minute or two on a 2-core machine.

use crate::common::*;
use dinoedge_model::{Backbone, Precision};
use ndarray::{Array2, s};

/// `blocks` where attention fuses on this CPU, else 0.
fn fused(blocks: usize) -> usize {
    if dinoedge_model::qmatmul::Kernels::fused_attention() {
        blocks
    } else {
        0
    }
}

#[test]
fn small_fp32_224_tokens_blocks_and_attention() {
    let mut o = options(224, 224, 1);
    o.blocks = vec![2, 5, 8, 11];
    o.attention = true;
    let mut bb = Backbone::load(model("dinov2-small/onnx/model.onnx"), &o).unwrap();
    // every block's attention fused but the last one's, whose map is an output
    assert_eq!(bb.load_report().fused_attention, fused(11));
    assert_eq!(bb.info().variant(), "DINOv2 ViT-S/14");
    assert_eq!(bb.heads(), Some(6));
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    assert_eq!(f.patches().dim(), (16, 16, 384));
    let dir = "dinov2-small/224x224";
    let lhs = batch_item(&npy(&format!("{dir}/last_hidden_state.npy")), 0);
    let d = max_abs(f.tokens.to_sequence().view(), lhs.view());
    println!("small 224 last_hidden_state max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    for b in [2, 5, 8, 11] {
        let r = batch_item(&npy(&format!("{dir}/hidden_states_block{b:02}.npy")), 0);
        let d = max_abs(f.block(b).unwrap().tokens.to_sequence().view(), r.view());
        println!("small 224 block {b} max abs {d:.2e}");
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    // Full attention reference [6, 257, 257]: the CLS row to the patches.
    let attn = npy(&format!("{dir}/attn_probs_block11.npy"));
    let want = attn.slice(s![.., 0, 1..]).to_owned();
    let got: Array2<f32> = f
        .attention
        .clone()
        .unwrap()
        .into_shape_with_order((6, 256))
        .unwrap();
    let d = max_abs(got.view(), want.view());
    println!("small 224 attention max abs {d:.2e}");
    assert!(d <= ATTN_TOL, "{d}");

    // The same blocks through the final LayerNorm (get_intermediate_layers(norm=True)).
    let mut o = options(224, 224, 1);
    o.blocks = vec![2, 5, 8];
    o.normalize_blocks = true;
    let mut bb = Backbone::load(model("dinov2-small/onnx/model.onnx"), &o).unwrap();
    assert_eq!(bb.load_report().fused_attention, fused(12));
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    for b in [2, 5, 8] {
        let r = batch_item(
            &npy(&format!("{dir}/hidden_states_block{b:02}_norm.npy")),
            0,
        );
        let d = max_abs(f.block(b).unwrap().tokens.to_sequence().view(), r.view());
        assert!(d <= FP32_TOL, "block {b} norm: {d}");
    }
}

#[test]
fn small_fp32_308x448() {
    let mut o = options(308, 448, 1);
    o.blocks = vec![11];
    o.attention = true;
    let mut bb = Backbone::load(model("dinov2-small/onnx/model.onnx"), &o).unwrap();
    let f = bb.run(input("308x448").view()).unwrap().remove(0);
    assert_eq!(f.patches().dim(), (22, 32, 384));
    let dir = "dinov2-small/308x448";
    let lhs = batch_item(&npy(&format!("{dir}/last_hidden_state.npy")), 0);
    let d = max_abs(f.tokens.to_sequence().view(), lhs.view());
    println!("small 308x448 last_hidden_state max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    let b11 = batch_item(&npy(&format!("{dir}/hidden_states_block11.npy")), 0);
    assert!(max_abs(f.block(11).unwrap().tokens.to_sequence().view(), b11.view()) <= FP32_TOL);
    let row = npy(&format!("{dir}/attn_probs_block11_cls_row.npy"));
    let want = row.slice(s![.., 1..]).to_owned();
    let got: Array2<f32> = f
        .attention
        .clone()
        .unwrap()
        .into_shape_with_order((6, 704))
        .unwrap();
    assert!(max_abs(got.view(), want.view()) <= ATTN_TOL);
}

/// One int8 file at one size: against onnxruntime's output of the same file, and against
/// PyTorch fp32 no worse than onnxruntime is (minus 1e-4 of mean patch cosine).
fn check_int8(file: &str, size: &str, h: u32, w: u32, precision: Precision) {
    let mut bb = Backbone::load(
        model(&format!("dinov2-small/onnx/{file}.onnx")),
        &options(h, w, 1),
    )
    .unwrap();
    assert_eq!(bb.precision(), precision);
    assert_eq!(bb.load_report().fused_attention, fused(12));
    if precision.is_int8() {
        // Dynamic: 49 DynamicQuantizeLinear; QDQ: 194 QuantizeLinear (fewer after decluttering).
        assert!(
            bb.load_report().dinoedge_ops > 0,
            "no quantiser was swapped: {:?}",
            bb.load_report()
        );
    }
    let f = bb.run(input(size).view()).unwrap().remove(0);
    let got = f.tokens.to_sequence();
    let dir = format!("dinov2-small/{size}");
    let ort = batch_item(&npy(&format!("{dir}/ort_{file}_last_hidden_state.npy")), 0);
    let fp32 = batch_item(&npy(&format!("{dir}/last_hidden_state.npy")), 0);
    let p = |a: &Array2<f32>| a.slice(s![1.., ..]).to_owned();
    let vs_ort = max_abs(got.view(), ort.view());
    let cos_ort = mean_cosine(p(&got).view(), p(&ort).view());
    let cos_fp32 = mean_cosine(p(&got).view(), p(&fp32).view());
    let ort_fp32 = mean_cosine(p(&ort).view(), p(&fp32).view());
    println!(
        "{file} {size}: vs ORT max abs {vs_ort:.3} mean cos {cos_ort:.6}; vs fp32 mean cos {cos_fp32:.6} (ORT: {ort_fp32:.6})"
    );
    assert!(vs_ort <= 0.15, "{vs_ort}");
    assert!(cos_ort >= 0.9999, "{cos_ort}");
    // Against PyTorch no worse than onnxruntime (to 1e-4 of mean cosine): where attention
    // runs in int8 (AVX-512 VNNI or AVX2, `crate::attention`) it moves dinoedge away from
    // onnxruntime's numbers (fp32 attention) a little, but not away from fp32's.
    assert!(cos_fp32 >= ort_fp32 - 1e-4, "{cos_fp32} vs ORT {ort_fp32}");
}

#[test]
fn small_int8_dynamic_uint8_weights() {
    check_int8(
        "model_quantized",
        "224x224",
        224,
        224,
        Precision::DynamicInt8 {
            signed_weights: false,
        },
    );
}

#[test]
fn small_int8_dynamic_int8_weights() {
    check_int8(
        "model_int8",
        "224x224",
        224,
        224,
        Precision::DynamicInt8 {
            signed_weights: true,
        },
    );
    check_int8(
        "model_int8",
        "308x448",
        308,
        448,
        Precision::DynamicInt8 {
            signed_weights: true,
        },
    );
}

/// `BackboneOptions::int8_sums` (`DINOEDGE_INT8_SUMS` by default): where the AVX2 kernel runs,
/// saturating sums move the tokens (the fixture's int8 weights spread over the whole byte, so
/// many pairs saturate, as in onnxruntime's own AVX2 sums) yet keep them near onnxruntime's;
/// elsewhere nothing changes. (x86 only: on ARM tract's kernels run, exact either way.)
#[cfg(target_arch = "x86_64")]
#[test]
fn small_int8_saturating_sums_only_where_the_avx2_kernel_runs() {
    use dinoedge_model::{BackboneOptions, Int8Sums};
    let file = model("dinov2-small/onnx/model_int8.onnx");
    let x = input("224x224");
    let run = |int8_sums| {
        let o = BackboneOptions {
            int8_sums,
            ..options(224, 224, 1)
        };
        let mut bb = Backbone::load(&file, &o).unwrap();
        let tokens = bb.run(x.view()).unwrap().remove(0).tokens.to_sequence();
        (tokens, bb.load_report().saturating_products)
    };
    let (exact, none) = run(Int8Sums::Exact);
    let (saturating, n) = run(Int8Sums::Saturating);
    assert_eq!(none, 0);
    if dinoedge_kernels::qgemm::kernel_name() != "avx2" {
        assert_eq!(n, 0);
        assert_eq!(saturating, exact);
        return;
    }
    assert_eq!(n, 72, "every weight product saturating");
    let moved = max_abs(saturating.view(), exact.view());
    let ort = batch_item(
        &npy("dinov2-small/224x224/ort_model_int8_last_hidden_state.npy"),
        0,
    );
    let cos = mean_cosine(saturating.view(), ort.view());
    println!("saturating sums: {moved:.3} max abs from the exact ones; mean cos vs ORT {cos:.6}");
    assert!(moved > 0.01, "saturating sums changed nothing: {moved}");
    assert!(cos >= 0.999, "{cos}");
}

#[test]
fn small_int8_qdq() {
    check_int8("model_qdq", "224x224", 224, 224, Precision::QdqInt8);
    // every weight product's quantise/dequantise pair after it is fused into it, where the
    // products are dinoedge's (x86); the tokens above are the same bit for bit either way
    let bb = Backbone::load(
        model("dinov2-small/onnx/model_qdq.onnx"),
        &options(224, 224, 1),
    )
    .unwrap();
    // (and with it the bias after it, where there is one: q, k, v and the first MLP layer's)
    let int8 = dinoedge_model::qmatmul::Kernels::available().int8;
    let r = bb.load_report();
    let fused = (r.requantized_products, r.requantized_biases);
    assert_eq!(fused, if int8 { (72, 48) } else { (0, 0) });
}
