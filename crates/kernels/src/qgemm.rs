//! dinoedge's int8 matrix product, for the products of an int8 file whose weights are
//! constant: `C[m, n] = Σ_k (A[m, k] − a₀) · (B[k, n] − b₀[n])`, exactly, in `i32`, with the
//! dequantisation that follows it (a scale and a bias, or one scale per column) applied as
//! each tile leaves the registers.
//!
//! Why not tract's: tract packs the activations for every product (its `OptMatMulPack`, ~8 %
//! of the int8 ViT-S run) and its x86 VNNI kernel keeps an 8x8 tile of 256-bit registers. Here
//! the weights are packed once, when the model is built, into panels of 48 columns in the
//! order `VPDPBUSD` reads them (4 consecutive `k` of one column in each 32-bit lane); the
//! activations are read in place, 4 bytes broadcast per row and step; a tile is 8 rows by 48
//! columns in 24 zmm accumulators.
//!
//! `VPDPBUSD` multiplies unsigned by signed bytes. Signed activations are shifted by 128
//! (`a + 128`, zero point too) and unsigned weights by −128, which changes no difference
//! `a − a₀` or `b − b₀`. The zero points are taken out afterwards:
//! `Σ(a − a₀)(b − b₀) = Σab − a₀·Σ_k b − b₀·Σ_k a + K·a₀·b₀`, with `Σ_k b` per column counted
//! when packing and `Σ_k a` per row only when some `b₀` is not zero. Every step is exact
//! (wrapping `i32` arithmetic whose result is the true sum), so the product equals tract's
//! bit for bit and the `f32` epilogue rounds as `Cast → Mul → Add` do.
//!
//! Three kernels, picked at run time ([`kernel_name`]): AMX (`TDPBUSD` on tiles, reading the
//! same packed panels with a stride; see `amx`), AVX-512 VNNI, and AVX2 (`VPMADDWD` on
//! bytes widened in registers, exact; or `VPMADDUBSW` on the bytes themselves where no pair
//! of weights can overflow it, the few pairs that could split off when packing:
//! [`PackedWeights::split_pairs`]; see `avx2`), which replaces tract's AVX2 int8 kernel
//! (one byte broadcast, widened and multiplied per `k`: ~2 multiply-adds per instruction).
//! [`available`] says whether either runs; other CPUs (ARM's `sdot`) keep tract's products.
//! The portable path here is the reference the tests compare both kernels with.

/// Columns in a panel (three 16-lane vectors).
const NR: usize = 48;
/// Rows in a tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 8;
/// [`PackedWeights::split_pairs`] runs on the AVX2 kernel's CPUs when it cuts at most one
/// weight in this many: each cut costs a scalar multiply-add per row, ~4 cycles on a Zen 3,
/// against ~0.015 saved per weight and row by the byte kernel, so about break-even here.
const SPLIT_PER: usize = 256;

/// The constant right-hand side of an int8 product, packed for [`matmul`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of 4, over 4.
    k4: usize,
    /// Panel after panel, each `k4` steps of `NR` columns of 4 bytes; zero padded.
    panels: Vec<i8>,
    /// `Σ_k b` per column, in the signed domain.
    colsum: Vec<i32>,
    /// `b₀` per column, in the signed domain.
    zero: Vec<i32>,
    /// Every packed byte in `−64..=64` ([`PackedWeights::narrow`]).
    narrow: bool,
    /// Every pair the AVX2 byte kernel multiplies together within 128 in total magnitude
    /// ([`PackedWeights::bytes`]), or `saturating`.
    bytes: bool,
    /// Multiplied as bytes by the AVX2 kernel whatever their size, each pair's sum saturated to
    /// 16 bits ([`Sums::Saturating`]).
    saturating: bool,
    /// What [`PackedWeights::split_pairs`] took out of the panels, panel after panel.
    residuals: Vec<Residual>,
    /// Where each panel's residuals start in `residuals`, and where the last ends; empty when
    /// nothing was split.
    residual_at: Vec<usize>,
}

/// A part of one weight that the panels leave out ([`PackedWeights::split_pairs`]): `e ·
/// a[k]` belongs to the sum of column `col` of its panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Residual {
    k: u32,
    col: u32,
    e: i16,
}

/// The weights' values as the file stores them, row-major `[K, N]`.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// `int8` weights.
    I8(&'a [i8]),
    /// `uint8` weights.
    U8(&'a [u8]),
}

/// The activations of one product, row-major `[M, K]`, and their zero point.
#[derive(Clone, Copy, Debug)]
pub enum Activations<'a> {
    /// `uint8` activations (dynamic quantisation).
    U8(&'a [u8], u8),
    /// `int8` activations (QDQ files' static quantisation).
    I8(&'a [i8], i8),
}

impl Activations<'_> {
    fn len(&self) -> usize {
        match self {
            Activations::U8(a, _) => a.len(),
            Activations::I8(a, _) => a.len(),
        }
    }

    /// The zero point in the unsigned domain.
    fn zero(&self) -> i32 {
        match self {
            Activations::U8(_, z) => *z as i32,
            Activations::I8(_, z) => *z as i32 + 128,
        }
    }
}

/// What becomes of the exact sums.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// `f32(c) · scale + bias[n]` (no bias: `+ 0` is skipped), rounded as the separate
    /// operations are: the dynamic-int8 pattern.
    Scale {
        /// One scale for the whole product.
        scale: f32,
        /// One value per column, if any.
        bias: Option<&'a [f32]>,
    },
    /// `f32(c) · scales[n]`: the QDQ pattern (the model's QDQ products).
    Columns(&'a [f32]),
    /// `f32(c) · scales[n] + bias[n]`: a per-channel dynamic-int8 product, whose scales (the
    /// activations' times each column's) are computed at run time.
    ColumnsBias {
        /// One scale per column.
        scales: &'a [f32],
        /// One value per column.
        bias: &'a [f32],
    },
}

/// How the AVX2 kernel sums the products of 8-bit signed weights ([`PackedWeights::with_sums`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sums {
    /// The exact sums, on every kernel.
    #[default]
    Exact,
    /// On the AVX2 kernel, signed weights are multiplied as bytes whatever their size:
    /// `VPMADDUBSW` saturates the sum of each pair of products (two consecutive `k` of a column)
    /// to 16 bits, as onnxruntime's AVX2 `U8S8` kernel (MLAS: `VPMADDUBSW`, `VPMADDWD` by ones,
    /// `VPADDD`) does; its numbers, not the exact ones, at the byte kernel's speed (~1.3x the
    /// widened one on weights spread over the whole byte). Unsigned weights (which onnxruntime
    /// multiplies exactly on AVX2 too), 7-bit ones, and the other kernels stay exact.
    Saturating,
}

/// The int8 kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// the x86 kernels are never chosen on other CPUs
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Kernel {
    /// `TDPBUSD` on AMX tiles (Sapphire Rapids and later Xeons): 16x64 bytes by 16x16.
    Amx,
    /// `VPDPBUSD` on zmm registers (AVX-512 VNNI).
    Vnni,
    /// `VPMADDWD` on ymm registers (AVX2): the bytes widened to 16 bits in registers.
    Avx2,
    /// One multiply-add at a time (the reference; other CPUs leave the products to tract).
    Portable,
}

/// The best kernel this CPU has, unless `DINOEDGE_KERNELS` caps dinoedge's loops
/// (`baseline`: none; `avx2`: no AVX-512; `vnni`: no AMX).
fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let cap = std::env::var("DINOEDGE_KERNELS").unwrap_or_default();
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            let vnni = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            match cap.as_str() {
                "baseline" => Kernel::Portable,
                "avx2" if avx2 => Kernel::Avx2,
                "avx2" => Kernel::Portable,
                "vnni" | "avx512" if vnni => Kernel::Vnni,
                // AMX asks the kernel for the tiles' state (once): only when it is to be used
                _ if vnni && amx::usable() => Kernel::Amx,
                _ if vnni => Kernel::Vnni,
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

/// Whether a fast kernel can run on this CPU (x86-64 with AMX, AVX-512 VNNI or AVX2; not when
/// `DINOEDGE_KERNELS=baseline`).
pub fn available() -> bool {
    kernel() != Kernel::Portable
}

/// The int8 kernel in use, for reports: `amx`, `vnni`, `avx2` or `portable`.
pub fn kernel_name() -> &'static str {
    match kernel() {
        Kernel::Amx => "amx",
        Kernel::Vnni => "vnni",
        Kernel::Avx2 => "avx2",
        Kernel::Portable => "portable",
    }
}

/// Why a product cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

impl PackedWeights {
    /// Pack `[K, N]` weights with one zero point (`zero.len() == 1`) or one per column, for
    /// exact sums.
    pub fn new(b: Weights, k: usize, n: usize, zero: &[i32]) -> Result<Self, ShapeError> {
        Self::with_sums(b, k, n, zero, Sums::Exact)
    }

