//! dinoedge's own loops over activations (the model's quantisers, dequantisers and softmax),
//! written so that LLVM vectorises them without a branch or a libm call, and compiled more
//! than once on x86-64: the release build targets generic x86-64 (SSE2), so each loop also
//! exists for AVX2 + FMA and for AVX-512, picked at run time from what the CPU reports. On
//! aarch64 NEON is baseline and the portable loop is the NEON one.
//!
//! Every result is bit-identical to the scalar definition (tested here and in the model's `ops`),
//! whatever the instruction set.

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
    // halves folded onto halves: vector instructions, not 32 scalar steps (which cost more
    // than the loop itself on a 64-value row, one attention head's query or key)
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lo[i] = lo[i].min(lo[i + width]);
            hi[i] = hi[i].max(hi[i + width]);
        }
        width /= 2;
    }
    let (mut min, mut max) = (lo[0], hi[0]);
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
fn max_abs_into_impl(acc: &mut [f32], xs: &[f32]) {
    for (m, x) in acc.iter_mut().zip(xs) {
        let a = x.abs();
        // a select, not `f32::max`: one `vmaxps` (NaN is not expected here)
        *m = if a > *m { a } else { *m };
    }
}

dispatch!(
    /// `acc[i] = max(acc[i], |xs[i]|)`: column maxima of a matrix, a row at a time.
    pub fn max_abs_into(acc: &mut [f32], xs: &[f32]) => max_abs_into_impl);

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
fn quantize_i8_columns_impl(scales: &[f32], xs: &[f32], ys: &mut [i8]) {
    for ((x, s), y) in xs.iter().zip(scales).zip(ys.iter_mut()) {
        *y = low_byte(round_clamped(*x * s).clamp(-128.0, 127.0)) as i8;
    }
}

dispatch!(
    /// `ys[i] = saturate_i8(round_ties_even(xs[i] * scales[i]))`: one row of a matrix
    /// quantised with a multiplier per column.
    pub fn quantize_i8_columns(scales: &[f32], xs: &[f32], ys: &mut [i8]) => quantize_i8_columns_impl);

#[inline(always)]
fn scale_dots_impl(dots: &[i32], offsets: &[i32], scale: f32, scales: &[f32], out: &mut [f32]) {
    for (((d, o), s), y) in dots.iter().zip(offsets).zip(scales).zip(out.iter_mut()) {
        *y = (d - o) as f32 * (scale * s);
    }
}

dispatch!(
    /// `out[c] = f32(dots[c] − offsets[c]) · scale · scales[c]`: one row of an int8 product
    /// with a scale for the row and one per column.
    pub fn scale_dots(dots: &[i32], offsets: &[i32], scale: f32, scales: &[f32], out: &mut [f32]) => scale_dots_impl);

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
fn dequantize_i32_columns_impl(acc: &[i32], scales: &[f32], bias: &[f32], out: &mut [f32]) {
    for (a, o) in acc
        .chunks_exact(bias.len())
        .zip(out.chunks_exact_mut(bias.len()))
    {
        for (((x, s), b), y) in a.iter().zip(scales).zip(bias).zip(o.iter_mut()) {
            *y = (*x as f32) * *s + *b;
        }
    }
}

dispatch!(
    /// [`dequantize_i32`] with one scale per column (`scales` as long as `bias`): a
    /// per-channel dynamic-int8 product's `Cast`, `Mul`, `Add`, rounded as those three are.
    pub fn dequantize_i32_columns(acc: &[i32], scales: &[f32], bias: &[f32], out: &mut [f32]) => dequantize_i32_columns_impl);

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
fn requantize_i8_impl(q_scale: f32, q_zero: i8, dq_scale: f32, dq_zero: i32, xs: &mut [f32]) {
    let zp = q_zero as f32;
    for x in xs.iter_mut() {
        let q = low_byte((round_clamped(*x * q_scale) + zp).clamp(-128.0, 127.0)) as i8;
        *x = (q as i32 - dq_zero) as f32 * dq_scale;
    }
}

dispatch!(
    /// [`quantize_i8`] then [`dequantize_i8`] in place, in one pass and bit for bit the two
    /// (a QDQ file's requantisation of a product's output).
    pub fn requantize_i8(q_scale: f32, q_zero: i8, dq_scale: f32, dq_zero: i32, xs: &mut [f32]) => requantize_i8_impl);

