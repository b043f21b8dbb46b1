//! dinoedge's own loops over activations (the quantisers of [`crate::ops`]), written so that
//! LLVM vectorises them without a branch or a libm call, and compiled more than once on
//! x86-64: the release build targets generic x86-64 (SSE2), so each loop also exists for
//! AVX2 + FMA and for AVX-512, picked at run time from what the CPU reports. On aarch64
//! NEON is baseline and the portable loop is the NEON one.
//!
//! Every result is bit-identical to the scalar definition (tested in `ops`), whatever the
//! instruction set.

/// 1.5·2²³: adding it to a float of magnitude below 2²² rounds it to an integer (ties to
/// even) and leaves that integer, two's complement, in the low bits of the sum's mantissa.
const MAGIC: f32 = 12_582_912.0;

/// Calls `$body` (a generic `#[inline(always)]` function) compiled for the best instruction
/// set the CPU has.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match level() {
                    // SAFETY: the CPU has these features (checked by `level`).
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// The instruction sets the x86-64 loops are compiled for.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Baseline,
    Avx2,
    Avx512,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        // DINOEDGE_KERNELS=baseline|avx2 caps the choice (to measure each, or to rule one out)
        let cap = std::env::var("DINOEDGE_KERNELS").unwrap_or_default();
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let avx512 = avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl");
        match cap.as_str() {
            "baseline" => Level::Baseline,
            "avx2" if avx2 => Level::Avx2,
            _ if avx512 => Level::Avx512,
            _ if avx2 => Level::Avx2,
            _ => Level::Baseline,
        }
    })
}

/// The instruction set dinoedge's own loops run with here (`baseline`, `avx2`, `avx512`; on
/// ARM `neon`), for reports.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "baseline"
    }
}

/// `round_ties_even(q)` clamped to ±1024 (beyond which every 8-bit result saturates anyway),
/// NaN giving 0 as Rust's `as i32` does: plain float operations and selects.
#[inline(always)]
fn round_clamped(q: f32) -> f32 {
    let q = if q.is_nan() {
        0.0
    } else {
        q.clamp(-1024.0, 1024.0)
    };
    (q + MAGIC) - MAGIC
}

/// The low byte of an integer-valued float in −2²²..2²²: the bits of `y + MAGIC`. Unlike
/// `as u8` (a saturating conversion LLVM does not vectorise on every target), a bit cast.
#[inline(always)]
fn low_byte(y: f32) -> u8 {
    (y + MAGIC).to_bits() as u8
}

#[inline(always)]
fn min_max_impl(xs: &[f32]) -> (f32, f32) {
    const LANES: usize = 32;
    let mut lo = [0f32; LANES];
    let mut hi = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let (mut min, mut max) = (0f32, 0f32);
    for i in 0..LANES {
        min = min.min(lo[i]);
        max = max.max(hi[i]);
    }
    for v in chunks.remainder() {
        min = min.min(*v);
        max = max.max(*v);
    }
    (min, max)
}

dispatch!(
    /// `(min(0, xs…), max(0, xs…))`: the range ONNX's dynamic quantiser covers.
    pub fn min_max_with_zero(xs: &[f32]) -> (f32, f32) => min_max_impl);

#[inline(always)]
fn quantize_u8_impl(scale: f32, zero_point: u8, xs: &[f32], ys: &mut [u8]) {
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = low_byte((round_clamped(*x / scale) + zp).clamp(0.0, 255.0));
    }
}

dispatch!(
    /// `ys = saturate_u8(round_ties_even(xs / scale) + zero_point)`.
    pub fn quantize_u8(scale: f32, zero_point: u8, xs: &[f32], ys: &mut [u8]) => quantize_u8_impl);

#[inline(always)]
fn quantize_i8_impl(scale: f32, zero_point: i8, xs: &[f32], ys: &mut [i8]) {
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = low_byte((round_clamped(*x * scale) + zp).clamp(-128.0, 127.0)) as i8;
    }
}

dispatch!(
    /// `ys = saturate_i8(round_ties_even(xs * scale) + zero_point)` (`scale` is the reciprocal
    /// of the ONNX scale, as tract stores it).
    pub fn quantize_i8(scale: f32, zero_point: i8, xs: &[f32], ys: &mut [i8]) => quantize_i8_impl);

#[inline(always)]
fn dequantize_i32_impl(acc: &[i32], scale: f32, bias: &[f32], out: &mut [f32]) {
    for (a, o) in acc
        .chunks_exact(bias.len())
        .zip(out.chunks_exact_mut(bias.len()))
    {
        for ((x, b), y) in a.iter().zip(bias).zip(o.iter_mut()) {
            *y = (*x as f32) * scale + *b;
        }
    }
}

dispatch!(
    /// `out = acc as f32 * scale + bias`, `bias` repeated over the rows of `acc` (the
    /// epilogue of an int8 matrix product: the ONNX `Cast`, `Mul`, `Add` after `MatMulInteger`,
    /// in one pass and rounded as those three are).
    pub fn dequantize_i32(acc: &[i32], scale: f32, bias: &[f32], out: &mut [f32]) => dequantize_i32_impl);

#[inline(always)]
fn scale_i32_impl(acc: &[i32], scales: &[f32], out: &mut [f32]) {
    for (a, o) in acc
        .chunks_exact(scales.len())
        .zip(out.chunks_exact_mut(scales.len()))
    {
        for ((x, s), y) in a.iter().zip(scales).zip(o.iter_mut()) {
            *y = (*x as f32) * *s;
        }
    }
}

dispatch!(
    /// `out = acc as f32 * scales`, `scales` repeated over the rows of `acc` (a QDQ file's int8
    /// product with its per-column multipliers: `Cast`, `Mul` in one pass).
    pub fn scale_i32(acc: &[i32], scales: &[f32], out: &mut [f32]) => scale_i32_impl);

#[inline(always)]
fn dequantize_i8_impl(scale: f32, zero_point: i32, xs: &[i8], ys: &mut [f32]) {
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = (*x as i32 - zero_point) as f32 * scale;
    }
}

dispatch!(
    /// `ys = (xs - zero_point) as f32 * scale`: tract's `DequantizeLinearF32` on i8, with the
    /// scale and zero point in registers (tract's loop reads them through `&self` at every
    /// element, since they might alias the output, and so stays scalar).
    pub fn dequantize_i8(scale: f32, zero_point: i32, xs: &[i8], ys: &mut [f32]) => dequantize_i8_impl);

#[inline(always)]
fn dequantize_u8_impl(scale: f32, zero_point: i32, xs: &[u8], ys: &mut [f32]) {
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = (*x as i32 - zero_point) as f32 * scale;
    }
}

dispatch!(
    /// [`dequantize_i8`] for u8 inputs.
    pub fn dequantize_u8(scale: f32, zero_point: i32, xs: &[u8], ys: &mut [f32]) => dequantize_u8_impl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_byte_is_the_integer() {
        for y in [-128f32, -127., -1., 0., 1., 127., 128., 254., 255.] {
            assert_eq!(low_byte(y), (y as i32) as u8, "{y}");
        }
    }

    #[test]
    fn min_max_includes_zero() {
        assert_eq!(min_max_with_zero(&[]), (0.0, 0.0));
        assert_eq!(min_max_with_zero(&[3.0, 4.0]), (0.0, 4.0));
        let xs: Vec<f32> = (0..100).map(|i| i as f32 - 70.0).collect();
        assert_eq!(min_max_with_zero(&xs), (-70.0, 29.0));
    }
}
