//! DINOv3 (RoPE, patch 16, 4 registers) on the fixtures of `README-v3-da.md`: named from the
//! graph, any multiple of 16, the tiny fp32 file against PyTorch (tokens, blocks before and
//! after the final LayerNorm, the attention row) at 224 and 320x448, each int8 file against
//! onnxruntime's stored output of the same file, and a file with external data.

use crate::common::*;
use dinoedge_model::{Backbone, Family, ModelInfo, Precision, Resolution};
use ndarray::{Axis, s};

const REGISTERS: usize = 4;

#[test]
fn a_dinov3_file_is_named_from_its_graph() {
    let info = ModelInfo::read(model("tiny/dinov3-tiny/onnx/model.onnx")).unwrap();
    let g = &info.graph;
    assert!(g.rope, "Sin and Cos of the rotary embedding");
    assert_eq!(g.family(), Family::Dinov3);
    assert!(g.any_size());
    assert_eq!((g.patch_size, g.embed_dim, g.num_blocks), (16, 48, 3));
    assert_eq!(info.registers, Some(REGISTERS));
    assert_eq!(
        info.variant(),
        "DINOv3 ViT (dim 48, 3 blocks)/16 + 4 registers"
    );
    let small = ModelInfo::read(model("dinov3-small/onnx/model_int8.onnx")).unwrap();
    assert_eq!(small.variant(), "DINOv3 ViT-S/16 + 4 registers");
    assert_eq!(small.graph.family(), Family::Dinov3);
    // DINOv2 is not taken for DINOv3
    let v2 = ModelInfo::read(model("tiny/dinov2-tiny/onnx/model.onnx")).unwrap();
    assert_eq!(v2.graph.family(), Family::Dinov2);
    assert!(!v2.graph.rope);

    // a size that is not a multiple of 16 names the nearest valid ones
    let Err(e) = Backbone::load(
        model("tiny/dinov3-tiny/onnx/model.onnx"),
        &options(230, 224, 1),
    ) else {
        panic!("230 is not a multiple of 16");
    };
    assert!(e.to_string().contains("nearest: 224 or 240"), "{e}");
}