#[inline(always)]
fn requantize_i8_add_impl(
    q_scale: f32,
    q_zero: i8,
    dq_scale: f32,
    dq_zero: i32,
    bias: &[f32],
    xs: &mut [f32],
) {
    let zp = q_zero as f32;
    for (x, b) in xs.iter_mut().zip(bias) {
        let q = low_byte((round_clamped(*x * q_scale) + zp).clamp(-128.0, 127.0)) as i8;
        // a product then a sum, each rounded (Rust never fuses them into one FMA)
        *x = (q as i32 - dq_zero) as f32 * dq_scale + *b;
    }
}

dispatch!(
    /// [`requantize_i8`] then `+ bias[i]` on each value, in one pass and bit for bit the
    /// three (a QDQ file's requantised product output and the bias `Add` after it). `bias` is
    /// as long as `xs`.
    pub fn requantize_i8_add(q_scale: f32, q_zero: i8, dq_scale: f32, dq_zero: i32, bias: &[f32], xs: &mut [f32]) => requantize_i8_add_impl);

#[inline(always)]
fn dequantize_u8_impl(scale: f32, zero_point: i32, xs: &[u8], ys: &mut [f32]) {
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = (*x as i32 - zero_point) as f32 * scale;
    }
}

dispatch!(
    /// [`dequantize_i8`] for u8 inputs.
    pub fn dequantize_u8(scale: f32, zero_point: i32, xs: &[u8], ys: &mut [f32]) => dequantize_u8_impl);

/// `ln 2` in two parts (Cephes'): `x − n·ln 2` taken as `x − n·LN2_HI − n·LN2_LO`.
const LN2_HI: f32 = 0.693_359_4;
/// See [`LN2_HI`].
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' polynomial `p` with `eʳ ≈ 1 + r + p(r)·r²`, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `eˣ` for `x ≤ 0` (what a softmax exponentiates once its maximum is taken out), within 2
/// units in the last place: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, Cephes' degree-7
/// polynomial for `eʳ`, and `2ⁿ` built from its bits. Below −87 (where `eˣ` is under
/// 2⁻¹²⁵) it gives `e⁻⁸⁷`, which a softmax's sum cannot tell from 0. Plain float
/// operations and bit casts, so it vectorises.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, c| p * r + c);
    let e = p * r * r + r + 1.0;
    // t's bits are MAGIC's plus n (two's complement); 2ⁿ has n + 127 as its exponent
    let n_bits = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    e * f32::from_bits(((n_bits + 127) << 23) as u32)
}

/// The largest of `xs`, in 16 lanes (`−∞` for none).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            hi[i] = hi[i].max(c[i]);
        }
    }
    chunks.remainder().iter().fold(
        hi.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)),
        |m, v| m.max(*v),
    )
}

#[inline(always)]
fn softmax_impl(xs: &mut [f32]) {
    const LANES: usize = 16;
    let max = max_of(xs);
    let mut sums = [0f32; LANES];
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_nonpositive(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let scale = sum.recip();
    for v in xs.iter_mut() {
        *v *= scale;
    }
}

dispatch!(
    /// [`softmax`] in plain loops, compiled for the best instruction set.
    fn softmax_loops(xs: &mut [f32]) => softmax_impl);

/// `xs = softmax(xs)` in place: `eˣ⁻ᵐᵃˣ / Σ`, the division as one multiplication by the
/// sum's reciprocal (as tract's Softmax does). Within a few units in the last place of the
/// exact value: the sum is taken in 16 lanes, the exponential is a degree-7 polynomial
/// (`exp_nonpositive`; with AVX-512, the same in intrinsics with `vscalefps` for `2ⁿ`).
pub fn softmax(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    return match level() {
        // SAFETY: the CPU has AVX-512F and BW (checked by `level`).
        Level::Avx512 => unsafe { exp512::softmax(xs) },
        // SAFETY: the CPU has AVX2 and FMA (checked by `level`).
        Level::Avx2 => unsafe { exp256::softmax(xs) },
        Level::Baseline => softmax_loops(xs),
    };
    #[cfg(not(target_arch = "x86_64"))]
    softmax_loops(xs)
}

#[inline(always)]
fn scale_impl(scale: f32, xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x *= scale;
    }
}

