//! dinoedge's `f32` matrix product for the products of an fp32 file whose weights are
//! constant (the 72 linear layers of ViT-S): `C[m, n] = Σ_k A[m, k] · B[k, n] + bias[n]`.
//!
//! Built like [`crate::qgemm`]: the weights packed once into panels of 48 columns
//! (`[panel][k][48]`), the activations read in place (one value broadcast per row and step),
//! a tile of 8 rows by 48 columns in 24 zmm accumulators with one fused multiply-add each per
//! step, and the bias added as the tile leaves the registers. tract's x86 `f32` kernels keep
//! a smaller tile and pack the activations for every product.
//!
//! The sums run in `k` order per output, one rounding per multiply-add, so the result differs
//! from tract's (which splits `k` differently) by a few units in the last place; the parity
//! tests against PyTorch hold it to the same tolerance.
//!
//! Two kernels, picked at run time: AVX-512F, and AVX2 + FMA (tiles of 6 rows by 16 columns,
//! in 12 ymm accumulators, over weights packed in panels of 16 columns instead: one
//! sequential stream per tile). [`available`] says whether either runs; other CPUs keep
//! tract's products.

use crate::qgemm::{ShapeError, SharedRows, par_panels};

/// Columns in a panel for the AVX-512 kernel and the reference (three 16-lane vectors).
const NR: usize = 48;
/// Columns in a panel for the AVX2 kernel: one tile's width, so that the tile reads its
/// weights as one sequential stream (from 48-column panels, a third of each 192-byte row: 36–46
/// GMAC/s on ViT-S's shapes here, against 45–50 from 16-column ones).
#[cfg(target_arch = "x86_64")]
const NR_AVX2: usize = 16;
/// Rows in a tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 8;

/// The constant right-hand side of an `f32` product, packed for [`matmul`].
#[derive(Clone, Debug, PartialEq)]
pub struct PackedF32 {
    k: usize,
    n: usize,
    /// Columns in a panel: [`NR`], or 16 for the AVX2 kernel ([`panel_width`]).
    width: usize,
    /// Panel after panel, each `k` rows of `width` columns; zero padded.
    panels: Vec<f32>,
}

impl Eq for PackedF32 {}

impl std::hash::Hash for PackedF32 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.k, self.n, self.width).hash(state);
        for v in &self.panels {
            v.to_bits().hash(state);
        }
    }
}

/// The `f32` kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// the x86 kernels are never chosen on other CPUs
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Kernel {
    /// zmm registers (AVX-512F).
    Avx512,
    /// ymm registers (AVX2 and FMA).
    Avx2,
    /// One multiply-add at a time (the reference; other CPUs keep tract's products).
    Portable,
}

/// The best kernel this CPU has, unless `DINOEDGE_KERNELS` caps dinoedge's loops
/// (`baseline`: none; `avx2`: no AVX-512).
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let cap = std::env::var("DINOEDGE_KERNELS").unwrap_or_default();
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            let avx512 = std::arch::is_x86_feature_detected!("avx512f");
            match cap.as_str() {
                "baseline" => Kernel::Portable,
                "avx2" if avx2 => Kernel::Avx2,
                "avx2" => Kernel::Portable,
                _ if avx512 => Kernel::Avx512,
                _ if avx2 => Kernel::Avx2,
                _ => Kernel::Portable,
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Kernel::Portable
    }
}

/// Whether a fast kernel can run on this CPU (x86-64 with AVX-512F, or AVX2 and FMA; not
/// when `DINOEDGE_KERNELS=baseline`): the weight products and attention's.
pub fn available() -> bool {
    kernel() != Kernel::Portable
}

/// The panel width this CPU's kernel reads.
fn panel_width() -> usize {
    match kernel() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => NR_AVX2,
        _ => NR,
    }
}

impl PackedF32 {
    /// Pack row-major `[K, N]` weights.
    pub fn new(b: &[f32], k: usize, n: usize) -> Result<Self, ShapeError> {
        Self::with_width(b, k, n, panel_width())
    }