    /// [`PackedWeights::new`], summed as `sums` says where the AVX2 kernel runs.
    pub fn with_sums(
        b: Weights,
        k: usize,
        n: usize,
        zero: &[i32],
        sums: Sums,
    ) -> Result<Self, ShapeError> {
        let len = match b {
            Weights::I8(b) => b.len(),
            Weights::U8(b) => b.len(),
        };
        if k == 0 || n == 0 || len != k * n {
            return Err(ShapeError(format!("{len} weights for [{k}, {n}]")));
        }
        if zero.len() != 1 && zero.len() != n {
            return Err(ShapeError(format!(
                "{} weight zero points for {n} columns",
                zero.len()
            )));
        }
        // uint8 weights of 7 bits (`0..=127`, onnxruntime's `reduce_range`) are shifted into
        // `−64..=63`, where the AVX2 kernel multiplies them as bytes; others by −128
        let (shift, range) = match b {
            Weights::I8(_) => (0, -128..=127),
            Weights::U8(b) if b.iter().all(|v| *v <= 127) => (64, 0..=255),
            Weights::U8(_) => (128, 0..=255),
        };
        if let Some(z) = zero.iter().find(|z| !range.contains(*z)) {
            return Err(ShapeError(format!("weight zero point {z} out of range")));
        }
        let value = |i: usize| -> i8 {
            match b {
                Weights::I8(b) => b[i],
                Weights::U8(b) => (b[i] as i32 - shift) as i8,
            }
        };
        let k4 = k.div_ceil(4);
        let panels_n = n.div_ceil(NR);
        let mut panels = vec![0i8; panels_n * k4 * NR * 4];
        let mut colsum = vec![0i32; n];
        for kk in 0..k {
            for (c, sum) in colsum.iter_mut().enumerate() {
                let v = value(kk * n + c);
                *sum += v as i32;
                let (p, col) = (c / NR, c % NR);
                panels[((p * k4 + kk / 4) * NR + col) * 4 + kk % 4] = v;
            }
        }
        let zero = (0..n)
            .map(|c| zero[if zero.len() == 1 { 0 } else { c }] - shift)
            .collect();
        let narrow = narrow(&panels);
        let mut packed = PackedWeights {
            k,
            n,
            k4,
            narrow,
            bytes: narrow,
            saturating: false,
            panels,
            colsum,
            zero,
            residuals: Vec::new(),
            residual_at: Vec::new(),
        };
        if !narrow && kernel() == Kernel::Avx2 {
            if sums == Sums::Saturating && matches!(b, Weights::I8(_)) {
                packed.saturate();
            } else {
                packed.split_pairs(k * n / SPLIT_PER);
            }
        }
        Ok(packed)
    }

    /// Let the AVX2 kernel multiply every pair as bytes, saturating ([`Sums::Saturating`]);
    /// nothing is split. The other kernels ignore it (they are exact).
    fn saturate(&mut self) {
        if !self.bytes {
            self.bytes = true;
            self.saturating = true;
        }
    }

    /// Make the panels exact for the AVX2 byte kernel ([`PackedWeights::bytes`]) by taking a
    /// little out of the few pairs that are not: in each pair `VPMADDUBSW` multiplies together
    /// (`k = 2j, 2j + 1` of one column) whose magnitudes add up to more than 128, the larger
    /// is cut to `128 − |other|` and the rest kept aside, to be multiplied by its activation
    /// and added to the column's sum after the tile (`PackedWeights::restore`). The sums
    /// stay exact. Nothing changes (false) when more than `limit` pairs would be cut: the
    /// widened kernel is then the faster. Weights quantised from a bell-shaped distribution
    /// (trained ones; per-tensor scales put the largest at ±127, several deviations out)
    /// have a few such pairs in a thousand; uniform or tightly truncated ones have many.
    pub fn split_pairs(&mut self, limit: usize) -> bool {
        let over = |p: &[i8]| p[0].unsigned_abs() as u32 + p[1].unsigned_abs() as u32 > 128;
        if self.bytes {
            return true;
        }
        match self.panels.chunks_exact(2).filter(|p| over(p)).count() {
            0 => {
                self.bytes = true;
                return true;
            }
            cuts if cuts > limit => return false,
            _ => {}
        }
        let panel_len = self.k4 * NR * 4;
        let mut at = Vec::with_capacity(self.panels.len() / panel_len + 1);
        let mut residuals = Vec::new();
        for panel in self.panels.chunks_exact_mut(panel_len) {
            at.push(residuals.len());
            for (j, pair) in panel.chunks_exact_mut(2).enumerate() {
                if !over(pair) {
                    continue;
                }
                let big = usize::from(pair[1].unsigned_abs() > pair[0].unsigned_abs());
                let (v, other) = (pair[big] as i32, pair[1 - big].unsigned_abs() as i32);
                // |kept| + |other| = 128, and |kept| < |v|: in i8 (−128 only when other is 0)
                let kept = v.signum() * (128 - other);
                pair[big] = kept as i8;
                // the byte's place in the panel: ((step · NR) + column) · 4 + k % 4
                let i = 2 * j + big;
                residuals.push(Residual {
                    k: (i / (NR * 4) * 4 + i % 4) as u32,
                    col: (i / 4 % NR) as u32,
                    e: (v - kept) as i16,
                });
            }
        }
        at.push(residuals.len());
        self.residuals = residuals;
        self.residual_at = at;
        self.bytes = true;
        true
    }

    /// `store` with what [`PackedWeights::split_pairs`] took out of a panel added back to
    /// each row's sums (`a`: the activations the tiles were computed from, rows of
    /// [`PackedWeights::padded_k`]); `store` itself where nothing was.
    fn restore<'s, S: Fn(usize, usize, &[i32]) + 's>(
        &'s self,
        a: &'s [u8],
        store: S,
    ) -> impl Fn(usize, usize, &[i32]) + 's {
        let lda = 4 * self.k4;
        move |row, c0, dots| {
            let p = c0 / NR;
            let parts = match self.residual_at.get(p..p + 2) {
                Some(&[start, end]) if start < end => &self.residuals[start..end],
                _ => return store(row, c0, dots),
            };
            let mut sums = [0i32; NR];
            let sums = &mut sums[..dots.len()];
            sums.copy_from_slice(dots);
            let x = &a[row * lda..][..lda];
            for r in parts {
                let s = &mut sums[r.col as usize];
                *s = s.wrapping_add(i32::from(r.e) * i32::from(x[r.k as usize]));
            }
            store(row, c0, sums)
        }
    }

    /// `K` (the shared dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// `N` (the output's columns).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Pack signed weights given column by column (`bt`: `[N, K]` row-major, each column's
    /// `K` values together, as attention's keys lie), with zero points of 0. The same
    /// packing as [`PackedWeights::new`] of the transpose, in a copy of 4 bytes at a time.
    pub fn from_columns(bt: &[i8], k: usize, n: usize) -> Result<Self, ShapeError> {
        if k == 0 || n == 0 || bt.len() != k * n {
            return Err(ShapeError(format!("{} weights for [{k}, {n}]", bt.len())));
        }
        let k4 = k.div_ceil(4);
        let mut panels = vec![0i8; n.div_ceil(NR) * k4 * NR * 4];
        let mut colsum = vec![0i32; n];
        for (c, (src, sum)) in bt.chunks_exact(k).zip(colsum.iter_mut()).enumerate() {
            *sum = src.iter().map(|v| *v as i32).sum();
            let base = (c / NR) * k4 * NR + c % NR;
            let mut quads = src.chunks_exact(4);
            // whole quads as fixed-size copies (a variable-length one is a call to memcpy)
            for (step, quad) in (&mut quads).enumerate() {
                let at = (base + step * NR) * 4;
                panels[at..at + 4].copy_from_slice(quad);
            }
            let rest = quads.remainder();
            if !rest.is_empty() {
                let at = (base + (k / 4) * NR) * 4;
                panels[at..at + rest.len()].copy_from_slice(rest);
            }
        }
        Ok(PackedWeights {
            k,
            n,
            k4,
            // attention's keys and values, each key or column scaled to ±127: never 7-bit,
            // so not scanned for it at every run
            narrow: false,
            bytes: false,
            saturating: false,
            panels,
            colsum,
            zero: vec![0; n],
            residuals: Vec::new(),
            residual_at: Vec::new(),
        })
    }

    /// Pack signed `[K, N]` weights given row by row, with zero points of 0: the same packing
    /// as [`PackedWeights::new`], four rows at a time (attention's values, one key per row).
    pub fn from_rows(b: &[i8], k: usize, n: usize) -> Result<Self, ShapeError> {
        if k == 0 || n == 0 || b.len() != k * n {
            return Err(ShapeError(format!("{} weights for [{k}, {n}]", b.len())));
        }
        let k4 = k.div_ceil(4);
        let panels_n = n.div_ceil(NR);
        let mut panels = vec![0i8; panels_n * k4 * NR * 4];
        let mut colsum = vec![0i32; n];
        for row in b.chunks_exact(n) {
            for (sum, v) in colsum.iter_mut().zip(row) {
                *sum += *v as i32;
            }
        }
        // four rows interleaved a byte at a time, a whole panel of fixed length at once (so the
        // loop compiles to shuffles), then the last panel's columns
        let full = n / NR;
        for step in 0..k / 4 {
            let rows: [&[i8]; 4] = std::array::from_fn(|i| &b[(4 * step + i) * n..][..n]);
            for p in 0..full {
                let dst: &mut [i8; NR * 4] = (&mut panels[(p * k4 + step) * NR * 4..][..NR * 4])
                    .try_into()
                    .expect("a panel step is NR·4 bytes");
                let src: [&[i8; NR]; 4] = std::array::from_fn(|i| {
                    rows[i][p * NR..][..NR]
                        .try_into()
                        .expect("a panel is NR columns")
                });
                for col in 0..NR {
                    for i in 0..4 {
                        dst[col * 4 + i] = src[i][col];
                    }
                }
            }
            let last = &mut panels[(full * k4 + step) * NR * 4..][..(n - full * NR) * 4];
            for (col, quad) in last.chunks_exact_mut(4).enumerate() {
                for (q, r) in quad.iter_mut().zip(&rows) {
                    *q = r[full * NR + col];
                }
            }
        }
        // the last rows, fewer than four
        for step in k / 4..k4 {
            let row = |i: usize| b.get((4 * step + i) * n..(4 * step + i + 1) * n);
            let rows: [&[i8]; 4] = [row(0), row(1), row(2), row(3)].map(|r| r.unwrap_or(&[]));
            for p in 0..panels_n {
                let dst = &mut panels[(p * k4 + step) * NR * 4..][..NR * 4];
                for (col, quad) in dst.chunks_exact_mut(4).enumerate() {
                    let c = p * NR + col;
                    if c >= n {
                        break;
                    }
                    for (q, r) in quad.iter_mut().zip(&rows) {
                        if let Some(v) = r.get(c) {
                            *q = *v;
                        }
                    }
                }
            }
        }
        Ok(PackedWeights {
            k,
            n,
            k4,
            // attention's keys and values, each key or column scaled to ±127: never 7-bit,
            // so not scanned for it at every run
            narrow: false,
            bytes: false,
            saturating: false,
            panels,
            colsum,
            zero: vec![0; n],
            residuals: Vec::new(),
            residual_at: Vec::new(),
        })
    }

    /// `4·⌈K/4⌉`: the row length [`dots_each`] reads activations with.
    pub fn padded_k(&self) -> usize {
        4 * self.k4
    }

    /// `Σ_k b` per column (the weights as signed bytes).
    pub fn column_sums(&self) -> &[i32] {
        &self.colsum
    }

    /// Whether the weights are 7-bit ones: every value, as packed, in `−64..=64` (int8 weights
    /// quantised with onnxruntime's `reduce_range`, or uint8 ones in `0..=127`, shifted by
    /// −64). Two of them times two unsigned bytes cannot leave 16 bits, so the AVX2 kernel
    /// multiplies them as bytes (`VPMADDUBSW`), exactly, ~1.3x faster than widened. Checked
    /// by [`PackedWeights::new`]; the packings of attention's operands say no without looking.
    pub fn narrow(&self) -> bool {
        self.narrow
    }

    /// Whether the AVX2 kernel multiplies these weights as bytes (`VPMADDUBSW`, exact): 7-bit
    /// ones ([`PackedWeights::narrow`]), or 8-bit ones whose few pairs beyond its range are
    /// split ([`PackedWeights::split_pairs`], done when packing on a CPU that runs the AVX2
    /// kernel); or any signed ones, not exact, with [`Sums::Saturating`].
    pub fn bytes(&self) -> bool {
        self.bytes
    }

    /// How many weights [`PackedWeights::split_pairs`] cut (0 where nothing was split).
    pub fn split(&self) -> usize {
        self.residuals.len()
    }

    /// Whether the AVX2 kernel saturates these weights' pair sums ([`Sums::Saturating`]).
    pub fn saturating(&self) -> bool {
        self.saturating
    }

    fn zero_is_zero(&self) -> bool {
        self.zero.iter().all(|z| *z == 0)
    }

    /// `K·a₀·b₀ − a₀·Σb` per column, for activations' zero point `za` (unsigned domain).
    fn column_terms(&self, za: i32) -> Vec<i32> {
        (0..self.n)
            .map(|c| {
                (self.k as i32)
                    .wrapping_mul(za)
                    .wrapping_mul(self.zero[c])
                    .wrapping_sub(za.wrapping_mul(self.colsum[c]))
            })
            .collect()
    }
}

