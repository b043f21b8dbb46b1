//! Helpers of the model crate's fixture tests (the crate-independent ones are in
//! dinoedge-testkit).

use std::path::PathBuf;
use std::process::Command;

use dinoedge_model::{BackboneOptions, CacheMode, Int8Sums, Resolution};
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
        // exact sums whatever $DINOEDGE_INT8_SUMS says
        int8_sums: Int8Sums::Exact,
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

/// The fixture model `src` (`tiny/dinov2-tiny/onnx/model.onnx`) in `dir/onnx/` with every initializer of 1 KiB or more moved to
/// `model.onnx.data` (ONNX's external data: `location`, `offset`, `length`), its configs one
/// directory up as the Hub lays them. Returns the `.onnx` path.
pub fn with_external_data(src: &str, dir: &std::path::Path) -> std::path::PathBuf {
    use prost::Message;
    use tract_onnx::pb::{ModelProto, StringStringEntryProto};
    let src = model(src);
    for config in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(
            src.parent().unwrap().join("..").join(config),
            dir.join(config),
        )
        .unwrap();
    }
    let mut proto = ModelProto::decode(&std::fs::read(&src).unwrap()[..]).unwrap();
    let mut data = Vec::new();
    let entry = |key: &str, value: String| StringStringEntryProto {
        key: key.into(),
        value,
    };
    for t in &mut proto.graph.as_mut().unwrap().initializer {
        if !t.float_data.is_empty() {
            t.raw_data = t.float_data.drain(..).flat_map(f32::to_le_bytes).collect();
        }
        if t.raw_data.len() >= 1024 {
            t.external_data = vec![
                entry("location", "model.onnx.data".into()),
                entry("offset", data.len().to_string()),
                entry("length", t.raw_data.len().to_string()),
            ];
            data.append(&mut t.raw_data);
            t.data_location = Some(1);
        }
    }
    assert!(
        data.len() > 100_000,
        "weights moved out: {} bytes",
        data.len()
    );
    let onnx = dir.join("onnx");
    std::fs::create_dir(&onnx).unwrap();
    std::fs::write(onnx.join("model.onnx.data"), data).unwrap();
    std::fs::write(onnx.join("model.onnx"), proto.encode_to_vec()).unwrap();
    onnx.join("model.onnx")
}

/// The largest difference of `tokens` (all of them, in sequence order) from item `item` of the
/// reference array `rel` (`[batch, tokens, dim]`).
pub fn tokens_diff(tokens: &dinoedge_model::Tokens, rel: &str, item: usize) -> f32 {
    max_abs(
        tokens.to_sequence().view().into_dyn(),
        batch_item(&npy(rel), item).view().into_dyn(),
    )
}
