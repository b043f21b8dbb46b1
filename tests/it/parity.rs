//! The model's parity through the binary users run: `dinoedge features` on the fixtures'
//! preprocessed inputs (`.npy` pixel values), its `.npy` outputs against PyTorch's and
//! onnxruntime's references (fixtures README: fp32 ≤ 1e-4, attention ≤ 1e-5; int8 against
//! onnxruntime's run of the same file).
//!
//! The model crate's tests check the same and more through the library; these exist for the
//! binary that ships: `.ci/run` runs them against the arm64 package's binary under qemu
//! (Cortex-A76: all of them; Cortex-A72: `parity::tiny`), so the ARM kernels are checked in the
//! build that is packaged, not in a test build of their own.

use std::path::Path;

use dinoedge_testkit::{fixture, fixtures, max_abs, mean_cosine, npy};
use ndarray::{Array2, ArrayD, ArrayView2, Axis, s};

use crate::bin::cmd;

const FP32_TOL: f32 = 1e-4;
const ATTN_TOL: f32 = 1e-5;

/// `dinoedge features MODEL pixel_values_INPUT.npy --size SIZE ARGS…` into a new directory.
fn features(model: &str, input: &str, size: &str, args: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let o = cmd(tmp.path())
        .arg("features")
        .arg(fixture(model))
        .arg(fixtures().join(format!("reference/inputs/pixel_values_{input}.npy")))
        .arg("--out")
        .arg(tmp.path())
        .args(["--size", size, "--no-cache"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dinoedge features {model} {input}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    tmp
}

/// An output file of `features`.
fn read(dir: &Path, name: &str) -> ArrayD<f32> {
    let p = dir.join(name);
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Item `i` of a `[B, T, D]` reference as `[T, D]`.
fn item(rel: &str, i: usize) -> Array2<f32> {
    npy::<f32>(rel)
        .index_axis(Axis(0), i)
        .to_owned()
        .into_dimensionality()
        .unwrap()
}

/// The tokens `features` saved as `<stem>_<prefix>cls.npy`, `_registers.npy` (without a
/// prefix) and `_<prefix>patches.npy`, against the rows of `want` (`[T, D]`, sequence order).
/// The largest difference.
fn tokens_diff(dir: &Path, stem: &str, prefix: &str, want: ArrayView2<f32>, regs: usize) -> f32 {
    let cls = read(dir, &format!("{stem}_{prefix}cls.npy"));
    let mut d = max_abs(cls.view(), want.row(0).into_dyn());
    if prefix.is_empty() && regs > 0 {
        let r = read(dir, &format!("{stem}_registers.npy"));
        d = d.max(max_abs(
            r.view(),
            want.slice(s![1..1 + regs, ..]).into_dyn(),
        ));
    }
    let patches = patch_rows(dir, &format!("{stem}_{prefix}patches.npy"));
    d.max(max_abs(patches.view(), want.slice(s![1 + regs.., ..])))
}

/// A `[h, w, D]` patch file as `[h·w, D]` rows.
fn patch_rows(dir: &Path, name: &str) -> Array2<f32> {
    let p = read(dir, name);
    let (d, n) = (p.shape()[2], p.len());
    p.into_shape_with_order((n / d, d)).unwrap()
}

/// `<stem>_attention.npy` (`[heads, h, w]`) against the CLS row's patch columns `want`
/// (`[heads, patches]`).
fn attention_diff(dir: &Path, stem: &str, want: ArrayView2<f32>) -> f32 {
    let a = read(dir, &format!("{stem}_attention.npy"));
    let heads = a.shape()[0];
    let a = a.into_shape_with_order((heads, want.ncols())).unwrap();
    max_abs(a.view(), want)
}

fn check_fp32(name: &str, regs: usize) {
    let model = format!("tiny/{name}/onnx/model.onnx");
    // 224x224: the final tokens, every block (pre-norm), the attention
    let out = features(
        &model,
        "224x224",
        "224x224",
        &["--layers", "0,1,2", "--attention"],
    );
    let dir = format!("{name}/224x224");
    let d = tokens_diff(
        out.path(),
        "pixel_values_224x224",
        "",
        item(&format!("{dir}/last_hidden_state.npy"), 0).view(),
        regs,
    );
    println!("{name} 224 tokens max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    for b in 0..3 {
        let want = item(&format!("{dir}/hidden_states_block{b:02}.npy"), 0);
        let d = tokens_diff(
            out.path(),
            "pixel_values_224x224",
            &format!("block{b:02}_"),
            want.view(),
            regs,
        );
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    let cls_row = npy::<f32>(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = cls_row
        .slice(s![.., 1 + regs..])
        .into_dimensionality()
        .unwrap();
    let d = attention_diff(out.path(), "pixel_values_224x224", want);
    println!("{name} 224 attention max abs {d:.2e}");
    assert!(d <= ATTN_TOL, "{d}");

    // 308x448: tokens and attention
    let out = features(&model, "308x448", "308x448", &["--attention"]);
    let dir = format!("{name}/308x448");
    let d = tokens_diff(
        out.path(),
        "pixel_values_308x448",
        "",
        item(&format!("{dir}/last_hidden_state.npy"), 0).view(),
        regs,
    );
    println!("{name} 308x448 tokens max abs {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    let cls_row = npy::<f32>(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = cls_row
        .slice(s![.., 1 + regs..])
        .into_dimensionality()
        .unwrap();
    assert!(attention_diff(out.path(), "pixel_values_308x448", want) <= ATTN_TOL);

    // 42x56, two items in one file (the 5x5 position grid down-sampled): normalised blocks
    let out = features(
        &model,
        "42x56_batch2",
        "42x56",
        &["--layers", "0,1,2", "--norm", "--attention"],
    );
    let dir = format!("{name}/42x56");
    let attn = npy::<f32>(&format!("{dir}/attn_probs_block02.npy"));
    for i in 0..2 {
        let stem = format!("pixel_values_42x56_batch2_{i}");
        let d = tokens_diff(
            out.path(),
            &stem,
            "",
            item(&format!("{dir}/last_hidden_state.npy"), i).view(),
            regs,
        );
        println!("{name} 42x56 item {i} tokens max abs {d:.2e}");
        assert!(d <= FP32_TOL, "{d}");
        for b in 0..3 {
            let want = item(&format!("{dir}/hidden_states_block{b:02}_norm.npy"), i);
            let d = tokens_diff(
                out.path(),
                &stem,
                &format!("block{b:02}_"),
                want.view(),
                regs,
            );
            assert!(d <= FP32_TOL, "item {i} block {b} (norm): {d}");
        }
        let want = attn
            .slice(s![i, .., 0, 1 + regs..])
            .into_dimensionality()
            .unwrap();
        assert!(attention_diff(out.path(), &stem, want) <= ATTN_TOL);
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

/// One int8 file at one size against onnxruntime's run of it (`ort_<file>_last_hidden_state`):
/// within `max_abs` on every token and 0.9999 in mean patch cosine, and no further from
/// PyTorch's fp32 tokens than onnxruntime is (to `cos_margin` of mean patch cosine).
fn check_int8(name: &str, file: &str, size: &str, max_abs_tol: f32, cos_margin: f64) {
    let model = match name {
        "dinov2-small" => format!("{name}/onnx/{file}.onnx"),
        _ => format!("tiny/{name}/onnx/{file}.onnx"),
    };
    let out = features(&model, size, size, &[]);
    let stem = format!("pixel_values_{size}");
    let dir = format!("{name}/{size}");
    let ort = item(&format!("{dir}/ort_{file}_last_hidden_state.npy"), 0);
    let fp32 = item(&format!("{dir}/last_hidden_state.npy"), 0);
    let regs = ort.nrows() - patch_rows(out.path(), &format!("{stem}_patches.npy")).nrows() - 1;
    let vs_ort = tokens_diff(out.path(), &stem, "", ort.view(), regs);
    let got = patch_rows(out.path(), &format!("{stem}_patches.npy"));
    let p = |a: &Array2<f32>| a.slice(s![1 + regs.., ..]).to_owned();
    let cos_ort = mean_cosine(got.view(), p(&ort).view());
    let cos_fp32 = mean_cosine(got.view(), p(&fp32).view());
    let ort_fp32 = mean_cosine(p(&ort).view(), p(&fp32).view());
    println!(
        "{name} {file} {size}: vs ORT max abs {vs_ort:.3} mean cos {cos_ort:.6}; vs fp32 mean cos {cos_fp32:.6} (ORT: {ort_fp32:.6})"
    );
    assert!(vs_ort <= max_abs_tol, "{vs_ort}");
    assert!(cos_ort >= 0.9999, "{cos_ort}");
    assert!(
        cos_fp32 >= ort_fp32 - cos_margin,
        "{cos_fp32} vs ORT {ort_fp32}"
    );
}

#[test]
fn tiny_int8_matches_onnxruntime() {
    for name in ["dinov2-tiny", "dinov2-tiny-reg"] {
        for size in ["224x224", "308x448"] {
            check_int8(name, "model_int8", size, 0.15, 0.002);
        }
    }
}

// ViT-S's int8 files, one test each (under qemu each takes a minute: the harness runs them side
// by side)
#[test]
fn small_int8_dynamic_uint8_weights() {
    check_int8("dinov2-small", "model_quantized", "224x224", 0.15, 1e-4);
}

#[test]
fn small_int8_dynamic_int8_weights() {
    check_int8("dinov2-small", "model_int8", "224x224", 0.15, 1e-4);
}

#[test]
fn small_int8_dynamic_int8_weights_308x448() {
    check_int8("dinov2-small", "model_int8", "308x448", 0.15, 1e-4);
}

#[test]
fn small_int8_qdq() {
    check_int8("dinov2-small", "model_qdq", "224x224", 0.15, 1e-4);
}

#[test]
fn depth_anything_tiny_fp32_depth_and_encoder_tokens_match_pytorch() {
    let name = "depth-anything-v2-tiny";
    let model = format!("tiny/{name}/onnx/model.onnx");
    let depth = |dir: &Path, size: &str| {
        let got = read(dir, &format!("pixel_values_{size}_depth.npy"));
        let want = npy::<f32>(&format!("{name}/{size}/predicted_depth.npy"));
        max_abs(got.view(), want.index_axis(Axis(0), 0))
    };
    let out = features(
        &model,
        "308x308",
        "308x308",
        &["--layers", "0,1,2,3", "--norm"],
    );
    let d = depth(out.path(), "308x308");
    println!("{name} 308x308 depth max abs vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    for b in 0..4 {
        let want = item(
            &format!("{name}/308x308/hidden_states_block{b:02}_norm.npy"),
            0,
        );
        let d = tokens_diff(
            out.path(),
            "pixel_values_308x308",
            &format!("block{b:02}_"),
            want.view(),
            0,
        );
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    // the last block's normalised tokens are the features' own
    let last = item(&format!("{name}/308x308/hidden_states_block03_norm.npy"), 0);
    assert!(tokens_diff(out.path(), "pixel_values_308x308", "", last.view(), 0) <= FP32_TOL);

    let out = features(&model, "280x364", "280x364", &[]);
    let d = depth(out.path(), "280x364");
    println!("{name} 280x364 depth max abs vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
}

/// A `.npy` input of the wrong size, shape or type is named, with what to do.
#[test]
fn a_npy_input_of_the_wrong_size_or_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |input: &Path| {
        let o = cmd(tmp.path())
            .arg("features")
            .arg(fixture("tiny/dinov2-tiny/onnx/model.onnx"))
            .arg(input)
            .arg("--out")
            .arg(tmp.path().join("out"))
            .args(["--size", "224x224", "--no-cache"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&fixtures().join("reference/inputs/pixel_values_308x448.npy"));
    assert!(e.contains("--size 308x448"), "{e}");
    let flat = tmp.path().join("flat.npy");
    ndarray_npy::write_npy(&flat, &ndarray::Array2::<f32>::zeros((3, 224))).unwrap();
    let e = run(&flat);
    assert!(e.contains("[3, 224]") && e.contains("[N, 3, H, W]"), "{e}");
    let doubles = tmp.path().join("doubles.npy");
    ndarray_npy::write_npy(&doubles, &ndarray::Array3::<f64>::zeros((3, 224, 224))).unwrap();
    let e = run(&doubles);
    assert!(e.contains("float32"), "{e}");
}
