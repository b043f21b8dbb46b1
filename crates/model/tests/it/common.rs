//! Helpers of the model crate's fixture tests (the crate-independent ones are in
//! dinoedge-testkit).

use std::path::PathBuf;
use std::process::Command;

use dinoedge_model::{BackboneOptions, CacheMode, Resolution};
use ndarray::{ArrayD, Axis};

pub use dinoedge_testkit::{fixtures, max_abs, mean_cosine, token_cosines};

/// Path of a model file: `dinov2-small/onnx/model.onnx`, `tiny/dinov2-tiny/onnx/model_int8.onnx`, …
pub fn model(rel: &str) -> PathBuf {
    dinoedge_testkit::fixture(rel)
}

/// A reference array.
pub fn npy(rel: &str) -> ArrayD<f32> {
    dinoedge_testkit::npy(rel)
}

/// fp32 tolerance of the fixtures README (observed ~5e-6).
pub const FP32_TOL: f32 = 1e-4;
/// Attention-probability tolerance of the fixtures README.
pub const ATTN_TOL: f32 = 1e-5;

/// A reference input `[B, 3, H, W]`: `224x224`, `308x448` or `42x56_batch2`.
pub fn input(size: &str) -> ndarray::Array4<f32> {
    npy(&format!("inputs/pixel_values_{size}.npy"))
        .into_dimensionality()
        .unwrap()
}

/// Options with no cache (tests stay hermetic) and the given size/batch.
pub fn options(h: u32, w: u32, batch: usize) -> BackboneOptions {
    BackboneOptions {
        resolution: Some(Resolution::new(h, w)),
        batch,
        cache: CacheMode::Off,
        ..Default::default()
    }
}

/// Row `b` of a `[B, T, D]` reference as `[T, D]`.
pub fn batch_item(a: &ArrayD<f32>, b: usize) -> ndarray::Array2<f32> {
    a.index_axis(Axis(0), b)
        .to_owned()
        .into_dimensionality()
        .unwrap()
}

/// A Python with the pinned tools (`pip install -r models/export/requirements.txt`):
/// `$DINOEDGE_PYTHON`, else `python3`. Without them `test` is skipped with a note, unless
/// `DINOEDGE_REQUIRE_PYTHON=1` (set by `.ci/run`), where it fails.
pub fn python(test: &str) -> Option<PathBuf> {
    let py = std::env::var_os("DINOEDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import onnxruntime, onnx, numpy, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "{} lacks onnxruntime/onnx/numpy/pillow: pip install -r models/export/requirements.txt \
         (or point DINOEDGE_PYTHON at a Python that has them)",
        py.display()
    );
    if std::env::var_os("DINOEDGE_REQUIRE_PYTHON").is_some_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("skipping {test}: {msg}");
    None
}