#[test]
fn tiny_dinov3_fp32_matches_pytorch() {
    let file = model("tiny/dinov3-tiny/onnx/model.onnx");
    let mut o = options(224, 224, 1);
    o.blocks = vec![0, 1, 2];
    o.attention = true;
    let mut bb = Backbone::load(&file, &o).unwrap();
    assert_eq!(bb.layout().registers, REGISTERS);
    assert_eq!(bb.layout().grid, (14, 14));
    assert_eq!(bb.heads(), Some(3));
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    let dir = "dinov3-tiny/224x224";
    let lhs = format!("{dir}/last_hidden_state.npy");
    let d = tokens_diff(&f.tokens, &lhs, 0);
    println!("dinov3-tiny 224 tokens vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    assert_eq!(f.patches().dim(), (14, 14, 48));
    assert_eq!(f.registers().dim(), (REGISTERS, 48));
    let pooler = npy(&format!("{dir}/pooler_output.npy"));
    assert!(max_abs(f.cls().view().into_dyn(), pooler.index_axis(Axis(0), 0)) <= FP32_TOL);
    for b in 0..3 {
        let r = format!("{dir}/hidden_states_block{b:02}.npy");
        let d = tokens_diff(&f.block(b).unwrap().tokens, &r, 0);
        println!("dinov3-tiny 224 block {b} vs PyTorch {d:.2e}");
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    let row = npy(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = row.slice(s![.., 1 + REGISTERS..]).to_owned();
    let got = f.attention.as_ref().unwrap();
    let d = max_abs(
        got.view()
            .into_shape_with_order((3, 196))
            .unwrap()
            .into_dyn(),
        want.view(),
    );
    println!("dinov3-tiny 224 attention vs PyTorch {d:.2e}");
    assert!(d <= ATTN_TOL, "{d}");

    // The last block normalised by the final LayerNorm is the output.
    let mut o = options(224, 224, 1);
    o.blocks = vec![2];
    o.normalize_blocks = true;
    let mut bb = Backbone::load(&file, &o).unwrap();
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    let d = tokens_diff(&f.block(2).unwrap().tokens, &lhs, 0);
    assert!(d <= FP32_TOL, "normalised block 2: {d}");

    // 320x448: the rotary angles follow the size.
    let mut o = options(320, 448, 1);
    o.attention = true;
    let mut bb = Backbone::load(&file, &o).unwrap();
    let f = bb.run(input("320x448").view()).unwrap().remove(0);
    assert_eq!(f.patches().dim(), (20, 28, 48));
    let dir = "dinov3-tiny/320x448";
    let d = tokens_diff(&f.tokens, &format!("{dir}/last_hidden_state.npy"), 0);
    println!("dinov3-tiny 320x448 tokens vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    let row = npy(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = row.slice(s![.., 1 + REGISTERS..]).to_owned();
    let got = f.attention.as_ref().unwrap();
    let d = max_abs(
        got.view()
            .into_shape_with_order((3, 20 * 28))
            .unwrap()
            .into_dyn(),
        want.view(),
    );
    assert!(d <= ATTN_TOL, "{d}");
}

/// dinoedge on an int8 file against onnxruntime's stored output of the same file (graph
/// optimisations off: what the file computes).
fn int8_vs_onnxruntime(name: &str, file: &str, size: &str, min_cos: f64, max_abs_tol: f32) {
    let (h, w) = size.split_once('x').unwrap();
    let mut bb = Backbone::load(
        model(file),
        &options(h.parse().unwrap(), w.parse().unwrap(), 1),
    )
    .unwrap();
    assert_eq!(
        bb.precision(),
        Precision::DynamicInt8 {
            signed_weights: true
        }
    );
    let got = bb
        .run(input(size).view())
        .unwrap()
        .remove(0)
        .tokens
        .to_sequence();
    let ort = batch_item(
        &npy(&format!(
            "{name}/{size}/ort_model_int8_last_hidden_state.npy"
        )),
        0,
    );
    let torch = batch_item(&npy(&format!("{name}/{size}/last_hidden_state.npy")), 0);
    let d = max_abs(got.view().into_dyn(), ort.view().into_dyn());
    let cos = mean_cosine(got.view(), ort.view());
    let cos_ort_torch = mean_cosine(ort.view(), torch.view());
    let cos_torch = mean_cosine(got.view(), torch.view());
    println!(
        "{name} int8 {size}: vs onnxruntime max abs {d:.3e}, cosine {cos:.6}; vs PyTorch \
         {cos_torch:.6} (onnxruntime's own {cos_ort_torch:.6})"
    );
    assert!(cos >= min_cos, "{cos}");
    assert!(d <= max_abs_tol, "{d}");
    // as close to the fp32 model as onnxruntime is
    assert!(
        cos_torch >= cos_ort_torch - 2e-5,
        "{cos_torch} vs {cos_ort_torch}"
    );
}

#[test]
fn tiny_dinov3_int8_matches_onnxruntime() {
    let file = "tiny/dinov3-tiny/onnx/model_int8.onnx";
    int8_vs_onnxruntime("dinov3-tiny", file, "224x224", 0.99999, 0.02);
    int8_vs_onnxruntime("dinov3-tiny", file, "320x448", 0.99999, 0.02);
}

#[test]
fn small_dinov3_int8_matches_onnxruntime() {
    let file = "dinov3-small/onnx/model_int8.onnx";
    // the fixtures README's int8 tolerances against onnxruntime (observed 0.077 / 0.056)
    int8_vs_onnxruntime("dinov3-small", file, "224x224", 0.99995, 0.15);
    int8_vs_onnxruntime("dinov3-small", file, "320x448", 0.99995, 0.15);
}

#[test]
fn a_dinov3_file_with_external_data_loads_and_matches() {
    let dir = tempfile::tempdir().unwrap();
    let file = with_external_data("tiny/dinov3-tiny/onnx/model.onnx", dir.path());
    let info = ModelInfo::read(&file).unwrap();
    assert_eq!(info.graph.family(), Family::Dinov3);
    assert_eq!(info.default_resolution(), Resolution::square(224));
    let mut bb = Backbone::load(&file, &options(224, 224, 1)).unwrap();
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    let d = tokens_diff(&f.tokens, "dinov3-tiny/224x224/last_hidden_state.npy", 0);
    assert!(d <= FP32_TOL, "{d}");
}
