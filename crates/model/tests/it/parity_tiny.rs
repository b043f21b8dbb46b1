//! Parity of the tiny fixture models (3 blocks, width 48) against the PyTorch reference and
//! onnxruntime, at 224x224, 308x448 and 42x56 with batch 2. Fast: these run in seconds.

use crate::common::*;
use dinoedge_model::{Backbone, Precision};
use ndarray::{Axis, s};

fn check_fp32(name: &str, registers: usize) {
    let model = model(&format!("tiny/{name}/onnx/model.onnx"));

    // 224x224, every block (pre-norm) and the attention.
    let mut o = options(224, 224, 1);
    o.blocks = vec![0, 1, 2];
    o.attention = true;
    let mut bb = Backbone::load(&model, &o).unwrap();
    assert_eq!(bb.layout().registers, registers);
    assert_eq!(bb.heads(), Some(3));
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    let dir = format!("{name}/224x224");
    let lhs = npy(&format!("{dir}/last_hidden_state.npy"));
    let got = f.tokens.to_sequence();
    let d = max_abs(got.view().into_dyn(), batch_item(&lhs, 0).view().into_dyn());
    println!("{name} 224 last_hidden_state max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    assert_eq!(f.patches().dim(), (16, 16, 48));
    let pooler = npy(&format!("{dir}/pooler_output.npy"));
    assert!(max_abs(f.cls().view().into_dyn(), pooler.index_axis(Axis(0), 0)) <= FP32_TOL);
    for b in 0..3 {
        let r = npy(&format!("{dir}/hidden_states_block{b:02}.npy"));
        let blk = f.block(b).unwrap();
        assert!(!blk.normalized);
        let d = max_abs(
            blk.tokens.to_sequence().view().into_dyn(),
            batch_item(&r, 0).view().into_dyn(),
        );
        println!("{name} 224 block {b} max abs {d:.2e}");
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    let cls_row = npy(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = cls_row.slice(s![.., 1 + registers..]).to_owned();
    let got = f.attention.as_ref().unwrap();
    let got = got.view().into_shape_with_order((3, 256)).unwrap();
    let d = max_abs(got.into_dyn(), want.view());
    println!("{name} 224 attention max abs {d:.2e}");
    assert!(d <= ATTN_TOL, "{d}");

    // 308x448: outputs and attention.
    let mut o = options(308, 448, 1);
    o.attention = true;
    let mut bb = Backbone::load(&model, &o).unwrap();
    let f = bb.run(input("308x448").view()).unwrap().remove(0);
    assert_eq!(f.patches().dim(), (22, 32, 48));
    let dir = format!("{name}/308x448");
    let lhs = npy(&format!("{dir}/last_hidden_state.npy"));
    let d = max_abs(
        f.tokens.to_sequence().view().into_dyn(),
        batch_item(&lhs, 0).view().into_dyn(),
    );
    println!("{name} 308x448 last_hidden_state max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    let cls_row = npy(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = cls_row.slice(s![.., 1 + registers..]).to_owned();
    let got = f
        .attention
        .as_ref()
        .unwrap()
        .view()
        .into_shape_with_order((3, 22 * 32))
        .unwrap()
        .to_owned();
    assert!(max_abs(got.view().into_dyn(), want.view()) <= ATTN_TOL);

    // 42x56, batch 2: the 5x5 position grid is down-sampled; normalised blocks.
    let mut o = options(42, 56, 2);
    o.blocks = vec![0, 1, 2];
    o.normalize_blocks = true;
    o.attention = true;
    let mut bb = Backbone::load(&model, &o).unwrap();
    let fs = bb.run(input("42x56_batch2").view()).unwrap();
    assert_eq!(fs.len(), 2);
    let dir = format!("{name}/42x56");
    let lhs = npy(&format!("{dir}/last_hidden_state.npy"));
    let attn = npy(&format!("{dir}/attn_probs_block02.npy"));
    for (i, f) in fs.iter().enumerate() {
        let d = max_abs(
            f.tokens.to_sequence().view().into_dyn(),
            batch_item(&lhs, i).view().into_dyn(),
        );
        println!("{name} 42x56 item {i} max abs {d:.2e}");
        assert!(d <= FP32_TOL, "{d}");
        for b in 0..3 {
            let r = npy(&format!("{dir}/hidden_states_block{b:02}_norm.npy"));
            let blk = f.block(b).unwrap();
            assert!(blk.normalized);
            let d = max_abs(
                blk.tokens.to_sequence().view().into_dyn(),
                batch_item(&r, i).view().into_dyn(),
            );
            assert!(d <= FP32_TOL, "item {i} block {b} (norm): {d}");
        }
        let want = attn.slice(s![i, .., 0, 1 + registers..]).to_owned();
        let got = f
            .attention
            .as_ref()
            .unwrap()
            .view()
            .into_shape_with_order((3, 12))
            .unwrap()
            .to_owned();
        assert!(max_abs(got.view().into_dyn(), want.view().into_dyn()) <= ATTN_TOL);
    }
}

#[test]
fn tiny_fp32_matches_pytorch() {
    check_fp32("dinov2-tiny", 0);
}

#[test]
fn tiny_registers_fp32_matches_pytorch() {
    check_fp32("dinov2-tiny-reg", 4);
}

fn check_int8(name: &str) {
    let model = model(&format!("tiny/{name}/onnx/model_int8.onnx"));
    for (size, h, w) in [("224x224", 224, 224), ("308x448", 308, 448)] {
        let mut bb = Backbone::load(&model, &options(h, w, 1)).unwrap();
        assert_eq!(
            bb.precision(),
            Precision::DynamicInt8 {
                signed_weights: true
            }
        );
        let f = bb.run(input(size).view()).unwrap().remove(0);
        let got = f.tokens.to_sequence();
        let ort = batch_item(
            &npy(&format!(
                "{name}/{size}/ort_model_int8_last_hidden_state.npy"
            )),
            0,
        );
        let fp32 = batch_item(&npy(&format!("{name}/{size}/last_hidden_state.npy")), 0);
        let skip = 1 + bb.layout().registers;
        let patches = |a: &ndarray::Array2<f32>| a.slice(s![skip.., ..]).to_owned();
        let vs_ort = max_abs(got.view().into_dyn(), ort.view().into_dyn());
        let cos_ort = mean_cosine(patches(&got).view(), patches(&ort).view());
        let cos_fp32 = mean_cosine(patches(&got).view(), patches(&fp32).view());
        let ort_cos_fp32 = mean_cosine(patches(&ort).view(), patches(&fp32).view());
        println!(
            "{name} int8 {size}: vs ORT int8 max abs {vs_ort:.2e} cos {cos_ort:.6}; vs fp32 cos {cos_fp32:.6} (ORT int8 vs fp32: {ort_cos_fp32:.6})"
        );
        assert!(vs_ort <= 0.15 && cos_ort >= 0.9999, "{vs_ort} {cos_ort}");
        assert!(
            cos_fp32 >= ort_cos_fp32 - 0.002,
            "{cos_fp32} vs ORT's {ort_cos_fp32}"
        );
    }
}

#[test]
fn tiny_int8_matches_onnxruntime() {
    check_int8("dinov2-tiny");
}

#[test]
fn tiny_registers_int8_matches_onnxruntime() {
    check_int8("dinov2-tiny-reg");
}