#[inline(always)]
fn softmax_u8_impl(xs: &[f32], ys: &mut [u8]) -> f32 {
    const LANES: usize = 16;
    let max = max_of(xs);
    let mut sums = [0f32; LANES];
    let mut xc = xs.chunks_exact(LANES);
    let mut yc = ys.chunks_exact_mut(LANES);
    for (x, y) in (&mut xc).zip(&mut yc) {
        for i in 0..LANES {
            let e = exp_nonpositive(x[i] - max);
            sums[i] += e;
            y[i] = low_byte(round_clamped(e * 255.0));
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (x, y) in xc.remainder().iter().zip(yc.into_remainder()) {
        let e = exp_nonpositive(x - max);
        sum += e;
        *y = low_byte(round_clamped(e * 255.0));
    }
    (255.0 * sum).recip()
}

dispatch!(
    /// [`softmax_u8`] in plain loops, compiled for the best instruction set.
    fn softmax_u8_loops(xs: &[f32], ys: &mut [u8]) -> f32 => softmax_u8_impl);

/// The softmax of `xs` as bytes: `ys = round(255 · eˣ⁻ᵐᵃˣ)` (the largest is 255), and the
/// scale that makes them probabilities, `1 / (255 · Σ eˣ⁻ᵐᵃˣ)`. One pass after the maximum,
/// no division: what an int8 product with the probabilities needs. `ys` is as long as `xs`.
pub fn softmax_u8(xs: &[f32], ys: &mut [u8]) -> f32 {
    assert_eq!(xs.len(), ys.len(), "softmax_u8: one byte per value");
    #[cfg(target_arch = "x86_64")]
    return match level() {
        // SAFETY: the CPU has AVX-512F and BW (checked by `level`); the lengths match.
        Level::Avx512 => unsafe { exp512::softmax_u8(xs, ys) },
        // SAFETY: the CPU has AVX2 and FMA (checked by `level`); the lengths match.
        Level::Avx2 => unsafe { exp256::softmax_u8(xs, ys) },
        Level::Baseline => softmax_u8_loops(xs, ys),
    };
    #[cfg(not(target_arch = "x86_64"))]
    softmax_u8_loops(xs, ys)
}

/// The softmax's loops in AVX-512 intrinsics: the maximum, then `eˣ⁻ᵐᵃˣ` 16 lanes at a time
/// (the tail under a mask), `2ⁿ` by `vscalefps`.
#[cfg(target_arch = "x86_64")]
mod exp512 {
    use super::{EXP_POLY, LN2_HI, LN2_LO};
    use std::arch::x86_64::*;

    /// The mask of the first `rem.min(16)` lanes.
    fn lanes(rem: usize) -> __mmask16 {
        if rem >= 16 {
            0xffff
        } else {
            ((1u32 << rem) - 1) as __mmask16
        }
    }

    /// `eˣ` for each lane, `x ≤ 0` (clamped to −87..0 as `exp_nonpositive` does).
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_setzero_ps());
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let e = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(e, n)
    }

    #[target_feature(enable = "avx512f")]
    fn max(xs: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for (i, c) in xs.chunks(16).enumerate() {
            // SAFETY: the mask covers the chunk's lanes alone.
            let x = unsafe { _mm512_mask_loadu_ps(m, lanes(c.len()), xs.as_ptr().add(16 * i)) };
            m = _mm512_max_ps(m, x);
        }
        _mm512_reduce_max_ps(m)
    }

    /// `eˣ⁻ᵗᵒᵖ` of the lanes under `k` from `p`, 0 in the others.
    ///
    /// # Safety
    /// The lanes under `k` from `p` must be readable.
    #[target_feature(enable = "avx512f")]
    unsafe fn shifted_exp(p: *const f32, k: __mmask16, top: __m512) -> __m512 {
        // SAFETY: the caller's promise.
        let x = unsafe { _mm512_maskz_loadu_ps(k, p) };
        _mm512_maskz_mov_ps(k, exp(_mm512_sub_ps(x, top)))
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn softmax(xs: &mut [f32]) {
        let top = _mm512_set1_ps(max(xs));
        let mut sum = _mm512_setzero_ps();
        let p = xs.as_mut_ptr();
        for i in (0..xs.len()).step_by(16) {
            let k = lanes(xs.len() - i);
            // SAFETY: lanes under `k` are in the slice.
            unsafe {
                let e = shifted_exp(p.add(i), k, top);
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(p.add(i), k, e);
            }
        }
        let inv = _mm512_set1_ps(_mm512_reduce_add_ps(sum).recip());
        for i in (0..xs.len()).step_by(16) {
            let k = lanes(xs.len() - i);
            // SAFETY: as above.
            unsafe {
                let e = _mm512_maskz_loadu_ps(k, p.add(i));
                _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(e, inv));
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn softmax_u8(xs: &[f32], ys: &mut [u8]) -> f32 {
        let top = _mm512_set1_ps(max(xs));
        let mut sum = _mm512_setzero_ps();
        let (p, q) = (xs.as_ptr(), ys.as_mut_ptr());
        for i in (0..xs.len()).step_by(16) {
            let k = lanes(xs.len() - i);
            // SAFETY: lanes under `k` are in both slices (the caller's equal lengths).
            unsafe {
                let e = shifted_exp(p.add(i), k, top);
                sum = _mm512_add_ps(sum, e);
                let b = _mm512_cvtps_epi32(_mm512_mul_ps(e, _mm512_set1_ps(255.0)));
                _mm512_mask_cvtepi32_storeu_epi8(q.add(i) as *mut i8, k, b);
            }
        }
        (255.0 * _mm512_reduce_add_ps(sum)).recip()
    }
}

/// The softmax's loops in AVX2 + FMA intrinsics, as [`exp512`]'s 8 lanes at a time (`2ⁿ` by
/// adding `n` to the exponent's bits); the last `len % 8` values by the plain loops' scalar
/// steps. LLVM's vectorisation of those loops was ~4 cycles a value on a Zen 3 (5 % of the
/// int8 ViT-S run); this is under 1.
#[cfg(target_arch = "x86_64")]
mod exp256 {
    use super::{EXP_POLY, LN2_HI, LN2_LO, exp_nonpositive, low_byte, round_clamped};
    use std::arch::x86_64::*;

    /// `eˣ` for each lane, `x ≤ 0` (clamped to −87..0 as `exp_nonpositive` does).
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_setzero_ps());
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let e = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        // n in −126..0: 2ⁿ is the normal float with exponent n + 127
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(e, _mm256_castsi256_ps(two_n))
    }

    /// The largest of `xs` (`−∞` for none).
    #[target_feature(enable = "avx2")]
    fn max(xs: &[f32]) -> f32 {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = xs.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: 8 values.
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |m, v| m.max(*v))
    }

    /// The sum of the lanes.
    #[target_feature(enable = "avx2")]
    fn sum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: 8 values.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax(xs: &mut [f32]) {
        let top = max(xs);
        let top8 = _mm256_set1_ps(top);
        let mut acc = _mm256_setzero_ps();
        let whole = xs.len() - xs.len() % 8;
        let (body, tail) = xs.split_at_mut(whole);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: 8 values read and written.
            unsafe {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), top8));
                acc = _mm256_add_ps(acc, e);
                _mm256_storeu_ps(c.as_mut_ptr(), e);
            }
        }
        let mut total = sum(acc);
        for v in tail.iter_mut() {
            *v = exp_nonpositive(*v - top);
            total += *v;
        }
        let inv = total.recip();
        let inv8 = _mm256_set1_ps(inv);
        for c in body.chunks_exact_mut(8) {
            // SAFETY: as above.
            unsafe {
                _mm256_storeu_ps(
                    c.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv8),
                )
            };
        }
        tail.iter_mut().for_each(|v| *v *= inv);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_u8(xs: &[f32], ys: &mut [u8]) -> f32 {
        let top = max(xs);
        let top8 = _mm256_set1_ps(top);
        let mut acc = _mm256_setzero_ps();
        let whole = xs.len() - xs.len() % 8;
        for (x, y) in xs[..whole].chunks_exact(8).zip(ys.chunks_exact_mut(8)) {
            // SAFETY: 8 values read, 8 bytes written.
            unsafe {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr()), top8));
                acc = _mm256_add_ps(acc, e);
                // 0..=255 in each lane: packed to 16 bits, then to bytes
                let b = _mm256_cvtps_epi32(_mm256_mul_ps(e, _mm256_set1_ps(255.0)));
                let w =
                    _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
                _mm_storel_epi64(y.as_mut_ptr() as *mut __m128i, _mm_packus_epi16(w, w));
            }
        }
        let mut total = sum(acc);
        for (x, y) in xs[whole..].iter().zip(&mut ys[whole..]) {
            let e = exp_nonpositive(x - top);
            total += e;
            *y = low_byte(round_clamped(e * 255.0));
        }
        (255.0 * total).recip()
    }
}