/// Whether every packed byte lies in `−64..=64`.
fn narrow(panels: &[i8]) -> bool {
    panels.iter().fold(0u8, |m, v| m.max(v.unsigned_abs())) <= 64
}

/// The activations of rows `r0..r1` as unsigned bytes with rows of `4·k4` (a view when they
/// already are, else a copy), and `Σ_k a` per row when `sums`.
fn prepared<'a>(
    a: &'a Activations,
    k: usize,
    k4: usize,
    rows: std::ops::Range<usize>,
    sums: bool,
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], Vec<i32>) {
    let lda = 4 * k4;
    let view: &[u8] = match a {
        Activations::U8(a, _) if lda == k => &a[rows.start * k..rows.end * k],
        _ => {
            scratch.clear();
            scratch.resize(rows.len() * lda, 0);
            for (r, dst) in rows.clone().zip(scratch.chunks_exact_mut(lda)) {
                match a {
                    Activations::U8(a, _) => dst[..k].copy_from_slice(&a[r * k..(r + 1) * k]),
                    Activations::I8(a, _) => {
                        for (d, s) in dst[..k].iter_mut().zip(&a[r * k..(r + 1) * k]) {
                            *d = (*s as u8) ^ 0x80;
                        }
                    }
                }
            }
            scratch
        }
    };
    let row_sums = if sums {
        view.chunks_exact(lda)
            .map(|row| row.iter().map(|v| *v as i32).sum())
            .collect()
    } else {
        Vec::new()
    };
    (view, row_sums)
}

/// The `f32` product of `a` (`[M, K]`) and `b` into `out` (`[M, N]`), split by column panels
/// over the backbone's threads (tract's executor; inline on one thread).
pub fn matmul(
    a: &Activations,
    b: &PackedWeights,
    epilogue: &Epilogue,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    matmul_then(a, b, epilogue, &|_, _| {}, out)
}

/// [`matmul`], then `then(c0, xs)` on the output, element-wise: on each thread's columns of
/// each row (`xs`, whose first value is in column `c0`) as soon as that thread's tiles are done
/// (while they are in its cache, and no second pass over the whole output): a step fused into
/// the product, such as a QDQ file's requantisation of the product's output and its bias.
pub fn matmul_then(
    a: &Activations,
    b: &PackedWeights,
    epilogue: &Epilogue,
    then: &(dyn Fn(usize, &mut [f32]) + Sync),
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (k, n) = (b.k, b.n);
    let m = a.len() / k;
    if !a.len().is_multiple_of(k) || out.len() != m * n {
        return Err(ShapeError(format!(
            "{} activations and {} outputs for K {k}, N {n}",
            a.len(),
            out.len()
        )));
    }
    let lens = match epilogue {
        Epilogue::Scale { bias, .. } => [bias.map_or(n, |b| b.len()), n],
        Epilogue::Columns(v) => [v.len(), n],
        Epilogue::ColumnsBias { scales, bias } => [scales.len(), bias.len()],
    };
    if let Some(len) = lens.iter().find(|len| **len != n) {
        return Err(ShapeError(format!("{len} epilogue values for {n} columns")));
    }
    let terms = b.column_terms(a.zero());
    let sums = !b.zero_is_zero();
    let mut scratch = Vec::new();
    let (a_rows, row_sums) = prepared(a, k, b.k4, 0..m, sums, &mut scratch);
    let out = SharedRows::new(out);
    // the AVX-512 epilogue wherever the int8 kernel is an AVX-512 one (AMX CPUs have it too)
    let wide = matches!(kernel(), Kernel::Amx | Kernel::Vnni);
    let avx2 = kernel() == Kernel::Avx2;
    let store = |row: usize, c0: usize, dots: &[i32]| {
        // SAFETY: `par_panels` hands each panel's columns to one call alone.
        let dst = unsafe { out.segment(row * n + c0, dots.len()) };
        let cols = c0..c0 + dots.len();
        let (scale, scales, bias) = match epilogue {
            Epilogue::Scale { scale, bias } => (*scale, None, bias.map(|b| &b[cols.clone()])),
            Epilogue::Columns(scales) => (1.0, Some(&scales[cols.clone()]), None),
            Epilogue::ColumnsBias { scales, bias } => {
                (1.0, Some(&scales[cols.clone()]), Some(&bias[cols.clone()]))
            }
        };
        let row = Row {
            dots,
            terms: &terms[cols.clone()],
            zero: &b.zero[cols],
            row_sum: if sums { row_sums[row] } else { 0 },
            scale,
            scales,
            bias,
        };
        row.finish_here(wide, avx2, dst);
    };
    // `then` over the columns of `panels`, every row
    let then_each_row = |panels: std::ops::Range<usize>| {
        let (c0, c1) = (panels.start * NR, (panels.end * NR).min(n));
        for row in 0..m {
            // SAFETY: `par_panels` hands each panel's columns to one call alone.
            then(c0, unsafe { out.segment(row * n + c0, c1 - c0) });
        }
    };
    #[cfg(target_arch = "x86_64")]
    if avx2 && !b.bytes {
        // the activations widened once here, not by every thread for every chunk of panels,
        // into this thread's buffer (no allocation per product)
        let mut wide = avx2::WIDE.take();
        // SAFETY: the CPU has AVX2 (checked by `kernel`).
        let words = unsafe { avx2::widen(a_rows, &mut wide) };
        // (widened weights were not split: nothing to add back)
        debug_assert!(b.residuals.is_empty());
        let done = par_panels(n.div_ceil(NR), m * n * k, |panels| {
            // SAFETY: as above; `words` are `a_rows` widened.
            unsafe { avx2::tiles_widened(words, b, panels.clone(), store) };
            then_each_row(panels);
        });
        avx2::WIDE.set(wide);
        return done;
    }
    par_panels(n.div_ceil(NR), m * n * k, |panels| {
        tiles(a_rows, b, panels.clone(), store);
        then_each_row(panels);
    })
}

/// One row segment's epilogue: `f32(dots + terms − zero·row_sum)` (the exact sums, wrapping
/// `i32`) times `scale` or `scales[i]`, plus `bias[i]`, rounded as `Cast → Mul → Add` round
/// (two roundings, no fused multiply-add). Every slice is as long as the segment.
struct Row<'a> {
    dots: &'a [i32],
    terms: &'a [i32],
    zero: &'a [i32],
    row_sum: i32,
    scale: f32,
    scales: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
}