    /// [`PackedF32::new`] in panels of `width` columns.
    fn with_width(b: &[f32], k: usize, n: usize, width: usize) -> Result<Self, ShapeError> {
        if k == 0 || n == 0 || b.len() != k * n {
            return Err(ShapeError(format!("{} weights for [{k}, {n}]", b.len())));
        }
        let panels_n = n.div_ceil(width);
        let mut panels = vec![0f32; panels_n * k * width];
        for kk in 0..k {
            for c in 0..n {
                panels[((c / width) * k + kk) * width + c % width] = b[kk * n + c];
            }
        }
        Ok(PackedF32 {
            k,
            n,
            width,
            panels,
        })
    }

    /// Pack the `[K, N]` values at `src[kk·k_step + c·n_step]` (a strided view: a head of
    /// attention's keys as `Kᵀ`, or its values, read where they lie).
    pub fn from_strided(
        src: &[f32],
        k: usize,
        n: usize,
        k_step: usize,
        n_step: usize,
    ) -> Result<Self, ShapeError> {
        let mut packed = PackedF32 {
            k: 0,
            n: 0,
            width: panel_width(),
            panels: Vec::new(),
        };
        packed.repack_strided(src, k, n, k_step, n_step)?;
        Ok(packed)
    }

    /// [`PackedF32::from_strided`] into this value's buffer (its allocation reused: attention
    /// packs every head's keys and values on every run).
    pub fn repack_strided(
        &mut self,
        src: &[f32],
        k: usize,
        n: usize,
        k_step: usize,
        n_step: usize,
    ) -> Result<(), ShapeError> {
        if k == 0 || n == 0 {
            return Err(ShapeError(format!("no weights for [{k}, {n}]")));
        }
        let extent = (k - 1) * k_step + (n - 1) * n_step + 1;
        if src.len() < extent {
            return Err(ShapeError(format!(
                "{} values for [{k}, {n}] with steps {k_step} and {n_step} (reaching {extent})",
                src.len()
            )));
        }
        let w = self.width;
        let panels_n = n.div_ceil(w);
        self.k = k;
        self.n = n;
        // every value is written below (no zeroing pass over the last call's buffer)
        self.panels.resize(panels_n * k * w, 0.0);
        for (p, panel) in self.panels.chunks_exact_mut(k * w).enumerate() {
            let cols = w.min(n - p * w);
            if cols < w {
                // zeros: the last panel's columns past `n` are read by the kernels, never stored
                for row in panel.chunks_exact_mut(w) {
                    row[cols..].fill(0.0);
                }
            }
            let first = &src[p * w * n_step..];
            if n_step == 1 {
                // each of the panel's rows is a run of `src`
                for (kk, row) in panel.chunks_exact_mut(w).enumerate() {
                    row[..cols].copy_from_slice(&first[kk * k_step..][..cols]);
                }
            } else if k_step == 1 {
                // each of the panel's columns is a run of `src` (a key's channels, for `Kᵀ`)
                for c in 0..cols {
                    let column = &first[c * n_step..][..k];
                    for (row, v) in panel.chunks_exact_mut(w).zip(column) {
                        row[c] = *v;
                    }
                }
            } else {
                for (kk, row) in panel.chunks_exact_mut(w).enumerate() {
                    for (c, v) in row[..cols].iter_mut().enumerate() {
                        *v = first[kk * k_step + c * n_step];
                    }
                }
            }
        }
        Ok(())
    }

    /// `K` (the shared dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// `N` (the output's columns).
    pub fn n(&self) -> usize {
        self.n
    }
}

