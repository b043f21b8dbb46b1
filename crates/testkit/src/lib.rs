//! # dinoedge-testkit
//!
//! What every dinoedge test suite needs and none should copy: where the shared fixtures
//! (`../shared/fixtures`, or `$DINOEDGE_FIXTURES`) and media (`../shared/media`, or
//! `$DINOEDGE_MEDIA`) are, reading their reference arrays, and comparing arrays.
//!
//! A dev-dependency only: it depends on nothing of dinoedge's, so any crate's tests may use it
//! without a cycle, and nothing shipped links it.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayView, ArrayView2, Axis, Dimension};

/// `len` values in [-1, 1) from a xorshift generator, the same for the same seed: reproducible
/// inputs for the kernels' and operators' unit tests.
pub fn noise(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// `len` bytes from a xorshift generator, the same for the same seed: reproducible activations
/// and weights for the int8 kernels' tests.
pub fn noise_bytes(len: usize, seed: u32) -> impl Iterator<Item = u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len).map(move |_| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as u8
    })
}

/// The workspace root (where the top `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$var`, else `../shared/<name>` beside the checkout; checked for its `README.md`.
fn shared(var: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared").join(name));
    assert!(
        dir.join("README.md").is_file(),
        "{name} not found at {}: put the shared {name} beside the checkout or set {var}",
        dir.display()
    );
    dir
}

/// The fixtures folder: `../shared/fixtures` (or `$DINOEDGE_FIXTURES`).
pub fn fixtures() -> PathBuf {
    shared("DINOEDGE_FIXTURES", "fixtures")
}

/// The fixtures folder when it is there (benches skip without it instead of failing).
pub fn fixtures_if_present() -> Option<PathBuf> {
    let dir = std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/fixtures"));
    dir.join("README.md").is_file().then_some(dir)
}

/// A file of the fixtures: `dinov2-small/onnx/model.onnx`, `heads/…`, `images/…`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// A file of the shared media (`../shared/media`, or `$DINOEDGE_MEDIA`); it must exist.
pub fn media(name: &str) -> PathBuf {
    let p = shared("DINOEDGE_MEDIA", "media").join(name);
    assert!(p.is_file(), "{} not found in the shared media", p.display());
    p
}

/// The repository's sample clip (`assets/sample/vtest_pedestrians.mjpeg`).
pub fn sample_clip() -> PathBuf {
    workspace_root().join("assets/sample/vtest_pedestrians.mjpeg")
}

/// A reference array of the fixtures, by its path under `reference/`.
pub fn npy<T: ndarray_npy::ReadableElement>(rel: &str) -> ArrayD<T> {
    let p = fixtures().join("reference").join(rel);
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Largest absolute difference of two arrays of the same shape.
pub fn max_abs<D1: Dimension, D2: Dimension>(a: ArrayView<f32, D1>, b: ArrayView<f32, D2>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Per-row cosine similarities of two `[T, D]` matrices.
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

/// Mean per-row cosine of two `[T, D]` matrices.
pub fn mean_cosine(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f64 {
    let c = token_cosines(a, b);
    c.iter().sum::<f64>() / c.len() as f64
}

/// `base` with bytes xored at `flips` (positions taken modulo its length), `insert` spliced in
/// at its position (modulo the length + 1), then cut to `cut` bytes (modulo the length + 1):
/// the damaged files of the property tests.
pub fn mutate(base: &[u8], flips: &[(usize, u8)], insert: (usize, &[u8]), cut: usize) -> Vec<u8> {
    let mut data = base.to_vec();
    for (at, x) in flips {
        let n = data.len();
        data[at % n] ^= x;
    }
    let at = insert.0 % (data.len() + 1);
    data.splice(at..at, insert.1.iter().copied());
    data.truncate(cut % (data.len() + 1));
    data
}

/// A PNG file whose header declares `width` x `height` RGB pixels but holds none: what a
/// decoder that trusts the header would allocate `width * height * 3` bytes for.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for b in bytes {
            crc ^= *b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(&[kind, data].concat()).to_be_bytes());
        c
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // an empty zlib stream: decoders read the header only once they see image data
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn comparisons() {
        let a = array![[1.0f32, 0.0], [0.0, 2.0]];
        let b = array![[1.5f32, 0.0], [0.0, -2.0]];
        assert_eq!(max_abs(a.view(), b.view()), 4.0);
        let c = token_cosines(a.view(), b.view());
        assert!((c[0] - 1.0).abs() < 1e-12 && (c[1] + 1.0).abs() < 1e-12);
        assert!(mean_cosine(a.view(), a.view()) > 0.999_999);
    }
}