impl Row<'_> {
    /// The reference, one value at a time.
    fn finish(&self, dst: &mut [f32]) {
        self.finish_from(0, dst)
    }

    /// [`Row::finish`] on the widest code this CPU has (`wide`: AVX-512F, as the VNNI and AMX
    /// kernels are chosen only then; `avx2`: AVX2, as the AVX2 kernel is); all bit for bit.
    fn finish_here(&self, wide: bool, avx2: bool, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: `wide` only where the CPU has AVX-512F; every slice of `self` is as
            // long as `dst` (checked by `matmul_then`).
            unsafe { self.finish_avx512(dst) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` only where the CPU has AVX2; as above.
            unsafe { self.finish_avx2(dst) };
            return;
        }
        let _ = (wide, avx2);
        self.finish(dst);
    }

    /// [`Row::finish`] from value `start` on.
    fn finish_from(&self, start: usize, dst: &mut [f32]) {
        for (i, d) in dst.iter_mut().enumerate().skip(start) {
            let exact = self.dots[i]
                .wrapping_add(self.terms[i])
                .wrapping_sub(self.zero[i].wrapping_mul(self.row_sum));
            let scaled = exact as f32 * self.scales.map_or(self.scale, |s| s[i]);
            *d = match self.bias {
                Some(b) => scaled + b[i],
                None => scaled,
            };
        }
    }

    /// The same, 16 lanes at a time (the last ones masked); bit for bit the reference's.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_avx512(&self, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let len = dst.len();
        assert!(self.dots.len() >= len && self.terms.len() >= len && self.zero.len() >= len);
        assert!(self.scales.is_none_or(|s| s.len() >= len));
        assert!(self.bias.is_none_or(|b| b.len() >= len));
        let row_sum = _mm512_set1_epi32(self.row_sum);
        let scale = _mm512_set1_ps(self.scale);
        for i in (0..len).step_by(16) {
            let mask: __mmask16 = if len - i >= 16 {
                0xffff
            } else {
                (1u16 << (len - i)) - 1
            };
            // SAFETY: lanes past `len` are masked off (no access); every slice holds `len`.
            unsafe {
                let d = _mm512_maskz_loadu_epi32(mask, self.dots.as_ptr().add(i));
                let t = _mm512_maskz_loadu_epi32(mask, self.terms.as_ptr().add(i));
                let z = _mm512_maskz_loadu_epi32(mask, self.zero.as_ptr().add(i));
                let exact =
                    _mm512_sub_epi32(_mm512_add_epi32(d, t), _mm512_mullo_epi32(z, row_sum));
                let s = match self.scales {
                    Some(s) => _mm512_maskz_loadu_ps(mask, s.as_ptr().add(i)),
                    None => scale,
                };
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), s);
                if let Some(b) = self.bias {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)));
                }
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask, v);
            }
        }
    }
}

impl Row<'_> {
    /// [`Row::finish`] 8 lanes at a time, the last values by the reference; bit for bit the
    /// reference's.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn finish_avx2(&self, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let len = dst.len();
        assert!(self.dots.len() >= len && self.terms.len() >= len && self.zero.len() >= len);
        assert!(self.scales.is_none_or(|s| s.len() >= len));
        assert!(self.bias.is_none_or(|b| b.len() >= len));
        let row_sum = _mm256_set1_epi32(self.row_sum);
        let scale = _mm256_set1_ps(self.scale);
        let whole = len - len % 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 ≤ len`, and every slice holds `len` values.
            unsafe {
                let d = _mm256_loadu_si256(self.dots.as_ptr().add(i) as *const __m256i);
                let t = _mm256_loadu_si256(self.terms.as_ptr().add(i) as *const __m256i);
                let z = _mm256_loadu_si256(self.zero.as_ptr().add(i) as *const __m256i);
                let exact =
                    _mm256_sub_epi32(_mm256_add_epi32(d, t), _mm256_mullo_epi32(z, row_sum));
                let s = match self.scales {
                    Some(s) => _mm256_loadu_ps(s.as_ptr().add(i)),
                    None => scale,
                };
                let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(exact), s);
                if let Some(b) = self.bias {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(b.as_ptr().add(i)));
                }
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            }
        }
        if whole < len {
            self.finish_from(whole, dst);
        }
    }
}

/// An output written by several threads, each through its own part (columns of a product, or
/// each task's rows of attention).
pub struct SharedRows {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: writes go through `segment`, whose callers write disjoint ranges.
unsafe impl Send for SharedRows {}
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// Shares `out` between the threads of one product.
    pub fn new(out: &mut [f32]) -> Self {
        SharedRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// `len` values from `start`.
    ///
    /// # Safety
    /// No other live reference may overlap the range (each thread writes its own panels).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn segment(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "segment out of the output");
        // SAFETY: in bounds (checked), and not aliased (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// `work(panels)` over disjoint runs of `0..panels` on tract's executor (`macs` decides whether
/// threads are worth it). Column panels, not rows: each thread keeps its weight panel in its
/// own L2 while the activations, shared by all, stream.
pub(crate) fn par_panels(
    panels: usize,
    macs: usize,
    work: impl Fn(std::ops::Range<usize>) + Sync + Send,
) -> Result<(), ShapeError> {
    let mut ids = vec![0u8; panels];
    tract_linalg::multithread::par_chunks_mut(&mut ids, 1, macs, |p0, chunk| {
        work(p0..p0 + chunk.len());
        Ok(())
    })
    .map_err(|e| ShapeError(format!("{e}")))
}

/// The raw dot products `Σ_k a·b` of unsigned activations (rows of
/// [`PackedWeights::padded_k`], zero padded) and signed weights (zero points ignored), on this
/// thread, handed to `store(row, first column, sums)` a row segment of up to 48 columns at a
/// time, each (row, column) once: for callers that split the work and apply their own
/// epilogue as the sums come out of the tiles (the products of the model's fused attention).
pub fn dots_each(
    a: &[u8],
    b: &PackedWeights,
    store: impl Fn(usize, usize, &[i32]),
) -> Result<(), ShapeError> {
    let lda = b.padded_k();
    if !a.len().is_multiple_of(lda) {
        return Err(ShapeError(format!(
            "{} activations for rows of {lda}",
            a.len()
        )));
    }
    tiles(a, b, 0..b.n.div_ceil(NR), store);
    Ok(())
}

/// Every tile's dot products `Σ a·b` (unsigned by signed) in `panels`, handed to
/// `store(row, first column, values)` a row segment at a time, with what
/// [`PackedWeights::split_pairs`] took out of the panels added back.
fn tiles(
    a: &[u8],
    b: &PackedWeights,
    panels: std::ops::Range<usize>,
    store: impl Fn(usize, usize, &[i32]),
) {
    match kernel() {
        // SAFETY: the CPU has AMX-TILE and AMX-INT8, and this process may use them (checked by
        // `kernel`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => unsafe { amx::tiles(a, b, panels, b.restore(a, store)) },
        // SAFETY: the CPU has AVX-512F, BW and VNNI (checked by `kernel`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => unsafe { vnni::tiles(a, b, panels, b.restore(a, store)) },
        // SAFETY: the CPU has AVX2 (checked by `kernel`); it adds the parts back itself, a
        // block of rows at a time.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::tiles(a, b, panels, store) },
        _ => portable_tiles(a, b, panels, b.restore(a, store)),
    }
}

/// The reference: the same tiles, one multiply-add at a time.
fn portable_tiles(
    a: &[u8],
    b: &PackedWeights,
    panels: std::ops::Range<usize>,
    store: impl Fn(usize, usize, &[i32]),
) {
    let lda = 4 * b.k4;
    let m = a.len() / lda;
    let mut dots = [0i32; NR];
    for p in panels {
        let cols = NR.min(b.n - p * NR);
        let panel = &b.panels[p * b.k4 * NR * 4..(p + 1) * b.k4 * NR * 4];
        for r in 0..m {
            let row = &a[r * lda..(r + 1) * lda];
            dots.fill(0);
            for kk in 0..b.k4 {
                for (c, d) in dots.iter_mut().enumerate().take(cols) {
                    for j in 0..4 {
                        *d += row[kk * 4 + j] as i32 * panel[(kk * NR + c) * 4 + j] as i32;
                    }
                }
            }
            store(r, p * NR, &dots[..cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{MR, NR, PackedWeights};
    use std::arch::x86_64::*;

    /// One tile of `R` rows: the dot products of rows `a` (stride `lda`) with one panel.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const R: usize>(
        k4: usize,
        a: *const u8,
        lda: usize,
        panel: *const i8,
        out: &mut [[i32; NR]; MR],
    ) {
        let mut acc = [[_mm512_setzero_si512(); 3]; R];
        for kk in 0..k4 {
            // SAFETY: the panel holds k4 steps of NR·4 bytes; each row has lda ≥ 4·k4 bytes.
            unsafe {
                let bp = panel.add(kk * NR * 4);
                let b0 = _mm512_loadu_si512(bp as *const __m512i);
                let b1 = _mm512_loadu_si512(bp.add(64) as *const __m512i);
                let b2 = _mm512_loadu_si512(bp.add(128) as *const __m512i);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = (a.add(r * lda + kk * 4) as *const i32).read_unaligned();
                    let x = _mm512_set1_epi32(x);
                    acc[0] = _mm512_dpbusd_epi32(acc[0], x, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], x, b1);
                    acc[2] = _mm512_dpbusd_epi32(acc[2], x, b2);
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `out` holds 3 vectors of 16.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(16 * v) as *mut __m512i, *acc) };
            }
        }
    }

    /// [`super::tiles`] with the VNNI kernel: panel after panel, every row block of [`MR`]
    /// for each (the panel stays in L2 while the activations stream).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tiles(
        a: &[u8],
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
    ) {
        let lda = 4 * b.k4;
        let m = a.len() / lda;
        let mut out = [[0i32; NR]; MR];
        let panel_len = b.k4 * NR * 4;
        for p in panels {
            let panel = b.panels[p * panel_len..].as_ptr();
            let cols = NR.min(b.n - p * NR);
            for r0 in (0..m).step_by(MR) {
                let rows = MR.min(m - r0);
                let ap = a[r0 * lda..].as_ptr();
                // SAFETY: `rows` rows of `lda` from `ap`, one whole panel from `panel`.
                unsafe {
                    match rows {
                        8 => tile::<8>(b.k4, ap, lda, panel, &mut out),
                        7 => tile::<7>(b.k4, ap, lda, panel, &mut out),
                        6 => tile::<6>(b.k4, ap, lda, panel, &mut out),
                        5 => tile::<5>(b.k4, ap, lda, panel, &mut out),
                        4 => tile::<4>(b.k4, ap, lda, panel, &mut out),
                        3 => tile::<3>(b.k4, ap, lda, panel, &mut out),
                        2 => tile::<2>(b.k4, ap, lda, panel, &mut out),
                        _ => tile::<1>(b.k4, ap, lda, panel, &mut out),
                    }
                }
                for (r, dots) in out.iter().enumerate().take(rows) {
                    store(r0 + r, p * NR, &dots[..cols]);
                }
            }
        }
    }
}

/// The AMX kernel (Intel Sapphire Rapids and later): `TDPBUSD` multiplies a tile of 16 rows of
/// 64 unsigned bytes by a tile of 16 rows of 64 signed bytes (16 `k`-quads of 16 columns, the
/// layout of one step of a packed panel) into 16x16 `i32` sums, 16,384 multiply-adds per
/// instruction, exact like `VPDPBUSD`. A block is 16 rows by one panel of 48 columns: three
/// accumulator tiles (`tmm0`–`tmm2`), one of activations (`tmm4`) and three of weights
/// (`tmm5`–`tmm7`), the weights read straight from the panel with its stride of `NR·4`
/// bytes. `K` goes 64 bytes at a time; a last partial step, and a last block of fewer than 16
/// rows, are copied into zero-padded buffers first (zeros add nothing to the sums).
///
/// The tile instructions are written with `asm!` (Rust's AMX intrinsics are unstable); no code
/// but this module's touches the tile registers. Linux gives a process the tiles' 8 KiB of
/// state only when it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, [`usable`]), and each thread
/// loads the tile configuration itself and releases the tiles when it is done, so a context
/// switch outside a product saves no tile data.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{NR, PackedWeights};
    use std::arch::asm;

