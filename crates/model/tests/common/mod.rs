//! Shared helpers of the model crate's fixture tests.
#![allow(dead_code)]

use std::path::PathBuf;

use dinoedge_model::{BackboneOptions, CacheMode, Resolution};
use ndarray::{ArrayD, ArrayView, ArrayView2, Axis, Dimension};

/// `../shared/fixtures` (or `$DINOEDGE_FIXTURES`).
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    assert!(
        dir.join("README.md").is_file(),
        "fixtures not found at {}: put the shared fixtures beside the checkout or set DINOEDGE_FIXTURES",
        dir.display()
    );
    dir
}

/// Path of a model file: `dinov2-small/onnx/model.onnx`, `tiny/dinov2-tiny/onnx/model_int8.onnx`, …
pub fn model(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// A reference array.
pub fn npy(rel: &str) -> ArrayD<f32> {
    let p = fixtures().join("reference").join(rel);
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
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

/// Largest absolute difference.
pub fn max_abs<D1: Dimension, D2: Dimension>(a: ArrayView<f32, D1>, b: ArrayView<f32, D2>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Per-token cosine similarities of two `[T, D]` matrices.
pub fn token_cosines(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Vec<f64> {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.axis_iter(Axis(0))
        .zip(b.axis_iter(Axis(0)))
        .map(|(x, y)| {
            let (mut d, mut nx, mut ny) = (0f64, 0f64, 0f64);
            for (p, q) in x.iter().zip(y.iter()) {
                d += *p as f64 * *q as f64;
                nx += (*p as f64).powi(2);
                ny += (*q as f64).powi(2);
            }
            d / (nx.sqrt() * ny.sqrt())
        })
        .collect()
}

/// Mean per-token cosine.
pub fn mean_cosine(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f64 {
    let c = token_cosines(a, b);
    c.iter().sum::<f64>() / c.len() as f64
}

/// Row `b` of a `[B, T, D]` reference as `[T, D]`.
pub fn batch_item(a: &ArrayD<f32>, b: usize) -> ndarray::Array2<f32> {
    a.index_axis(Axis(0), b)
        .to_owned()
        .into_dimensionality()
        .unwrap()
}