/// `a · b + bias` (`a`: `[M, K]` row-major) into `out` (`[M, N]`), split by column panels over
/// the backbone's threads (tract's executor; inline on one thread).
pub fn matmul(
    a: &[f32],
    b: &PackedF32,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (k, n) = (b.k, b.n);
    let m = a.len() / k;
    if !a.len().is_multiple_of(k) || out.len() != m * n || bias.is_some_and(|v| v.len() != n) {
        return Err(ShapeError(format!(
            "{} activations, {} outputs, {} bias values for K {k}, N {n}",
            a.len(),
            out.len(),
            bias.map_or(0, |v| v.len())
        )));
    }
    let out = SharedRows::new(out);
    let store = |row: usize, c0: usize, sums: &[f32]| {
        // SAFETY: `par_panels` hands each panel's columns to one call alone.
        let dst = unsafe { out.segment(row * n + c0, sums.len()) };
        match bias {
            Some(bias) => {
                for ((d, s), b) in dst.iter_mut().zip(sums).zip(&bias[c0..]) {
                    *d = s + b;
                }
            }
            None => dst.copy_from_slice(sums),
        }
    };
    par_panels(n.div_ceil(b.width), m * n * k, |panels| {
        match kernel() {
            // SAFETY: the CPU has AVX-512F (checked by `kernel`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if b.width == NR => unsafe { avx512::tiles(a, b, panels, store) },
            // SAFETY: the CPU has AVX2 and FMA (checked by `kernel`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::tiles(a, b, panels, store) },
            _ => portable_tiles(a, b, panels, store),
        }
    })
}

/// [`matmul`] on this thread alone (for callers that split the work themselves).
pub fn matmul_here(
    a: &[f32],
    b: &PackedF32,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let one = tract_linalg::multithread::Executor::SingleThread;
    tract_linalg::multithread::multithread_tract_scope(one, || matmul(a, b, bias, out))
}

/// The reference: the same sums, in the same order, one multiply-add at a time.
fn portable_tiles(
    a: &[f32],
    b: &PackedF32,
    panels: std::ops::Range<usize>,
    store: impl Fn(usize, usize, &[f32]),
) {
    let (k, w) = (b.k, b.width);
    let m = a.len() / k;
    let mut sums = vec![0f32; w];
    for p in panels {
        let cols = w.min(b.n - p * w);
        let panel = &b.panels[p * k * w..(p + 1) * k * w];
        for r in 0..m {
            sums.fill(0.0);
            for (x, row) in a[r * k..(r + 1) * k].iter().zip(panel.chunks_exact(w)) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s = x.mul_add(*v, *s);
                }
            }
            store(r, p * w, &sums[..cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, PackedF32};
    use std::arch::x86_64::*;

    /// One tile of `R` rows: rows `a` (stride `k`) times one panel.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        panel: *const f32,
        out: &mut [[f32; NR]; MR],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for kk in 0..k {
            // SAFETY: the panel holds k rows of NR; each of the R rows of `a` holds k values.
            unsafe {
                let bp = panel.add(kk * NR);
                let b0 = _mm512_loadu_ps(bp);
                let b1 = _mm512_loadu_ps(bp.add(16));
                let b2 = _mm512_loadu_ps(bp.add(32));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * k + kk));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                    acc[2] = _mm512_fmadd_ps(x, b2, acc[2]);
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `out` holds 3 vectors of 16.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * v), *acc) };
            }
        }
    }

    /// Panel after panel, every row block of [`MR`] for each (the panel stays in L2 while the
    /// activations stream).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tiles(
        a: &[f32],
        b: &PackedF32,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[f32]),
    ) {
        let k = b.k;
        let m = a.len() / k;
        let mut out = [[0f32; NR]; MR];
        for p in panels {
            let panel = b.panels[p * k * NR..].as_ptr();
            let cols = NR.min(b.n - p * NR);
            for r0 in (0..m).step_by(MR) {
                let rows = MR.min(m - r0);
                let ap = a[r0 * k..].as_ptr();
                // SAFETY: `rows` rows of `k` from `ap`, one whole panel from `panel`.
                unsafe {
                    match rows {
                        8 => tile::<8>(k, ap, panel, &mut out),
                        7 => tile::<7>(k, ap, panel, &mut out),
                        6 => tile::<6>(k, ap, panel, &mut out),
                        5 => tile::<5>(k, ap, panel, &mut out),
                        4 => tile::<4>(k, ap, panel, &mut out),
                        3 => tile::<3>(k, ap, panel, &mut out),
                        2 => tile::<2>(k, ap, panel, &mut out),
                        _ => tile::<1>(k, ap, panel, &mut out),
                    }
                }
                for (r, sums) in out.iter().enumerate().take(rows) {
                    store(r0 + r, p * NR, &sums[..cols]);
                }
            }
        }
    }
}