    /// Rows of activations in a tile.
    const ROWS: usize = 16;
    /// `k` steps of 4 bytes in a tile (64 bytes of a row).
    const STEPS: usize = 16;
    /// Bytes of one packed panel step (`NR` columns of 4 bytes).
    const PANEL_STEP: usize = NR * 4;

    /// Whether the CPU has AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25) and the
    /// operating system lets this process use them (asked once, for the whole process).
    pub(super) fn usable() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // CPUID exists on every x86-64 CPU; leaf 7 is read only where leaf 0 says it exists
        let tiles = __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).edx >> 24) & 3 == 3;
        tiles && permitted()
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux ≥ 5.16 enables AMX's tile
    /// data for a process on request (it fails where the kernel or the hypervisor does not
    /// support it, and then the VNNI kernel runs).
    #[cfg(target_os = "linux")]
    fn permitted() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a system call with two integer arguments and no memory.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn permitted() -> bool {
        false
    }

    /// The tile configuration `LDTILECFG` reads: palette 1, every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1; // palette
            for t in 0..8 {
                c[16 + 2 * t] = 64; // bytes per row (little-endian u16)
                c[48 + t] = ROWS as u8; // rows
            }
            Config(c)
        }
    }

    /// One block: the dot products of 16 rows `a` (stride `lda`) with one panel, `full` whole
    /// steps of 64 bytes from `a` and `panel`, then (if `tail`) one step from the padded copies
    /// `a_tail` (16 rows of 64) and `b_tail` (16 steps of `NR·4`), into `out`.
    ///
    /// # Safety
    /// The tiles are configured ([`Config`]); `a` holds 16 rows of `lda ≥ 64·full` bytes and
    /// `panel` `16·full` steps.
    unsafe fn block(
        a: *const u8,
        lda: usize,
        panel: *const i8,
        full: usize,
        tail: Option<(&[u8; ROWS * 64], &[i8])>,
        out: &mut [[i32; NR]; ROWS],
    ) {
        // SAFETY (every asm block): the tiles are configured; each load reads 16 rows of 64
        // bytes inside the buffers the caller vouches for; the store writes 16 rows of 192
        // bytes, `out` exactly.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                options(nostack)
            );
            for s in 0..full {
                step(a.add(64 * s), lda, panel.add(STEPS * PANEL_STEP * s));
            }
            if let Some((at, bt)) = tail {
                step(at.as_ptr(), 64, bt.as_ptr());
            }
            asm!(
                "tilestored [{o} + {so}*1], tmm0",
                "tilestored [{o} + {so}*1 + 64], tmm1",
                "tilestored [{o} + {so}*1 + 128], tmm2",
                o = in(reg) out.as_mut_ptr(),
                so = in(reg) PANEL_STEP,
                options(nostack),
            );
        }
    }

    /// `tmm0..2 += a · b`: one step of 64 bytes (16 rows of `a` with stride `lda`, the 3 tiles
    /// of 16 columns of 16 panel steps at `b`).
    #[inline(always)]
    unsafe fn step(a: *const u8, lda: usize, b: *const i8) {
        // SAFETY: the caller's (see `block`).
        unsafe {
            asm!(
                "tileloadd tmm4, [{a} + {lda}*1]",
                "tileloadd tmm5, [{b} + {ldb}*1]",
                "tileloadd tmm6, [{b} + {ldb}*1 + 64]",
                "tileloadd tmm7, [{b} + {ldb}*1 + 128]",
                "tdpbusd tmm0, tmm4, tmm5",
                "tdpbusd tmm1, tmm4, tmm6",
                "tdpbusd tmm2, tmm4, tmm7",
                a = in(reg) a,
                lda = in(reg) lda,
                b = in(reg) b,
                ldb = in(reg) PANEL_STEP,
                options(nostack, readonly),
            );
        }
    }

    /// [`super::tiles`] with the AMX kernel: panel after panel, every block of 16 rows for
    /// each (the panel stays in L2 while the activations stream).
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-INT8 and the process may use them ([`usable`]).
    pub(super) unsafe fn tiles(
        a: &[u8],
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
    ) {
        let (k4, lda) = (b.k4, 4 * b.k4);
        let m = a.len() / lda;
        let (full, rest) = (k4 / STEPS, k4 % STEPS);
        let panel_len = k4 * PANEL_STEP;
        // the last block's rows, zero padded to 16, and the last partial step of each
        let last_rows = m % ROWS;
        let mut padded = vec![0u8; if last_rows > 0 { ROWS * lda } else { 0 }];
        if last_rows > 0 {
            padded[..last_rows * lda].copy_from_slice(&a[(m - last_rows) * lda..]);
        }
        let mut a_tail = [0u8; ROWS * 64];
        let mut b_tail = [0i8; STEPS * PANEL_STEP];
        let mut out = [[0i32; NR]; ROWS];
        let config = Config::new();
        // SAFETY: the CPU has AMX (the caller's promise); the configuration is 64 aligned bytes.
        unsafe { asm!("ldtilecfg [{c}]", c = in(reg) config.0.as_ptr(), options(nostack)) };
        for p in panels {
            let panel = &b.panels[p * panel_len..(p + 1) * panel_len];
            let cols = NR.min(b.n - p * NR);
            if rest > 0 {
                b_tail[..rest * PANEL_STEP].copy_from_slice(&panel[full * STEPS * PANEL_STEP..]);
            }
            for r0 in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - r0);
                let block_rows = if rows == ROWS {
                    &a[r0 * lda..]
                } else {
                    &padded[..]
                };
                if rest > 0 {
                    for (r, dst) in a_tail.chunks_exact_mut(64).enumerate() {
                        let src = &block_rows[r * lda + 64 * full..][..4 * rest];
                        dst[..4 * rest].copy_from_slice(src);
                    }
                }
                let tail = (rest > 0).then_some((&a_tail, &b_tail[..]));
                // SAFETY: configured above; `block_rows` holds 16 rows of `lda` bytes (the
                // last block through `padded`), `panel` holds `16·full` whole steps.
                unsafe {
                    block(
                        block_rows.as_ptr(),
                        lda,
                        panel.as_ptr(),
                        full,
                        tail,
                        &mut out,
                    )
                };
                for (r, dots) in out.iter().enumerate().take(rows) {
                    store(r0 + r, p * NR, &dots[..cols]);
                }
            }
        }
        // SAFETY: as above; the tiles are not used again until the next configuration.
        unsafe { asm!("tilerelease", options(nostack)) };
    }

    /// Whether this CPU and process can run [`tiles`] (for the tests, whatever kernel is in
    /// use).
    #[cfg(test)]
    pub(super) fn detected() -> bool {
        usable()
    }
}

