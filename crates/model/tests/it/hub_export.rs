//! torch.hub-style exports (`torch.onnx.export` of `torch.hub.load('facebookresearch/dinov2',
//! …)`, dynamo exporter): opset 18, a patch `Conv` without `kernel_shape`, the input named
//! `input` with a fixed `[1, 3, 224, 224]`, one output `embedding` (the normed CLS token only),
//! weights in an external `model.onnx.data`. CI has no torch, so `tests/hub_export.py` makes
//! such a file from the tiny fixtures with the `onnx` package, and onnxruntime's `embedding`
//! of it; every feature must still be found by structure and match PyTorch.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use dinoedge_model::{Backbone, ModelInfo, Resolution};
use ndarray::{ArrayD, Axis, s};

/// Rewrite `tiny/NAME/onnx/model.onnx` into `dir`; the path of the new model.
fn hub_export(py: &Path, name: &str, dir: &Path) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/hub_export.py");
    let out = Command::new(py)
        .arg(script)
        .arg(model(&format!("tiny/{name}/onnx/model.onnx")))
        .arg(dir)
        .arg("--input")
        .arg(fixtures().join("reference/inputs/pixel_values_224x224.npy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hub_export.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("model.onnx")
}

fn check(name: &str, registers: usize) {
    let Some(py) = python("the torch.hub export test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // one level down, so that the directory above the file (searched for a config.json) is
    // this test's own, not the shared temporary directory
    let out = tmp.path().join("export");
    let file = hub_export(&py, name, &out);
    assert!(out.join("model.onnx.data").is_file());

    // What the structure says, with no config.json beside the file.
    let info = ModelInfo::read(&file).unwrap();
    let g = &info.graph;
    assert_eq!(g.patch_size, 14, "the kernel comes from the weight's shape");
    assert_eq!((g.embed_dim, g.num_blocks), (48, 3));
    assert_eq!(g.input_name, "input");
    assert_eq!(g.input_dims, vec![Some(1), Some(3), Some(224), Some(224)]);
    assert_eq!(g.output_names, vec!["embedding".to_string()]);
    assert_eq!(g.opset, 18);
    assert_eq!(info.registers, Some(registers));
    assert_eq!(
        info.native_grid(),
        Some(5),
        "from the position embedding the Resize reads"
    );
    assert_eq!(info.default_resolution(), Resolution::square(224));

    // Every feature, at the file's 224 and at a size it was not exported at.
    let mut o = options(224, 224, 1);
    o.blocks = vec![0, 1, 2];
    o.attention = true;
    let mut bb = Backbone::load(&file, &o).unwrap();
    assert_eq!(bb.layout().registers, registers);
    assert_eq!(bb.heads(), Some(3));
    let f = bb.run(input("224x224").view()).unwrap().remove(0);
    let dir = format!("{name}/224x224");
    let d = tokens_diff(&f.tokens, &format!("{dir}/last_hidden_state.npy"), 0);
    println!("{name} hub export: tokens vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
    assert_eq!(f.patches().dim(), (16, 16, 48));
    assert_eq!(f.registers().dim(), (registers, 48));

    // The CLS token is the file's own output.
    let embedding: ArrayD<f32> = ndarray_npy::read_npy(out.join("embedding.npy")).unwrap();
    let d = max_abs(f.cls().view().into_dyn(), embedding.index_axis(Axis(0), 0));
    println!("{name} hub export: CLS vs the file's embedding (onnxruntime) {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");

    for b in 0..3 {
        let r = format!("{dir}/hidden_states_block{b:02}.npy");
        let d = tokens_diff(&f.block(b).unwrap().tokens, &r, 0);
        assert!(d <= FP32_TOL, "block {b}: {d}");
    }
    let cls_row = npy(&format!("{dir}/attn_probs_block02_cls_row.npy"));
    let want = cls_row.slice(s![.., 1 + registers..]).to_owned();
    let got = f.attention.as_ref().unwrap();
    let got = got.view().into_shape_with_order((3, 256)).unwrap();
    assert!(max_abs(got.into_dyn(), want.view()) <= ATTN_TOL);

    // The fixed 224 in the file does not fix dinoedge's size: the position resize is there.
    let mut bb = Backbone::load(&file, &options(308, 448, 1)).unwrap();
    let f = bb.run(input("308x448").view()).unwrap().remove(0);
    let d = tokens_diff(
        &f.tokens,
        &format!("{name}/308x448/last_hidden_state.npy"),
        0,
    );
    println!("{name} hub export at 308x448: tokens vs PyTorch {d:.2e}");
    assert!(d <= FP32_TOL, "{d}");
}

#[test]
fn a_torch_hub_export_gives_every_feature() {
    check("dinov2-tiny", 0);
}

#[test]
fn a_torch_hub_export_with_registers_gives_every_feature() {
    check("dinov2-tiny-reg", 4);
}