/// The AVX2 kernel: tiles of 6 rows by 16 columns (12 ymm accumulators), over panels of 16
/// columns ([`NR_AVX2`]; 48-column ones, as the tests give it too, in three passes); the same
/// sums in the same order as the others. 45–50 GMAC/s on ViT-S's shapes on the project's Zen 3
/// VM (peak 51), where tract's AVX2 kernel runs the weight products at 37 in the model.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{NR, PackedF32};
    use std::arch::x86_64::*;

    /// Rows in a tile.
    const MR: usize = 6;
    /// Vectors of 8 columns in a tile (12 accumulators, 2 weight vectors and a broadcast in
    /// 15 of the 16 ymm registers: with 4x3 one accumulator spilled, and its store and
    /// reload each step halved the speed).
    const NV: usize = 2;

    /// `R` rows of `a` (stride `lda`) times `k` steps of a panel of `width` columns (from
    /// `panel`, vector `v0` on), into `sums` (rows of [`NR`], from column `8·v0`; what they
    /// held is overwritten, not added to: each column's sums are one tile's).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        width: usize,
        v0: usize,
        sums: *mut f32,
    ) {
        // SAFETY (every access): the caller hands R rows of `a` with `k` values each, `k` rows
        // of `width` in the panel, and R rows of NR sums.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; R];
            for kk in 0..k {
                let bp = panel.add(kk * width + 8 * v0);
                let mut b = [_mm256_setzero_ps(); NV];
                for (v, b) in b.iter_mut().enumerate() {
                    *b = _mm256_loadu_ps(bp.add(8 * v));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.add(r * lda + kk));
                    for v in 0..NV {
                        acc[v] = _mm256_fmadd_ps(x, b[v], acc[v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(sums.add(r * NR + 8 * (v0 + v)), *acc);
                }
            }
        }
    }

    /// Panel after panel, every row block for each.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tiles(
        a: &[f32],
        b: &PackedF32,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[f32]),
    ) {
        let (k, w) = (b.k, b.width);
        let m = a.len() / k;
        let mut sums = [0f32; MR * NR];
        for p in panels {
            let panel = b.panels[p * k * w..].as_ptr();
            let cols = w.min(b.n - p * w);
            for r0 in (0..m).step_by(MR) {
                let rows = MR.min(m - r0);
                let ap = a[r0 * k..].as_ptr();
                for v0 in (0..cols.div_ceil(8)).step_by(NV) {
                    let sp = sums.as_mut_ptr();
                    // SAFETY: `rows` rows of `k` from `ap`, one whole panel from `panel`,
                    // MR rows of NR sums.
                    unsafe {
                        match rows {
                            6 => tile::<6>(k, ap, k, panel, w, v0, sp),
                            5 => tile::<5>(k, ap, k, panel, w, v0, sp),
                            4 => tile::<4>(k, ap, k, panel, w, v0, sp),
                            3 => tile::<3>(k, ap, k, panel, w, v0, sp),
                            2 => tile::<2>(k, ap, k, panel, w, v0, sp),
                            _ => tile::<1>(k, ap, k, panel, w, v0, sp),
                        }
                    }
                }
                for (r, row) in sums.chunks_exact(NR).take(rows).enumerate() {
                    store(r0 + r, p * w, &row[..cols]);
                }
            }
        }
    }

    /// Whether this CPU can run [`tiles`] (for the tests, whatever kernel is in use).
    #[cfg(test)]
    pub(super) fn detected() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dinoedge_testkit::noise as values;

    /// What a kernel hands each row segment to.
    type Store<'a> = &'a dyn Fn(usize, usize, &[f32]);

    #[test]
    fn kernel_and_reference_agree_bit_for_bit_and_match_the_definition() {
        for (m, k, n) in [
            (1, 1, 1),
            (9, 13, 48),
            (17, 40, 50),
            (257, 384, 96),
            (3, 700, 5),
        ] {
            let a = values(m * k, m as u32);
            let b = values(k * n, n as u32 + 5);
            let bias = values(n, 99);
            let packed = PackedF32::new(&b, k, n).unwrap();
            let mut got = vec![0f32; m * n];
            let two = tract_linalg::multithread::Executor::multithread(2);
            tract_linalg::multithread::multithread_tract_scope(two, || {
                matmul(&a, &packed, Some(&bias), &mut got).unwrap()
            });
            // the reference and the AVX2 kernel (whichever kernel this CPU picked) on panels
            // of either width, each with the bias added as `matmul` adds it
            let run = |tiles: &dyn Fn(&PackedF32, Store)| {
                [NR, 16].map(|width| {
                    let packed = PackedF32::with_width(&b, k, n, width).unwrap();
                    let out = std::sync::Mutex::new(vec![0f32; m * n]);
                    tiles(&packed, &|r, c0, s| {
                        let mut out = out.lock().unwrap();
                        for (i, v) in s.iter().enumerate() {
                            out[r * n + c0 + i] = v + bias[c0 + i];
                        }
                    });
                    out.into_inner().unwrap()
                })
            };
            let slow = run(&|p, store| portable_tiles(&a, p, 0..n.div_ceil(p.width), store));
            let mut all = vec![("matmul", got.clone()), ("reference, 16", slow[1].clone())];
            #[cfg(target_arch = "x86_64")]
            if avx2::detected() {
                // SAFETY: the CPU has AVX2 and FMA (just checked).
                let wide =
                    run(&|p, store| unsafe { avx2::tiles(&a, p, 0..n.div_ceil(p.width), store) });
                all.extend([("avx2, 48", wide[0].clone()), ("avx2, 16", wide[1].clone())]);
            }
            for (what, out) in all {
                for (i, (g, w)) in out.iter().zip(&slow[0]).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{what}: m{m} k{k} n{n} at {i}");
                }
            }
            for r in 0..m {
                for c in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| a[r * k + i] as f64 * b[i * n + c] as f64)
                        .sum::<f64>()
                        + bias[c] as f64;
                    let g = got[r * n + c] as f64;
                    assert!(
                        (g - exact).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                        "{g} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedF32::new(&[0.0; 5], 2, 3).is_err());
        let packed = PackedF32::new(&[0.0; 6], 2, 3).unwrap();
        let mut out = [0f32; 3];
        assert!(matmul(&[0.0; 3], &packed, None, &mut out).is_err());
        assert!(matmul(&[0.0; 2], &packed, Some(&[0.0; 2]), &mut out).is_err());
        assert!(matmul(&[0.0; 4], &packed, None, &mut out).is_err());
        assert!(matmul(&[0.0; 2], &packed, None, &mut out).is_ok());
    }

    #[test]
    fn strided_packing_is_packing_the_gathered_matrix() {
        // (k, n, k_step, n_step): rows contiguous (V), columns contiguous (Kᵀ), neither
        let cases = [
            (70, 100, 384, 1),
            (64, 257, 1, 384),
            (5, 50, 3, 7),
            (1, 1, 1, 1),
        ];
        // one value repacked case after case: its old contents must not leak
        let mut reused = PackedF32::from_strided(&values(9, 1), 3, 3, 3, 1).unwrap();
        for (k, n, ks, ns) in cases {
            let src = values((k - 1) * ks + (n - 1) * ns + 1, (k + n) as u32);
            let dense: Vec<f32> = (0..k * n)
                .map(|i| src[(i / n) * ks + (i % n) * ns])
                .collect();
            let want = PackedF32::new(&dense, k, n).unwrap();
            assert_eq!(PackedF32::from_strided(&src, k, n, ks, ns).unwrap(), want);
            reused.repack_strided(&src, k, n, ks, ns).unwrap();
            assert_eq!(reused, want, "k{k} n{n} steps {ks} {ns}");
            let short = &src[..src.len() - 1];
            assert!(PackedF32::from_strided(short, k, n, ks, ns).is_err());
        }
        assert!(PackedF32::from_strided(&[1.0], 0, 1, 1, 1).is_err());
    }
}