/// The AVX2 kernel. AVX2 has no `VPDPBUSD`, and its byte product `VPMADDUBSW` saturates
/// (two `255 · −128` overflow 16 bits), so the bytes are widened to 16 bits in registers
/// and multiplied by `VPMADDWD`, exact: from each 32-bit lane of 4 `k`, bytes 0 and 2 in
/// one vector and bytes 1 and 3 in another, each pair's two products summed into the lane.
/// The same packing as VNNI's (8 columns per ymm), the same exact sums.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{NR, PackedWeights};
    use std::arch::x86_64::*;

    /// Rows in a tile.
    const MR: usize = 4;
    /// Vectors of 8 columns in a tile (a panel is done in `NR / 8 / NV` passes).
    const NV: usize = 2;

    /// `R` rows of widened activations from `a` (see [`widen`]; `2·k4` words a row) against
    /// `NV` vectors of columns from vector `v0` of a panel, into `out`'s columns `8·v0..`.
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const R: usize>(
        k4: usize,
        a: *const u32,
        panel: *const i8,
        v0: usize,
        out: &mut [[i32; NR]; MR],
    ) {
        let mut acc = [[_mm256_setzero_si256(); NV]; R];
        for kk in 0..k4 {
            // SAFETY: the panel holds k4 steps of NR·4 bytes; each row has 2·k4 words.
            unsafe {
                let bp = panel.add(kk * NR * 4 + v0 * 32);
                let mut even = [_mm256_setzero_si256(); NV];
                let mut odd = [_mm256_setzero_si256(); NV];
                for v in 0..NV {
                    let b = _mm256_loadu_si256(bp.add(32 * v) as *const __m256i);
                    even[v] = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8);
                    odd[v] = _mm256_srai_epi16(b, 8);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = a.add((r * k4 + kk) * 2);
                    let xe = _mm256_set1_epi32(x.read() as i32);
                    let xo = _mm256_set1_epi32(x.add(1).read() as i32);
                    for v in 0..NV {
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(xe, even[v]),
                            _mm256_madd_epi16(xo, odd[v]),
                        );
                        acc[v] = _mm256_add_epi32(acc[v], s);
                    }
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `out` holds NR ≥ 8·(v0 + NV) values.
                unsafe {
                    _mm256_storeu_si256(out.as_mut_ptr().add(8 * (v0 + v)) as *mut __m256i, *acc)
                };
            }
        }
    }

    /// Each row's 4 bytes a step as two words of two 16-bit values, bytes 0 and 2 then 1 and 3
    /// (what `VPMADDWD` pairs with the weights' even and odd bytes), so that the kernel
    /// broadcasts them as they are. 16 bytes at a time by one byte shuffle (bytes 0–7 into
    /// the low half, 8–15 into the high one), the last by [`widen_group`].
    /// The words are the first `a.len() / 2` of `wide`, which only ever grows (no zeroing of
    /// what a shorter product left: every word returned is written).
    #[target_feature(enable = "avx2")]
    pub(super) fn widen<'w>(a: &[u8], wide: &'w mut Vec<u32>) -> &'w [u32] {
        const Z: i8 = -128; // a shuffle index with its top bit set writes a zero byte
        #[rustfmt::skip]
        let order = _mm256_setr_epi8(
            0, Z, 2, Z, 1, Z, 3, Z, 4, Z, 6, Z, 5, Z, 7, Z,
            8, Z, 10, Z, 9, Z, 11, Z, 12, Z, 14, Z, 13, Z, 15, Z,
        );
        if wide.len() < a.len() / 2 {
            wide.resize(a.len() / 2, 0);
        }
        let wide = &mut wide[..a.len() / 2];
        let whole = a.len() - a.len() % 16;
        for (src, dst) in a[..whole].chunks_exact(16).zip(wide.chunks_exact_mut(8)) {
            // SAFETY: 16 bytes read from `src`, 8 words written to `dst`.
            unsafe {
                let x = _mm_loadu_si128(src.as_ptr() as *const __m128i);
                let y = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(x), order);
                _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, y);
            }
        }
        for (q, dst) in a[whole..]
            .chunks_exact(4)
            .zip(wide[whole / 2..].chunks_exact_mut(2))
        {
            dst.copy_from_slice(&widen_group(q));
        }
        wide
    }

    /// One step's 4 bytes as [`widen`] lays them out.
    fn widen_group(q: &[u8]) -> [u32; 2] {
        let [b0, b1, b2, b3] = [q[0], q[1], q[2], q[3]].map(u32::from);
        [b0 | b2 << 16, b1 | b3 << 16]
    }

    thread_local! {
        /// Each thread's widened activations, kept between products (no allocation per call).
        pub(super) static WIDE: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`super::tiles`] with the AVX2 kernel, in the order of the VNNI one (the activations
    /// widened once, for every panel).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tiles(
        a: &[u8],
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
    ) {
        if b.bytes {
            // SAFETY: the caller's promise (AVX2); the pairs fit (`b.bytes`), or saturate as
            // asked (`b.saturating`).
            return unsafe { tiles_narrow(a, b, panels, store) };
        }
        let mut wide = WIDE.take();
        let words = widen(a, &mut wide);
        // SAFETY: the caller's promise (AVX2).
        unsafe { tiles_widened(words, b, panels, store) };
        WIDE.set(wide);
    }

    /// [`tiles`] of activations already widened by [`widen`] (rows of `2·k4` words): what
    /// a product split over threads does once, not once per thread and chunk.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tiles_widened(
        wide: &[u32],
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
    ) {
        let k4 = b.k4;
        let m = wide.len() / (2 * k4);
        each_tile(
            m,
            b,
            panels,
            store,
            |rows, r0, panel, v0, out| {
                let ap = wide[r0 * 2 * k4..].as_ptr();
                // SAFETY: `rows` rows of 2·k4 words from `ap`, one whole panel from `panel`; the
                // caller's promise (AVX2).
                unsafe {
                    match rows {
                        4 => tile::<4>(k4, ap, panel, v0, out),
                        3 => tile::<3>(k4, ap, panel, v0, out),
                        2 => tile::<2>(k4, ap, panel, v0, out),
                        _ => tile::<1>(k4, ap, panel, v0, out),
                    }
                }
            },
            |_, _, _, _| {},
        );
    }

    /// The loops both AVX2 kernels share, in the order of the VNNI one: panel after panel,
    /// blocks of [`MR`] rows (of `m`), `NV` vectors of columns at a time. `tile(rows, r0,
    /// panel, v0, out)` fills the first `rows` rows of `out` from vector `v0` on, for rows
    /// `r0..`; `fix(p, r0, rows, out)` then sees the block of panel `p`, and each row's sums
    /// go to `store`.
    fn each_tile(
        m: usize,
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
        mut tile: impl FnMut(usize, usize, *const i8, usize, &mut [[i32; NR]; MR]),
        fix: impl Fn(usize, usize, usize, &mut [[i32; NR]; MR]),
    ) {
        let mut out = [[0i32; NR]; MR];
        let panel_len = b.k4 * NR * 4;
        for p in panels {
            let panel = b.panels[p * panel_len..].as_ptr();
            let cols = NR.min(b.n - p * NR);
            for r0 in (0..m).step_by(MR) {
                let rows = MR.min(m - r0);
                for v0 in (0..cols.div_ceil(8)).step_by(NV) {
                    tile(rows, r0, panel, v0, &mut out);
                }
                fix(p, r0, rows, &mut out);
                for (r, dots) in out.iter().enumerate().take(rows) {
                    store(r0 + r, p * NR, &dots[..cols]);
                }
            }
        }
    }

    /// [`tile`] for narrow weights ([`PackedWeights::narrow`]), from the activations' bytes
    /// as they are (`R` rows of `lda` from `a`): `VPMADDUBSW` multiplies each unsigned byte by
    /// the weight byte under it and sums each pair into 16 bits (at most 2·255·64 = 32,640 in
    /// size: never saturated), `VPMADDWD` by ones sums the two pairs of a lane into 32 bits.
    /// The same exact sums in 3 instructions per 32 multiply-adds instead of [`tile`]'s ~4.6;
    /// for weights packed to saturate (`saturating`), each pair's sum saturated to 16 bits.
    ///
    /// # Safety
    /// AVX2; `R` rows of `lda ≥ 4·k4` bytes from `a`; the panel holds `k4` steps; `v0 + NV`
    /// vectors fit a panel's row.
    #[target_feature(enable = "avx2")]
    unsafe fn tile_narrow<const R: usize>(
        k4: usize,
        a: *const u8,
        lda: usize,
        panel: *const i8,
        v0: usize,
        out: &mut [[i32; NR]; MR],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); NV]; R];
        for kk in 0..k4 {
            // SAFETY: the caller's promise.
            unsafe {
                let bp = panel.add(kk * NR * 4 + v0 * 32);
                let b: [__m256i; NV] =
                    std::array::from_fn(|v| _mm256_loadu_si256(bp.add(32 * v) as *const __m256i));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let quad = (a.add(r * lda + 4 * kk) as *const i32).read_unaligned();
                    let x = _mm256_set1_epi32(quad);
                    for v in 0..NV {
                        let pairs = _mm256_maddubs_epi16(x, b[v]);
                        acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
        }
        for (acc, out) in acc.iter().zip(out.iter_mut()) {
            for (v, acc) in acc.iter().enumerate() {
                // SAFETY: each row of `out` holds NR ≥ 8·(v0 + NV) values.
                unsafe {
                    _mm256_storeu_si256(out.as_mut_ptr().add(8 * (v0 + v)) as *mut __m256i, *acc)
                };
            }
        }
    }

    /// [`tiles`] for narrow weights: [`tile_narrow`] on the activations as they are.
    ///
    /// # Safety
    /// AVX2, and `b.narrow`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tiles_narrow(
        a: &[u8],
        b: &PackedWeights,
        panels: std::ops::Range<usize>,
        store: impl Fn(usize, usize, &[i32]),
    ) {
        debug_assert!(
            b.bytes,
            "tiles_narrow: pairs of weights beyond 128, not saturating"
        );
        let (k4, lda) = (b.k4, 4 * b.k4);
        each_tile(
            a.len() / lda,
            b,
            panels,
            store,
            |rows, r0, panel, v0, out| {
                let ap = a[r0 * lda..].as_ptr();
                // SAFETY: `rows` rows of `lda` bytes from `ap`, one whole panel from `panel`; the
                // caller's promise (AVX2, narrow weights).
                unsafe {
                    match rows {
                        4 => tile_narrow::<4>(k4, ap, lda, panel, v0, out),
                        3 => tile_narrow::<3>(k4, ap, lda, panel, v0, out),
                        2 => tile_narrow::<2>(k4, ap, lda, panel, v0, out),
                        _ => tile_narrow::<1>(k4, ap, lda, panel, v0, out),
                    }
                }
            },
            |p, r0, rows, out| add_back(b, p, &a[r0 * lda..], lda, rows, out),
        );
    }

    /// What [`PackedWeights::split_pairs`] took out of panel `p`, times its activations, added
    /// to the sums of the block's `rows` rows (`a`: their activations, rows of `lda`): each
    /// part read once for the block, not once a row.
    fn add_back(
        b: &PackedWeights,
        p: usize,
        a: &[u8],
        lda: usize,
        rows: usize,
        out: &mut [[i32; NR]; MR],
    ) {
        let parts = match b.residual_at.get(p..p + 2) {
            Some(&[start, end]) => &b.residuals[start..end],
            _ => return,
        };
        let a = &a[..rows * lda];
        for part in parts {
            let (k, col, e) = (part.k as usize, part.col as usize, i32::from(part.e));
            for (sums, x) in out.iter_mut().zip(a.chunks_exact(lda)) {
                sums[col] = sums[col].wrapping_add(e * i32::from(x[k]));
            }
        }
    }

    /// Whether this CPU can run [`tiles`] (for the tests, whatever kernel is in use).
    #[cfg(test)]
    pub(super) fn detected() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dinoedge_testkit::noise_bytes as noise;

    #[test]
    fn packing_by_columns_is_packing_the_transpose() {
        for (k, n) in [(64, 705), (705, 64), (5, 49), (1, 1)] {
            let b: Vec<i8> = noise(k * n, 7).map(|v| v as i8).collect();
            let bt: Vec<i8> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            // (`new` checks for 7-bit weights; attention's packings do not look)
            let want = PackedWeights {
                narrow: false,
                bytes: false,
                ..PackedWeights::new(Weights::I8(&b), k, n, &[0]).unwrap()
            };
            assert_eq!(
                PackedWeights::from_columns(&bt, k, n).unwrap(),
                want,
                "[{k}, {n}]"
            );
        }
        assert!(PackedWeights::from_columns(&[0; 5], 2, 3).is_err());
    }

    #[test]
    fn packing_by_rows_is_packing() {
        for (k, n) in [(257, 64), (64, 705), (5, 49), (1, 1), (7, 3)] {
            let b: Vec<i8> = noise(k * n, 11).map(|v| v as i8).collect();
            // (`new` checks for 7-bit weights; attention's packings do not look)
            let want = PackedWeights {
                narrow: false,
                bytes: false,
                ..PackedWeights::new(Weights::I8(&b), k, n, &[0]).unwrap()
            };
            assert_eq!(
                PackedWeights::from_rows(&b, k, n).unwrap(),
                want,
                "[{k}, {n}]"
            );
        }
        assert!(PackedWeights::from_rows(&[0; 5], 2, 3).is_err());
    }

    /// `Σ (a − a₀)(b − b₀)` straight from the definition.
    fn definition(a: &[i32], za: i32, b: &[i32], zb: &[i32], k: usize, n: usize) -> Vec<i32> {
        let m = a.len() / k;
        let mut c = vec![0i32; m * n];
        for r in 0..m {
            for col in 0..n {
                let z = zb[if zb.len() == 1 { 0 } else { col }];
                c[r * n + col] = (0..k)
                    .map(|i| (a[r * k + i] - za) * (b[i * n + col] - z))
                    .sum();
            }
        }
        c
    }

    /// Which weights a check multiplies.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Bits {
        /// Any byte.
        Eight,
        /// 7-bit ones ([`PackedWeights::narrow`]): `−64..=64` signed, `0..=127` unsigned.
        Seven,
        /// 8-bit ones from a bell-shaped distribution (as trained weights are), the pairs
        /// beyond the byte kernel's range split ([`PackedWeights::split_pairs`]).
        Bell,
    }

    /// A bell-shaped signed byte from four of `noise`'s (their mean, centred: σ ≈ 37).
    fn bell(q: &[u8]) -> i8 {
        ((q.iter().map(|v| *v as i32).sum::<i32>() - 510) / 4) as i8
    }

    fn check(m: usize, k: usize, n: usize, signed_a: bool, signed_b: bool, per_column: bool) {
        for bits in [Bits::Eight, Bits::Seven, Bits::Bell] {
            check_bits(m, k, n, signed_a, signed_b, per_column, bits);
        }
    }

    fn check_bits(
        m: usize,
        k: usize,
        n: usize,
        signed_a: bool,
        signed_b: bool,
        per_column: bool,
        bits: Bits,
    ) {
        let a_bytes: Vec<u8> = noise(m * k, 1 + m as u32).collect();
        let b_bytes: Vec<u8> = match bits {
            Bits::Bell => noise(4 * k * n, 7 + n as u32)
                .collect::<Vec<_>>()
                .chunks_exact(4)
                .map(|q| (bell(q) as u8) ^ if signed_b { 0 } else { 0x80 })
                .collect(),
            _ => noise(k * n, 7 + n as u32)
                .map(|v| match (bits, signed_b) {
                    (Bits::Seven, true) => ((v % 129) as i16 - 64) as i8 as u8,
                    (Bits::Seven, false) => v & 0x7f,
                    _ => v,
                })
                .collect(),
        };
        let zb: Vec<i32> = if per_column {
            noise(n, 3)
                .map(|z| if signed_b { z as i8 as i32 } else { z as i32 })
                .collect()
        } else if signed_b {
            vec![0]
        } else {
            vec![131]
        };
        let (a_vals, za): (Vec<i32>, i32) = if signed_a {
            (a_bytes.iter().map(|v| *v as i8 as i32).collect(), -3)
        } else {
            (a_bytes.iter().map(|v| *v as i32).collect(), 117)
        };
        let b_vals: Vec<i32> = if signed_b {
            b_bytes.iter().map(|v| *v as i8 as i32).collect()
        } else {
            b_bytes.iter().map(|v| *v as i32).collect()
        };
        let a_i8: Vec<i8> = a_bytes.iter().map(|v| *v as i8).collect();
        let b_i8: Vec<i8> = b_bytes.iter().map(|v| *v as i8).collect();
        let acts = if signed_a {
            Activations::I8(&a_i8, za as i8)
        } else {
            Activations::U8(&a_bytes, za as u8)
        };
        let weights = if signed_b {
            Weights::I8(&b_i8)
        } else {
            Weights::U8(&b_bytes)
        };
        let mut packed = PackedWeights::new(weights, k, n, &zb).unwrap();
        if bits == Bits::Seven || k * n >= 64 {
            // (64 bytes of noise all within −64..=64 would be a 1-in-10¹⁹ draw)
            assert_eq!(packed.narrow(), bits == Bits::Seven, "{bits:?}");
        }
        if bits == Bits::Bell {
            // split whatever the limit and the CPU, so that every kernel adds the parts back
            assert!(packed.split_pairs(usize::MAX));
            assert!(packed.bytes());
            if k * n >= 1000 {
                assert!(packed.split() > 0, "m{m} k{k} n{n}: nothing split");
            }
        }
        let want = definition(&a_vals, za, &b_vals, &zb, k, n);
        let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.25 - 3.0).collect();
        let scale = 0.0123f32;
        let mut got = vec![0f32; m * n];
        let epi = Epilogue::Scale {
            scale,
            bias: Some(&bias),
        };
        // on two threads, as a backbone with two would run it
        let two = tract_linalg::multithread::Executor::multithread(2);
        tract_linalg::multithread::multithread_tract_scope(two, || {
            matmul(&acts, &packed, &epi, &mut got).unwrap()
        });
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let w = *w as f32 * scale + bias[i % n];
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "m{m} k{k} n{n} at {i}: {g} vs {w}"
            );
        }
        // and the portable reference gives the same dots
        let mut scratch = Vec::new();
        let (rows, _) = prepared(&acts, k, packed.k4, 0..m, false, &mut scratch);
        let panels = 0..n.div_ceil(NR);
        let fast = std::sync::Mutex::new(vec![0i32; m * n]);
        tiles(rows, &packed, panels.clone(), |r, c0, d| {
            fast.lock().unwrap()[r * n + c0..r * n + c0 + d.len()].copy_from_slice(d)
        });
        // (`tiles` adds back what `split_pairs` took out; the kernels alone do not)
        let slow = std::sync::Mutex::new(vec![0i32; m * n]);
        let store = packed.restore(rows, |r, c0, d| {
            slow.lock().unwrap()[r * n + c0..r * n + c0 + d.len()].copy_from_slice(d)
        });
        portable_tiles(rows, &packed, panels.clone(), store);
        assert_eq!(*fast.lock().unwrap(), *slow.lock().unwrap());
        // the AVX2 kernel too, whichever kernel this CPU picked
        #[cfg(target_arch = "x86_64")]
        if avx2::detected() {
            let wide = std::sync::Mutex::new(vec![0i32; m * n]);
            let store = |r: usize, c0: usize, d: &[i32]| {
                wide.lock().unwrap()[r * n + c0..r * n + c0 + d.len()].copy_from_slice(d)
            };
            // SAFETY: the CPU has AVX2 (just checked). (It adds the parts back itself.)
            unsafe { avx2::tiles(rows, &packed, panels.clone(), store) };
            assert_eq!(*wide.lock().unwrap(), *slow.lock().unwrap(), "avx2");
        }
        // and the AMX kernel, where this CPU and system have it
        #[cfg(target_arch = "x86_64")]
        if amx::detected() {
            let tiled = std::sync::Mutex::new(vec![0i32; m * n]);
            let store = packed.restore(rows, |r, c0, d| {
                tiled.lock().unwrap()[r * n + c0..r * n + c0 + d.len()].copy_from_slice(d)
            });
            // SAFETY: the CPU has AMX and the process may use it (just checked).
            unsafe { amx::tiles(rows, &packed, panels, store) };
            assert_eq!(*tiled.lock().unwrap(), *slow.lock().unwrap(), "amx");
        }
    }

    #[test]
    fn exact_for_every_kind_and_ragged_shapes() {
        for (m, k, n) in [
            (1, 4, 16),
            (9, 12, 48),
            (17, 7, 50),
            (257, 384, 96),
            (3, 1536, 5),
            // AMX: whole 64-byte steps and a partial one, 16-row blocks and a partial one
            (33, 260, 97),
            (16, 64, 48),
        ] {
            for (sa, sb, pc) in [
                (false, true, false),
                (false, false, false),
                (true, true, false),
                (true, true, true),
                (false, false, true),
            ] {
                check(m, k, n, sa, sb, pc);
            }
        }
    }

    #[test]
    fn narrow_weights_at_their_extremes_do_not_saturate() {
        // every pair of products at ±2·255·64 = ±32,640, the most `VPMADDUBSW` is handed
        let (m, k, n) = (5, 68, 50);
        let a = vec![255u8; m * k];
        for (what, weights, zero, want) in [
            ("64", Weights::I8(&[64i8; 68 * 50]), 0, 255 * 64 * k as i32),
            (
                "−64",
                Weights::I8(&[-64i8; 68 * 50]),
                0,
                -255 * 64 * k as i32,
            ),
            // uint8: 127 and 0 are packed as 63 and −64
            (
                "u8 127",
                Weights::U8(&[127u8; 68 * 50]),
                0,
                255 * 127 * k as i32,
            ),
            ("u8 0", Weights::U8(&[0u8; 68 * 50]), 7, -255 * 7 * k as i32),
        ] {
            let packed = PackedWeights::new(weights, k, n, &[zero]).unwrap();
            assert!(packed.narrow(), "{what}");
            let mut out = vec![0f32; m * n];
            let epi = Epilogue::Scale {
                scale: 1.0,
                bias: None,
            };
            matmul(&Activations::U8(&a, 0), &packed, &epi, &mut out).unwrap();
            assert!(out.iter().all(|v| *v == want as f32), "{what}: {out:?}");
        }
    }

    #[test]
    fn split_pairs_are_exact_at_the_extremes() {
        // pairs at every sum of magnitudes past 128, up to −128 by −128, against activations
        // of 255 (the most `VPMADDUBSW` could be handed) and of noise
        let (m, k, n) = (6, 36, 53);
        let values = [
            -128i8, 127, -128, -128, 127, 127, 1, -128, 64, 65, -2, 127, 0, -128,
        ];
        let b: Vec<i8> = noise(k * n, 13)
            .map(|v| values[v as usize % values.len()])
            .collect();
        let unsigned: Vec<u8> = b.iter().map(|v| *v as u8).collect();
        for a in [vec![255u8; m * k], noise(m * k, 5).collect()] {
            for (weights, zero) in [(Weights::I8(&b), 0), (Weights::U8(&unsigned), 3)] {
                let mut packed = PackedWeights::new(weights, k, n, &[zero]).unwrap();
                assert!(packed.split_pairs(usize::MAX));
                assert!(packed.split() > 0);
                let signed = matches!(weights, Weights::I8(_));
                let b32: Vec<i32> = b
                    .iter()
                    .map(|v| if signed { *v as i32 } else { *v as u8 as i32 })
                    .collect();
                let a32: Vec<i32> = a.iter().map(|v| *v as i32).collect();
                let want = definition(&a32, 9, &b32, &[zero], k, n);
                let mut out = vec![0f32; m * n];
                let epi = Epilogue::Scale {
                    scale: 1.0,
                    bias: None,
                };
                matmul(&Activations::U8(&a, 9), &packed, &epi, &mut out).unwrap();
                let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                assert_eq!(out, want, "signed weights {signed}");
            }
        }
    }

    #[test]
    fn columns_epilogue_scales_each_column() {
        let (m, k, n) = (5, 8, 3);
        let a: Vec<u8> = (0..m * k).map(|i| i as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| (i as i8) - 10).collect();
        let packed = PackedWeights::new(Weights::I8(&b), k, n, &[0]).unwrap();
        let scales = [1.0, 0.5, 2.0];
        let mut out = vec![0f32; m * n];
        matmul(
            &Activations::U8(&a, 2),
            &packed,
            &Epilogue::Columns(&scales),
            &mut out,
        )
        .unwrap();
        let a32: Vec<i32> = a.iter().map(|v| *v as i32).collect();
        let b32: Vec<i32> = b.iter().map(|v| *v as i32).collect();
        let want = definition(&a32, 2, &b32, &[0], k, n);
        for (i, (g, w)) in out.iter().zip(want).enumerate() {
            assert_eq!(*g, w as f32 * scales[i % n]);
        }
    }

    /// `matmul_then`'s step runs once on every output value, after the epilogue: the same as
    /// the step over `matmul`'s whole output, over many panels and threads' worth of columns.
    #[test]
    fn the_step_after_the_product_sees_every_value_once() {
        let (m, k, n) = (37, 64, 200);
        let a: Vec<u8> = noise(m * k, 3).collect();
        let b: Vec<i8> = noise(k * n, 4).map(|v| v as i8).collect();
        let packed = PackedWeights::new(Weights::I8(&b), k, n, &[0]).unwrap();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 7.0).collect();
        let epi = Epilogue::Scale {
            scale: 0.01,
            bias: Some(&bias),
        };
        let acts = Activations::U8(&a, 128);
        let mut plain = vec![0f32; m * n];
        matmul(&acts, &packed, &epi, &mut plain).unwrap();
        // the step sees each value's column: it adds the column's number
        let step = |c0: usize, xs: &mut [f32]| {
            for (c, x) in (c0..).zip(xs.iter_mut()) {
                *x = (*x * 3.0).round() + 0.5 + c as f32;
            }
        };
        let mut fused = vec![f32::NAN; m * n];
        matmul_then(&acts, &packed, &epi, &step, &mut fused).unwrap();
        for row in plain.chunks_exact_mut(n) {
            step(0, row);
        }
        assert_eq!(fused, plain);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let b = [0i8; 6];
        assert!(PackedWeights::new(Weights::I8(&b), 4, 2, &[0]).is_err());
        assert!(PackedWeights::new(Weights::I8(&b), 3, 2, &[0, 0, 0]).is_err());
        assert!(PackedWeights::new(Weights::U8(&[0u8; 6]), 3, 2, &[300]).is_err());
        let packed = PackedWeights::new(Weights::I8(&b), 3, 2, &[0]).unwrap();
        let mut out = [0f32; 4];
        let epi = Epilogue::Scale {
            scale: 1.0,
            bias: None,
        };
        assert!(matmul(&Activations::U8(&[0; 5], 0), &packed, &epi, &mut out).is_err());
        assert!(matmul(&Activations::U8(&[0; 3], 0), &packed, &epi, &mut out).is_err());
        let short = [0f32; 1];
        let epi = Epilogue::Columns(&short);
        assert!(matmul(&Activations::U8(&[0; 6], 0), &packed, &epi, &mut out).is_err());
    }

    /// `Σ` over pairs of consecutive `k` (0–1, 2–3 of each group of 4) of each pair's sum of
    /// products saturated to 16 bits: what `VPMADDUBSW` then `VPMADDWD` by ones compute.
    fn saturating_definition(a: &[u8], b: &[i8], k: usize, n: usize) -> Vec<i32> {
        let m = a.len() / k;
        let mut c = vec![0i32; m * n];
        for r in 0..m {
            for col in 0..n {
                c[r * n + col] = (0..k)
                    .step_by(2)
                    .map(|i| {
                        let term = |i: usize| {
                            if i < k {
                                a[r * k + i] as i32 * b[i * n + col] as i32
                            } else {
                                0
                            }
                        };
                        (term(i) + term(i + 1)).clamp(i16::MIN as i32, i16::MAX as i32)
                    })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn saturating_sums_are_the_byte_instruction_s() {
        let (m, k, n) = (9, 70, 53);
        let b: Vec<i8> = noise(k * n, 17).map(|v| v as i8).collect();
        let mut packed =
            PackedWeights::with_sums(Weights::I8(&b), k, n, &[0], Sums::Saturating).unwrap();
        // where the AVX2 kernel is not this CPU's, packed as for it all the same
        packed.saturate();
        assert!(packed.saturating() && packed.bytes() && packed.split() == 0);
        // unsigned weights are multiplied exactly by onnxruntime on AVX2 too: not saturated
        let unsigned: Vec<u8> = b.iter().map(|v| *v as u8).collect();
        let exact = PackedWeights::with_sums(Weights::U8(&unsigned), k, n, &[3], Sums::Saturating);
        assert!(!exact.unwrap().saturating());
        #[cfg(target_arch = "x86_64")]
        if avx2::detected() {
            for a in [vec![255u8; m * k], noise(m * k, 21).collect()] {
                let want = saturating_definition(&a, &b, k, n);
                let a32: Vec<i32> = a.iter().map(|v| *v as i32).collect();
                let b32: Vec<i32> = b.iter().map(|v| *v as i32).collect();
                let exact = definition(&a32, 0, &b32, &[0], k, n);
                assert_ne!(
                    want, exact,
                    "no pair saturated: the check would prove nothing"
                );
                let mut scratch = Vec::new();
                let acts = Activations::U8(&a, 0);
                let (rows, _) = prepared(&acts, k, packed.k4, 0..m, false, &mut scratch);
                let got = std::sync::Mutex::new(vec![0i32; m * n]);
                let store = |r: usize, c0: usize, d: &[i32]| {
                    got.lock().unwrap()[r * n + c0..r * n + c0 + d.len()].copy_from_slice(d)
                };
                // SAFETY: the CPU has AVX2 (just checked).
                unsafe { avx2::tiles(rows, &packed, 0..n.div_ceil(NR), store) };
                assert_eq!(*got.lock().unwrap(), want);
                // and through `matmul` where the AVX2 kernel is this CPU's
                if kernel() == Kernel::Avx2 {
                    let mut out = vec![0f32; m * n];
                    let epi = Epilogue::Scale {
                        scale: 1.0,
                        bias: None,
                    };
                    matmul(&acts, &packed, &epi, &mut out).unwrap();
                    let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                    assert_eq!(out, want);
                }
            }
        }
    }
}