dispatch!(
    /// `xs *= scale` in place.
    pub fn scale(scale: f32, xs: &mut [f32]) => scale_impl);

#[inline(always)]
fn fake_quantize_i8_impl(q_scale: f32, q_zero: i8, dq_scale: f32, dq_zero: i8, xs: &mut [f32]) {
    let (qz, dz) = (q_zero as f32, dq_zero as f32);
    for x in xs.iter_mut() {
        let q = (round_clamped(*x * q_scale) + qz).clamp(-128.0, 127.0);
        *x = (q - dz) * dq_scale;
    }
}

dispatch!(
    /// `xs = dequantize(quantize(xs))` in place: tract's static `QuantizeLinearI8` (`q_scale`
    /// the reciprocal of the ONNX scale) then its `DequantizeLinearF32`, bit for bit, without
    /// the int8 tensor between them.
    pub fn fake_quantize_i8(q_scale: f32, q_zero: i8, dq_scale: f32, dq_zero: i8, xs: &mut [f32]) => fake_quantize_i8_impl);

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

    #[test]
    fn exp_is_close_to_libm_over_a_softmax_s_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e9) < 1e-37);
    }

    #[test]
    fn requantize_is_quantize_then_dequantize_bit_for_bit() {
        let mut xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) * 0.0173)
            .collect();
        // ties, the clamps, and what is not a number
        xs.extend([
            0.5,
            1.5,
            -0.5,
            -2.5,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        for (q_scale, q_zero, dq_scale, dq_zero) in
            [(7.3, 0, 0.137, 0), (1.0, -3, 1.0, -3), (40.0, 5, 0.025, 5)]
        {
            for len in [0, 1, 7, 48, 100, xs.len()] {
                let xs = &xs[xs.len() - len..];
                let mut q = vec![0i8; len];
                quantize_i8(q_scale, q_zero, xs, &mut q);
                let mut want = vec![0f32; len];
                dequantize_i8(dq_scale, dq_zero, &q, &mut want);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for f in [requantize_i8, requantize_i8_impl] {
                    let mut got = xs.to_vec();
                    f(q_scale, q_zero, dq_scale, dq_zero, &mut got);
                    assert_eq!(bits(&got), bits(&want), "scale {q_scale}, {len} values");
                }
                // and with the bias added after: the sum of the two, rounded once
                let bias: Vec<f32> = (0..len).map(|i| (i as f32 - 50.0) * 0.0371).collect();
                let with_bias: Vec<f32> = want.iter().zip(&bias).map(|(w, b)| w + b).collect();
                for f in [requantize_i8_add, requantize_i8_add_impl] {
                    let mut got = xs.to_vec();
                    f(q_scale, q_zero, dq_scale, dq_zero, &bias, &mut got);
                    assert_eq!(
                        bits(&got),
                        bits(&with_bias),
                        "scale {q_scale}, {len} + bias"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_matches_its_definition_in_every_instruction_set() {
        for len in [1usize, 7, 16, 33, 257, 705] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let max = xs.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
            let sum: f64 = xs.iter().map(|v| (*v as f64 - max).exp()).sum();
            let mut got = xs.clone();
            softmax(&mut got);
            let mut portable = xs.clone();
            softmax_impl(&mut portable);
            let mut bytes = vec![0u8; len];
            let scale = softmax_u8(&xs, &mut bytes);
            let mut bytes_portable = vec![0u8; len];
            let scale_portable = softmax_u8_impl(&xs, &mut bytes_portable);
            assert!((scale / scale_portable - 1.0).abs() < 1e-6);
            for (i, x) in xs.iter().enumerate() {
                let want = (*x as f64 - max).exp() / sum;
                for g in [got[i], portable[i]] {
                    assert!(
                        (g as f64 - want).abs() <= 1e-6 * want + 1e-12,
                        "{g} vs {want}"
                    );
                }
                // bytes: 255·eˣ⁻ᵐᵃˣ rounded, the largest 255
                for b in [bytes[i], bytes_portable[i]] {
                    let exact = want / (scale as f64);
                    assert!((b as f64 - exact).abs() <= 0.5 + 1e-3, "{b} vs {exact}");
                }
            }
            assert_eq!(bytes.iter().max(), Some(&255));
        }
    }
}
