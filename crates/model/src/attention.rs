//! Attention as one operator: `softmax(Q·Kᵀ · scale) · V` for every head, a block of query
//! rows at a time, so the `[heads, N, N]` scores never leave the core's cache.
//!
//! tract runs a block's attention as six to ten operators (the product `Q·Kᵀ`, the scale, the
//! softmax, a QDQ file's quantise/dequantise pairs, axis moves, the product with `V`), each
//! reading and writing the whole `[heads, N, N]` tensor: 1.6 MB per head at 308×448, far
//! past L2. [`swap_attention`] finds that chain in the decluttered graph, from each softmax
//! outwards, and replaces it by one [`FusedAttention`], which reads `Q`, `K` and `V` where
//! they lie (any axis order: [`Layout`]) and runs, per head and per block of [`ROWS`] query
//! rows: the scores on [`dinoedge_kernels::sgemm`], each row's steps before the softmax
//! ([`Step`]), the softmax ([`activations::softmax`]), the steps after it, and the product with
//! `V`.
//!
//! A softmax whose output is a model output (the last block's attention map, when the
//! caller asks for it) is left as it is: the map must exist.

use tract_core::internal::*;
use tract_core::ops::cast::Cast;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8};

use dinoedge_kernels::activations;
use dinoedge_kernels::qgemm::{self, PackedWeights, ShapeError, SharedRows};
use dinoedge_kernels::sgemm::{self, PackedF32};

/// Query rows per task: a multiple of the AVX2 kernels' 6-row and 4-row tiles and of the
/// AVX-512 ones' 8 (with 32, every block of the fp32 products ended on a 2-row tile: 48 took
/// fp32 attention at 308x448 from 154 to 146 ms a run on one AVX2 core); its scores (48 KB
/// at 224, 135 KB at 308x448) stay in L2 between the two products.
pub const ROWS: usize = 48;

/// Where one operand's values lie: the element offset of one step along its head, row and
/// column axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// One head further.
    pub head: usize,
    /// One row further (a query for `Q` and the output, a key for `K` and `V`).
    pub row: usize,
    /// One column further (a channel).
    pub col: usize,
}

impl Layout {
    /// The largest offset this layout reaches over `heads × rows × cols` values, plus one.
    fn extent(&self, heads: usize, rows: usize, cols: usize) -> usize {
        (heads - 1) * self.head + (rows - 1) * self.row + (cols - 1) * self.col + 1
    }

    /// Whether `heads × rows × cols` values land on `0..heads·rows·cols`, each once: the
    /// strides of the axes longer than one, smallest first, are `1`, the first length, and
    /// the product of the first two.
    fn is_dense(&self, heads: usize, rows: usize, cols: usize) -> bool {
        let mut axes: Vec<(usize, usize)> =
            [(self.head, heads), (self.row, rows), (self.col, cols)]
                .into_iter()
                .filter(|(_, len)| *len > 1)
                .collect();
        axes.sort_unstable();
        let mut want = 1;
        for (stride, len) in axes {
            if stride != want {
                return false;
            }
            want *= len;
        }
        true
    }
}

/// The sizes of one attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    /// Heads.
    pub heads: usize,
    /// Query rows.
    pub queries: usize,
    /// Key (and value) rows.
    pub keys: usize,
    /// Channels of a query and a key.
    pub depth: usize,
    /// Channels of a value (and of the output).
    pub value_depth: usize,
}

/// One element-wise step on a row of scores, before or after the softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// `x · s`.
    Scale(f32),
    /// tract's `QuantizeLinearI8` then `DequantizeLinearF32` (a QDQ file's pair), bit for bit
    /// ([`activations::fake_quantize_i8`]).
    FakeQuantize {
        /// The quantiser's multiplier (the reciprocal of the ONNX scale).
        q_scale: f32,
        /// The quantiser's zero point.
        q_zero: i8,
        /// The dequantiser's scale.
        dq_scale: f32,
        /// The dequantiser's zero point.
        dq_zero: i8,
    },
}

impl Eq for Step {}

impl std::hash::Hash for Step {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match *self {
            Step::Scale(s) => (0u8, s.to_bits()).hash(state),
            Step::FakeQuantize {
                q_scale,
                q_zero,
                dq_scale,
                dq_zero,
            } => (1u8, q_scale.to_bits(), q_zero, dq_scale.to_bits(), dq_zero).hash(state),
        }
    }
}

impl Step {
    fn apply(&self, xs: &mut [f32]) {
        match *self {
            Step::Scale(s) => activations::scale(s, xs),
            Step::FakeQuantize {
                q_scale,
                q_zero,
                dq_scale,
                dq_zero,
            } => activations::fake_quantize_i8(q_scale, q_zero, dq_scale, dq_zero, xs),
        }
    }
}

/// One attention: its sizes, where its operands lie, and the steps around its softmax.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The sizes.
    pub dims: Dims,
    /// `Q` (`heads × queries × depth`).
    pub q: Layout,
    /// `K` (`heads × keys × depth`).
    pub k: Layout,
    /// `V` (`heads × keys × value_depth`).
    pub v: Layout,
    /// The output (`heads × queries × value_depth`); dense.
    pub out: Layout,
    /// Applied to each row of `Q·Kᵀ` in order, before the softmax.
    pub before: Vec<Step>,
    /// Applied to each row of probabilities in order, after it.
    pub after: Vec<Step>,
    /// Both products in int8 on [`dinoedge_kernels::qgemm`] (an int8 file's attention; see
    /// [`int8_products`]) rather than in `f32`.
    pub int8: bool,
}

/// `out = softmax(after ∘ … ) · V` as [`Spec`] says, over tract's executor: first each head's
/// `Kᵀ` and `V` packed for [`sgemm`], then every (head, block of [`ROWS`] queries) as one task.
pub fn attend(
    spec: &Spec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let Dims {
        heads: h,
        queries: m,
        keys: n,
        depth: d,
        value_depth: dv,
    } = spec.dims;
    if [h, m, n, d, dv].contains(&0) {
        return Err(ShapeError(format!("an empty attention: {:?}", spec.dims)));
    }
    let checks = [
        ("Q", spec.q.extent(h, m, d), q.len()),
        ("K", spec.k.extent(h, n, d), k.len()),
        ("V", spec.v.extent(h, n, dv), v.len()),
    ];
    for (what, need, have) in checks {
        if need > have {
            return Err(ShapeError(format!(
                "{what} holds {have} values, its layout reaches {need}"
            )));
        }
    }
    if out.len() != h * m * dv || !spec.out.is_dense(h, m, dv) {
        return Err(ShapeError(format!(
            "an output of {} values laid out {:?} for {h} × {m} × {dv}",
            out.len(),
            spec.out
        )));
    }
    // the heads packed into the buffers of this thread's last call (no allocation, and no
    // fresh pages to fault in, per head and run)
    let mut packed = PACKED.take();
    packed.resize_with(h, || None);
    let pack = |h0: usize, slots: &mut [Option<Packed>]| -> TractResult<()> {
        for (i, slot) in slots.iter_mut().enumerate() {
            Packed::fill(slot, spec, k, v, h0 + i).map_err(|e| format_err!("{e}"))?;
        }
        Ok(())
    };
    tract_linalg::multithread::par_chunks_mut(&mut packed, 1, h * n * (d + dv) * 8, pack)
        .map_err(|e| ShapeError(format!("{e}")))?;
    let done = run_blocks(spec, q, &packed, out);
    PACKED.set(packed);
    done
}

thread_local! {
    /// Each thread's packed heads from its last [`attend`], refilled by the next.
    static PACKED: std::cell::RefCell<Vec<Option<Packed>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every (head, block of [`ROWS`] queries) of [`attend`] as one task, over tract's executor.
fn run_blocks(
    spec: &Spec,
    q: &[f32],
    packed: &[Option<Packed>],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let dims = spec.dims;
    let (h, m) = (dims.heads, dims.queries);
    let blocks = m.div_ceil(ROWS);
    let shared = SharedRows::new(out);
    let mut tasks = vec![0u8; h * blocks];
    let run = |t0: usize, chunk: &mut [u8]| -> TractResult<()> {
        for t in t0..t0 + chunk.len() {
            let (hh, r0) = (t / blocks, (t % blocks) * ROWS);
            let rows = ROWS.min(m - r0);
            let packed = packed[hh]
                .as_ref()
                .ok_or_else(|| format_err!("head {hh} of {h} was not packed"))?;
            block(spec, q, packed, hh, r0, rows, &shared).map_err(|e| format_err!("{e}"))?;
        }
        Ok(())
    };
    tract_linalg::multithread::par_chunks_mut(
        &mut tasks,
        1,
        h * m * dims.keys * (dims.depth + dims.value_depth),
        run,
    )
    .map_err(|e| ShapeError(format!("{e}")))
}

/// One head's keys (as `Kᵀ`, `[depth, keys]`) and values (`[keys, value_depth]`), packed
/// for the products.
#[derive(Clone, Debug)]
// one per head, alive for one call: the size of the variants does not matter
#[allow(clippy::large_enum_variant)]
enum Packed {
    F32 {
        keys: PackedF32,
        values: PackedF32,
    },
    /// Symmetric int8, one scale per key and one per value channel.
    Int8 {
        keys: PackedWeights,
        key_scales: Vec<f32>,
        /// `128·Σ k` per key: what queries as unsigned bytes (`q + 128`) add to each sum.
        key_offsets: Vec<i32>,
        values: PackedWeights,
        value_scales: Vec<f32>,
        /// Zeros, one per value channel (probabilities are bytes from 0: no offsets).
        value_offsets: Vec<i32>,
    },
}

impl Packed {
    /// Head `hh` packed into `slot`, into the buffers already there when they are `f32`
    /// ones (the int8 variant is packed anew).
    fn fill(
        slot: &mut Option<Packed>,
        spec: &Spec,
        k: &[f32],
        v: &[f32],
        hh: usize,
    ) -> Result<(), ShapeError> {
        if spec.int8 {
            *slot = Some(Packed::new_int8(spec, k, v, hh)?);
            return Ok(());
        }
        let (n, d, dv) = (spec.dims.keys, spec.dims.depth, spec.dims.value_depth);
        let (kl, vl) = (spec.k, spec.v);
        // Kᵀ: `[depth, keys]`, one step along K is a channel, along N a key
        let (k, v) = (&k[hh * kl.head..], &v[hh * vl.head..]);
        match slot {
            Some(Packed::F32 { keys, values }) => {
                keys.repack_strided(k, d, n, kl.col, kl.row)?;
                values.repack_strided(v, n, dv, vl.row, vl.col)?;
            }
            _ => {
                *slot = Some(Packed::F32 {
                    keys: PackedF32::from_strided(k, d, n, kl.col, kl.row)?,
                    values: PackedF32::from_strided(v, n, dv, vl.row, vl.col)?,
                })
            }
        }
        Ok(())
    }

    /// Head `hh`'s keys and values quantised and packed for [`qgemm`].
    fn new_int8(spec: &Spec, k: &[f32], v: &[f32], hh: usize) -> Result<Packed, ShapeError> {
        let Dims {
            keys: n,
            depth: d,
            value_depth: dv,
            ..
        } = spec.dims;
        let (kl, vl) = (spec.k, spec.v);
        // one scale per key (a column of Kᵀ) and per value channel (a column of V): K packed
        // from its rows as they are (a key's channels together), V from its rows (keys)
        let mut kt = vec![0i8; n * d];
        let mut key_scales = vec![0f32; n];
        let mut row = vec![0f32; d.max(dv)];
        for (j, (scale, dst)) in key_scales
            .iter_mut()
            .zip(kt.chunks_exact_mut(d))
            .enumerate()
        {
            let src = read_row(k, kl, hh, j, d, &mut row);
            let (lo, hi) = activations::min_max_with_zero(src);
            let amax = hi.max(-lo);
            *scale = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            activations::quantize_i8(inv, 0, src, dst);
        }
        let mut amax = vec![0f32; dv];
        for j in 0..n {
            let src = read_row(v, vl, hh, j, dv, &mut row);
            activations::max_abs_into(&mut amax, src);
        }
        let value_scales: Vec<f32> = amax.iter().map(|m| m / 127.0).collect();
        let inv: Vec<f32> = amax
            .iter()
            .map(|m| if *m > 0.0 { 127.0 / m } else { 0.0 })
            .collect();
        let mut vq = vec![0i8; n * dv];
        for (j, dst) in vq.chunks_exact_mut(dv).enumerate() {
            let src = read_row(v, vl, hh, j, dv, &mut row);
            activations::quantize_i8_columns(&inv, src, dst);
        }
        let keys = PackedWeights::from_columns(&kt, d, n)?;
        let key_offsets = keys.column_sums().iter().map(|s| 128 * s).collect();
        let values = PackedWeights::from_rows(&vq, n, dv)?;
        Ok(Packed::Int8 {
            keys,
            key_scales,
            key_offsets,
            values,
            value_scales,
            value_offsets: vec![0; dv],
        })
    }
}

/// Row `r` of head `hh` of `xs` laid out as `l` (`cols` values): the slice itself when its
/// columns are adjacent, else gathered into `tmp`.
fn read_row<'a>(
    xs: &'a [f32],
    l: Layout,
    hh: usize,
    r: usize,
    cols: usize,
    tmp: &'a mut [f32],
) -> &'a [f32] {
    let base = hh * l.head + r * l.row;
    if l.col == 1 {
        return &xs[base..base + cols];
    }
    let tmp = &mut tmp[..cols];
    for (c, x) in tmp.iter_mut().enumerate() {
        *x = xs[base + c * l.col];
    }
    tmp
}

/// A task's working memory, kept per thread from task to task (fresh `Vec`s per task were
/// ~15 % of a block's attention at 224: allocation, zeroing and, past 128 KB, page faults).
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    scores: Vec<f32>,
    o: Vec<f32>,
    a8: Vec<i8>,
    a_u8: Vec<u8>,
    p8: Vec<u8>,
    q8: Vec<i8>,
    q_scales: Vec<f32>,
    p_scales: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// The first `len` elements of `v`, grown if it is shorter (what it held before is left:
/// each caller writes what it reads).
fn room<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// One task: rows `r0..r0 + rows` of head `hh`.
fn block(
    spec: &Spec,
    q: &[f32],
    packed: &Packed,
    hh: usize,
    r0: usize,
    rows: usize,
    out: &SharedRows,
) -> Result<(), ShapeError> {
    SCRATCH.with_borrow_mut(|scratch| block_in(spec, q, packed, hh, r0, rows, out, scratch))
}

/// [`block`] in a thread's [`Scratch`].
#[allow(clippy::too_many_arguments)]
fn block_in(
    spec: &Spec,
    q: &[f32],
    packed: &Packed,
    hh: usize,
    r0: usize,
    rows: usize,
    out: &SharedRows,
    scratch: &mut Scratch,
) -> Result<(), ShapeError> {
    let Dims {
        keys: n,
        depth: d,
        value_depth: dv,
        ..
    } = spec.dims;
    let Scratch {
        a,
        scores,
        o,
        a8,
        a_u8,
        p8,
        q8,
        q_scales,
        p_scales,
    } = scratch;
    let (ql, ol) = (spec.q, spec.out);
    let scores = room(scores, rows * n);
    let o = room(o, rows * dv);
    let probabilities = |scores: &mut [f32]| {
        for row in scores.chunks_exact_mut(n) {
            spec.before.iter().for_each(|s| s.apply(row));
            activations::softmax(row);
            spec.after.iter().for_each(|s| s.apply(row));
        }
    };
    match packed {
        Packed::F32 { keys, values } => {
            let a = room(a, rows * d);
            for (i, dst) in a.chunks_exact_mut(d).enumerate() {
                let base = hh * ql.head + (r0 + i) * ql.row;
                if ql.col == 1 {
                    dst.copy_from_slice(&q[base..base + d]);
                } else {
                    for (c, x) in dst.iter_mut().enumerate() {
                        *x = q[base + c * ql.col];
                    }
                }
            }
            sgemm::matmul_here(a, keys, None, scores)?;
            probabilities(scores);
            sgemm::matmul_here(scores, values, None, o)?;
        }
        Packed::Int8 {
            keys,
            key_scales,
            key_offsets,
            values,
            value_scales,
            value_offsets,
        } => {
            // Q as unsigned bytes (q + 128): 128·Σ_k k per key comes off each sum
            let lq = keys.padded_k();
            let tmp = room(a, d);
            let a8 = room(a8, d);
            let a_u8 = room(a_u8, rows * lq);
            q_scales.clear();
            for (i, dst) in a_u8.chunks_exact_mut(lq).enumerate() {
                let src = read_row(q, ql, hh, r0 + i, d, tmp);
                let (lo, hi) = activations::min_max_with_zero(src);
                let amax = hi.max(-lo);
                q_scales.push(amax / 127.0);
                activations::quantize_i8(if amax > 0.0 { 127.0 / amax } else { 0.0 }, 0, src, a8);
                for (x, y) in dst.iter_mut().zip(a8.iter()) {
                    *x = (*y as u8) ^ 0x80;
                }
                dst[d..].fill(0);
            }
            // leading scale steps folded into each row's scale
            let lead = spec
                .before
                .iter()
                .take_while(|s| matches!(s, Step::Scale(_)))
                .count();
            let folded: f32 = spec.before[..lead]
                .iter()
                .map(|s| match s {
                    Step::Scale(x) => *x,
                    Step::FakeQuantize { .. } => 1.0,
                })
                .product();
            // the scores scaled as the tiles hand their sums over (no `i32` rows in between)
            let shared_scores = SharedRows::new(scores);
            qgemm::dots_each(a_u8, keys, |row, c0, sums| {
                // SAFETY: `dots_each` hands each (row, column) over once, inside `rows × n`.
                let dst = unsafe { shared_scores.segment(row * n + c0, sums.len()) };
                let (offsets, scales) = (&key_offsets[c0..], &key_scales[c0..]);
                activations::scale_dots(sums, offsets, q_scales[row] * folded, scales, dst);
            })?;
            let lp = values.padded_k();
            let p8 = room(p8, rows * lp);
            p_scales.clear();
            // a QDQ file's probabilities are quantised with a zero point of −128: their
            // bytes `q + 128` are the product's operand as they are
            let qdq = match spec.after.as_slice() {
                [
                    Step::FakeQuantize {
                        q_scale,
                        q_zero,
                        dq_scale,
                        dq_zero: -128,
                    },
                ] => Some((*q_scale, *q_zero, *dq_scale)),
                _ => None,
            };
            let q8 = room(q8, n);
            for (row, bytes) in scores.chunks_exact_mut(n).zip(p8.chunks_exact_mut(lp)) {
                spec.before[lead..].iter().for_each(|s| s.apply(row));
                bytes[n..].fill(0);
                let bytes = &mut bytes[..n];
                if spec.after.is_empty() {
                    p_scales.push(activations::softmax_u8(row, bytes));
                    continue;
                }
                activations::softmax(row);
                if let Some((q_scale, q_zero, dq_scale)) = qdq {
                    activations::quantize_i8(q_scale, q_zero, row, q8);
                    for (b, q) in bytes.iter_mut().zip(q8.iter()) {
                        *b = (*q as u8) ^ 0x80;
                    }
                    p_scales.push(dq_scale);
                    continue;
                }
                spec.after.iter().for_each(|s| s.apply(row));
                p_scales.extend(quantize_rows_u8(row, n, n, bytes));
            }
            // the outputs scaled as the tiles hand them over, into the output itself where
            // its rows are dense
            let dense = ol.col == 1;
            let shared_o = SharedRows::new(o);
            qgemm::dots_each(p8, values, |row, c0, sums| {
                // SAFETY: each (row, column) once, as above; in `out`, each task writes its
                // own queries' rows, which are dense (`attend` checks the layout).
                let dst = unsafe {
                    if dense {
                        out.segment(hh * ol.head + (r0 + row) * ol.row + c0, sums.len())
                    } else {
                        shared_o.segment(row * dv + c0, sums.len())
                    }
                };
                let (offsets, scales) = (&value_offsets[c0..], &value_scales[c0..]);
                activations::scale_dots(sums, offsets, p_scales[row], scales, dst);
            })?;
            if dense {
                return Ok(());
            }
        }
    }
    for (i, row) in o.chunks_exact(dv).enumerate() {
        let base = hh * ol.head + (r0 + i) * ol.row;
        if ol.col == 1 {
            // SAFETY: `out` is dense for this layout (checked by `attend`), so each (head,
            // query) row has its own `dv` values, and each task writes its own queries.
            unsafe { out.segment(base, dv) }.copy_from_slice(row);
            continue;
        }
        for (c, x) in row.iter().enumerate() {
            // SAFETY: as above, one (head, query, channel) at a time.
            unsafe { out.segment(base + c * ol.col, 1)[0] = *x };
        }
    }
    Ok(())
}

/// Each row of non-negative `xs` (probabilities, rows of `len`) as uint8 from 0 into `ys`
/// (rows of `stride`, the rest left as it is), each with its maximum over 255 as its scale:
/// the rows' scales.
fn quantize_rows_u8(xs: &[f32], len: usize, stride: usize, ys: &mut [u8]) -> Vec<f32> {
    xs.chunks_exact(len)
        .zip(ys.chunks_exact_mut(stride))
        .map(|(x, y)| {
            let y = &mut y[..len];
            let scale = activations::min_max_with_zero(x).1 / 255.0;
            if scale > 0.0 {
                activations::quantize_u8(scale, 0, x, y);
            } else {
                y.fill(0);
            }
            scale
        })
        .collect()
}

/// [`attend`] as a graph operator: inputs `Q`, `K`, `V` (`f32`, the shapes the graph gave
/// them), output the product with `V`'s shape in the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FusedAttention {
    /// What to compute.
    pub spec: Spec,
    /// The shapes of `Q`, `K` and `V`.
    pub in_shapes: [TVec<usize>; 3],
    /// The output's shape.
    pub out_shape: TVec<usize>,
}

impl Op for FusedAttention {
    fn name(&self) -> StaticName {
        "DinoedgeAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?}, before the softmax {:?}, after it {:?}",
            self.spec.dims, self.spec.before, self.spec.after
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FusedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3, "{} inputs for Q, K, V", inputs.len());
        for (input, want) in inputs.iter().zip(&self.in_shapes) {
            ensure!(
                input.shape() == &**want,
                "an input of shape {:?} for {want:?}",
                input.shape()
            );
        }
        let plain: Vec<_> = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<_>>()?;
        let (q, k, v) = (
            plain[0].as_slice::<f32>()?,
            plain[1].as_slice::<f32>()?,
            plain[2].as_slice::<f32>()?,
        );
        let mut dst = unsafe { Tensor::uninitialized_dt(f32::datum_type(), &self.out_shape)? };
        {
            let mut out = dst.try_as_plain_ram_mut()?;
            attend(&self.spec, q, k, v, out.as_slice_mut::<f32>()?)
                .map_err(|e| format_err!("{e}"))?;
        }
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for FusedAttention {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

/// The role of an axis of a two-input `EinSum` longer than one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// In both inputs and the output (a head).
    Batch,
    /// In the first input and the output.
    Left,
    /// In the second input and the output.
    Right,
    /// In both inputs, summed over.
    Sum,
}

/// One axis of a product: its role, its length, and its position in each input and the
/// output.
#[derive(Clone, Copy, Debug)]
struct Axis {
    role: Role,
    len: usize,
    at: [Option<usize>; 3],
}

/// The strides of a dense row-major tensor of shape `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// A plain `f32` product of two activations, as its axes longer than one, each of one role:
/// at most one batch axis, exactly one of every other role; and its three shapes.
fn product_axes(model: &TypedModel, node: &TypedNode) -> Option<(Vec<Axis>, [TVec<usize>; 3])> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some() || node.inputs.len() != 2 || op.operating_dt != DatumType::F32 {
        return None;
    }
    let fact = |o: OutletId| model.outlet_fact(o).ok();
    let (a, b) = (fact(node.inputs[0])?, fact(node.inputs[1])?);
    let c = fact(OutletId::new(node.id, 0))?;
    if [a, b, c]
        .iter()
        .any(|f| f.datum_type != DatumType::F32 || f.konst.is_some())
    {
        return None;
    }
    let shapes: [TVec<usize>; 3] = [
        a.shape.as_concrete()?.into(),
        b.shape.as_concrete()?.into(),
        c.shape.as_concrete()?.into(),
    ];
    let mut axes = vec![];
    for ax in op.axes.iter_all_axes() {
        let mut at = [None; 3];
        for (slot, positions) in at
            .iter_mut()
            .zip([&ax.inputs[0], &ax.inputs[1], &ax.outputs[0]])
        {
            match positions.as_slice() {
                [] => {}
                [p] => *slot = Some(*p),
                _ => return None,
            }
        }
        let lens: Vec<usize> = at
            .iter()
            .zip(&shapes)
            .filter_map(|(p, s)| p.map(|p| s[p]))
            .collect();
        let len = *lens.first()?;
        if lens.iter().any(|l| *l != len) {
            return None;
        }
        if len == 1 {
            continue;
        }
        let role = match at.map(|p| p.is_some()) {
            [true, true, true] => Role::Batch,
            [true, false, true] => Role::Left,
            [false, true, true] => Role::Right,
            [true, true, false] => Role::Sum,
            _ => return None,
        };
        axes.push(Axis { role, len, at });
    }
    let count = |r: Role| axes.iter().filter(|a| a.role == r).count();
    let ok = count(Role::Batch) <= 1
        && count(Role::Left) == 1
        && count(Role::Right) == 1
        && count(Role::Sum) == 1;
    ok.then_some((axes, shapes))
}

/// The axis of `role`, if any.
fn of(axes: &[Axis], role: Role) -> Option<&Axis> {
    axes.iter().find(|a| a.role == role)
}

/// The layout of input or output `io` (0, 1, 2) with `head`, `row` and `col` the roles of its
/// head, row and column axes.
fn layout(axes: &[Axis], shape: &[usize], io: usize, row: Role, col: Role) -> Option<Layout> {
    let s = strides(shape);
    let stride = |r: Role| of(axes, r).and_then(|a| a.at[io]).map(|p| s[p]);
    Some(Layout {
        head: of(axes, Role::Batch).map_or(Some(0), |a| a.at[io].map(|p| s[p]))?,
        row: stride(row)?,
        col: stride(col)?,
    })
}

/// A constant scalar operand of a `Mul` of `from` by it, keeping `from`'s shape.
fn scalar_factor(model: &TypedModel, node: &TypedNode, from: OutletId) -> Option<f32> {
    let other = crate::ops::other_operand(node, "Mul", from)?;
    let k = model.outlet_fact(other).ok()?.konst.clone()?;
    let same = model.outlet_fact(from).ok()?.shape
        == model.outlet_fact(OutletId::new(node.id, 0)).ok()?.shape;
    if k.len() != 1 || !same {
        return None;
    }
    k.cast_to_scalar::<f32>().ok()
}

/// The static quantiser `node` (`f32 → i8`): its multiplier and zero point.
fn quantizer(node: &TypedNode) -> Option<(f32, i8)> {
    let op = node.op_as::<ElementWiseOp>()?;
    let q = op.0.downcast_ref::<QuantizeLinearI8>()?;
    op.1.is_none().then_some((q.scale, q.zero_point))
}

/// `quantize → dequantize` as one step, from the two nodes.
fn fake_quantize(q: &TypedNode, dq: &TypedNode) -> Option<Step> {
    let (q_scale, q_zero) = quantizer(q)?;
    let dq_op = dq.op_as::<DequantizeLinearF32>()?;
    Some(Step::FakeQuantize {
        q_scale,
        q_zero,
        dq_scale: dq_op.scale,
        dq_zero: i8::try_from(dq_op.zero_point).ok()?,
    })
}

/// A `Cast` that changes nothing (`f32` to `f32`).
fn is_identity_cast(model: &TypedModel, node: &TypedNode) -> bool {
    node.op_as::<Cast>().is_some_and(|c| c.to == DatumType::F32)
        && node.inputs.len() == 1
        && model
            .outlet_fact(node.inputs[0])
            .is_ok_and(|f| f.datum_type == DatumType::F32)
}

/// Whether `outlet` feeds exactly one node and is no model output.
fn private(model: &TypedModel, outlet: OutletId) -> bool {
    model.outlet_successors(outlet).len() == 1 && !model.outputs.contains(&outlet)
}

/// From the softmax's input back to `Q·Kᵀ`: the product's node and the steps between, in
/// order.
fn walk_back(model: &TypedModel, softmax: &TypedNode) -> Option<(usize, Vec<Step>)> {
    let mut steps = vec![];
    let mut cur = softmax.inputs[0];
    loop {
        if !private(model, cur) {
            return None;
        }
        let node = model.node(cur.node);
        if node.op_is::<EinSum>() {
            steps.reverse();
            return Some((node.id, steps));
        }
        if is_identity_cast(model, node) {
            cur = node.inputs[0];
        } else if node.op_is::<DequantizeLinearF32>() {
            let q = model.node(node.inputs[0].node);
            steps.push(fake_quantize(q, node)?);
            if !private(model, node.inputs[0]) {
                return None;
            }
            cur = q.inputs[0];
        } else {
            let factor = node
                .inputs
                .iter()
                .find_map(|i| scalar_factor(model, node, *i).map(|s| (s, *i)));
            let (s, from) = factor?;
            steps.push(Step::Scale(s));
            cur = from;
        }
    }
}

/// From the softmax's output forward to the product with `V`: that node and the steps
/// between, in order.
fn walk_forward(model: &TypedModel, softmax: &TypedNode) -> Option<(usize, Vec<Step>)> {
    let mut steps = vec![];
    let mut cur = OutletId::new(softmax.id, 0);
    loop {
        let node = crate::ops::sole_reader(model, cur)?;
        if node.op_is::<EinSum>() {
            return (node.inputs.first() == Some(&cur)).then_some((node.id, steps));
        }
        let unit_axis = match node.op_as::<AxisOp>() {
            Some(AxisOp::Add(_)) => true,
            Some(AxisOp::Rm(axis)) => model
                .outlet_fact(cur)
                .ok()
                .and_then(|f| f.shape.as_concrete().map(|s| s.get(*axis) == Some(&1)))
                .unwrap_or(false),
            _ => false,
        };
        if unit_axis || is_identity_cast(model, node) {
            cur = OutletId::new(node.id, 0);
        } else if quantizer(node).is_some() {
            let q_out = OutletId::new(node.id, 0);
            let dq = crate::ops::sole_reader(model, q_out)?;
            steps.push(fake_quantize(node, dq)?);
            cur = OutletId::new(dq.id, 0);
        } else {
            return None;
        }
    }
}

/// One attention to fuse: the product with `V` (whose output the new op replaces), the op
/// and its inputs `Q`, `K`, `V`.
type Fusion = (usize, FusedAttention, [OutletId; 3]);

fn candidate(model: &TypedModel, node: &TypedNode, int8: bool) -> Option<Fusion> {
    let softmax = node.op_as::<Softmax>()?;
    if softmax.kind != SoftmaxKind::Softmax
        || softmax.axes.len() != 1
        || softmax.quant_output_dt.is_some()
    {
        return None;
    }
    let (qk, before) = walk_back(model, node)?;
    let (pv, after) = walk_forward(model, node)?;
    let (qk_axes, qk_shapes) = product_axes(model, model.node(qk))?;
    let (pv_axes, pv_shapes) = product_axes(model, model.node(pv))?;
    // the shapes before the softmax are the product's (each step keeps its input's shape)
    let sm_fact = model.outlet_fact(node.inputs[0]).ok()?;
    if sm_fact.shape.as_concrete()? != &*qk_shapes[2] {
        return None;
    }
    let keys_axis = of(&qk_axes, Role::Right)?.at[2]? == softmax.axes[0];
    let queries_axis = of(&qk_axes, Role::Left)?.at[2]? == softmax.axes[0];
    // the keys are the operand whose free axis the softmax runs over
    let (q_in, k_in, q_role, k_role) = match (keys_axis, queries_axis) {
        (true, false) => (0, 1, Role::Left, Role::Right),
        (false, true) => (1, 0, Role::Right, Role::Left),
        _ => return None,
    };
    // the probabilities' axes longer than one, in order, keep the scores' roles (only unit
    // axes come and go between them): batch to batch, queries to rows, keys to the sum
    let mut s_roles: Vec<(usize, Role)> = qk_axes
        .iter()
        .filter_map(|a| a.at[2].map(|p| (p, a.role)))
        .collect();
    s_roles.sort_unstable_by_key(|(p, _)| *p);
    let mut p_roles: Vec<(usize, Role)> = pv_axes
        .iter()
        .filter_map(|a| a.at[0].map(|p| (p, a.role)))
        .collect();
    p_roles.sort_unstable_by_key(|(p, _)| *p);
    let expected = |s: Role| match s {
        Role::Batch => Some(Role::Batch),
        r if r == q_role => Some(Role::Left),
        r if r == k_role => Some(Role::Sum),
        _ => None,
    };
    let mapped = s_roles.len() == p_roles.len()
        && s_roles
            .iter()
            .zip(&p_roles)
            .all(|((_, s), (_, p))| expected(*s) == Some(*p));
    if !mapped {
        return None;
    }
    let heads = of(&qk_axes, Role::Batch).map_or(1, |a| a.len);
    let dims = Dims {
        heads,
        queries: of(&qk_axes, q_role)?.len,
        keys: of(&qk_axes, k_role)?.len,
        depth: of(&qk_axes, Role::Sum)?.len,
        value_depth: of(&pv_axes, Role::Right)?.len,
    };
    let pv_ok = of(&pv_axes, Role::Batch).map_or(1, |a| a.len) == heads
        && of(&pv_axes, Role::Sum)?.len == dims.keys
        && of(&pv_axes, Role::Left)?.len == dims.queries;
    if !pv_ok {
        return None;
    }
    let spec = Spec {
        dims,
        q: layout(&qk_axes, &qk_shapes[q_in], q_in, q_role, Role::Sum)?,
        k: layout(&qk_axes, &qk_shapes[k_in], k_in, k_role, Role::Sum)?,
        v: layout(&pv_axes, &pv_shapes[1], 1, Role::Sum, Role::Right)?,
        out: layout(&pv_axes, &pv_shapes[2], 2, Role::Left, Role::Right)?,
        before,
        after,
        int8,
    };
    let (qk_node, pv_node) = (model.node(qk), model.node(pv));
    let op = FusedAttention {
        spec,
        in_shapes: [
            qk_shapes[q_in].clone(),
            qk_shapes[k_in].clone(),
            pv_shapes[1].clone(),
        ],
        out_shape: pv_shapes[2].clone(),
    };
    Some((
        pv,
        op,
        [
            qk_node.inputs[q_in],
            qk_node.inputs[k_in],
            pv_node.inputs[1],
        ],
    ))
}

/// Whether to fuse attention: yes, unless `DINOEDGE_ATTENTION=tract` (to measure tract's
/// chain against the fused op, or to rule it out). `DINOEDGE_PRODUCTS=tract` turns it off
/// with every other dinoedge product.
pub fn enabled() -> bool {
    std::env::var("DINOEDGE_ATTENTION").map_or(true, |v| v != "tract")
}

/// Whether an int8 file's attention runs in int8: on an int8 graph (one with int8 weight
/// products) whose CPU has the int8 kernel, unless `DINOEDGE_ATTENTION=f32`.
///
/// Both products then quantise their operands symmetrically, with finer scales than the
/// file's own per-tensor activations: `Q` per query row, `K` per key, the probabilities per
/// row (as `u8` from 0), `V` per channel; the sums are exact in `i32`. A QDQ file's
/// probabilities are already 8-bit values, so their second quantisation loses nothing.
pub fn int8_products(model: &TypedModel) -> bool {
    let int8_graph = model
        .nodes()
        .iter()
        .any(|n| n.op_as::<EinSum>().is_some_and(|e| e.q_params.is_some()));
    int8_graph
        && qgemm::available()
        && std::env::var("DINOEDGE_ATTENTION").map_or(true, |v| v != "f32")
}

/// Replace every attention chain the module's text describes by one [`FusedAttention`].
/// Returns how many were replaced.
pub fn swap_attention(model: &mut TypedModel) -> TractResult<usize> {
    let int8 = int8_products(model);
    let fusions: Vec<Fusion> = model
        .nodes()
        .iter()
        .filter_map(|n| candidate(model, n, int8))
        .collect();
    for (pv, op, inputs) in &fusions {
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, inputs)?;
        let name = format!("{}.dinoedge_attention", model.node(*pv).name);
        let out = patch.wire_node(name, op.clone(), &taps)?;
        patch.shunt_outside(model, OutletId::new(*pv, 0), out[0])?;
        patch.apply(model)?;
    }
    if !fusions.is_empty() {
        model.compact()?;
    }
    Ok(fusions.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dinoedge_testkit::noise;

    /// The definition, in f64, each step applied in f32 as the op does.
    fn reference(spec: &Spec, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let Dims {
            heads,
            queries,
            keys,
            depth,
            value_depth,
        } = spec.dims;
        let (ql, kl, vl, ol) = (spec.q, spec.k, spec.v, spec.out);
        let mut out = vec![0f32; heads * queries * value_depth];
        for h in 0..heads {
            for i in 0..queries {
                let mut row: Vec<f32> = (0..keys)
                    .map(|j| {
                        (0..depth)
                            .map(|c| {
                                q[h * ql.head + i * ql.row + c * ql.col] as f64
                                    * k[h * kl.head + j * kl.row + c * kl.col] as f64
                            })
                            .sum::<f64>() as f32
                    })
                    .collect();
                spec.before.iter().for_each(|s| s.apply(&mut row));
                let max = row.iter().fold(f64::NEG_INFINITY, |m, x| m.max(*x as f64));
                let e: Vec<f64> = row.iter().map(|x| (*x as f64 - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let mut row: Vec<f32> = e.iter().map(|x| (x / sum) as f32).collect();
                spec.after.iter().for_each(|s| s.apply(&mut row));
                for c in 0..value_depth {
                    let x: f64 = (0..keys)
                        .map(|j| row[j] as f64 * v[h * vl.head + j * vl.row + c * vl.col] as f64)
                        .sum();
                    out[h * ol.head + i * ol.row + c * ol.col] = x as f32;
                }
            }
        }
        out
    }

    fn check(spec: &Spec, tol: f32) {
        let Dims {
            heads,
            queries,
            keys,
            depth,
            value_depth,
        } = spec.dims;
        let q = noise(spec.q.extent(heads, queries, depth), 1);
        let k = noise(spec.k.extent(heads, keys, depth), 2);
        let v = noise(spec.v.extent(heads, keys, value_depth), 3);
        let want = reference(spec, &q, &k, &v);
        let mut got = vec![f32::NAN; want.len()];
        attend(spec, &q, &k, &v, &mut got).unwrap();
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("worst difference {worst} (int8: {})", spec.int8);
        assert!(worst <= tol, "worst difference {worst} for {spec:?}");
    }

    fn dims(heads: usize, queries: usize, keys: usize) -> Dims {
        Dims {
            heads,
            queries,
            keys,
            depth: 20,
            value_depth: 52,
        }
    }

    #[test]
    fn fused_attention_matches_its_definition_in_every_layout() {
        let d = dims(3, 70, 70);
        // heads first ([h, n, c]) for everything
        let heads_first = |rows: usize, cols: usize| Layout {
            head: rows * cols,
            row: cols,
            col: 1,
        };
        // tokens first ([n, h, c]), as DINOv2's reshaped projections lie
        let tokens_first = |cols: usize| Layout {
            head: cols,
            row: d.heads * cols,
            col: 1,
        };
        let plain = Spec {
            dims: d,
            q: heads_first(70, 20),
            k: heads_first(70, 20),
            v: heads_first(70, 52),
            out: heads_first(70, 52),
            before: vec![Step::Scale(0.5)],
            after: vec![],
            int8: false,
        };
        check(&plain, 1e-5);
        let dinov2 = Spec {
            q: tokens_first(20),
            k: tokens_first(20),
            v: tokens_first(52),
            out: tokens_first(52),
            ..plain.clone()
        };
        check(&dinov2, 1e-5);
        // K transposed ([h, c, n]) and one head
        let one = Spec {
            dims: dims(1, 33, 45),
            q: heads_first(33, 20),
            k: Layout {
                head: 0,
                row: 1,
                col: 45,
            },
            v: heads_first(45, 52),
            out: heads_first(33, 52),
            ..plain.clone()
        };
        check(&one, 1e-5);
        // int8 products: within what 8-bit operands allow (outputs here are ~0.1)
        for spec in [plain, dinov2, one] {
            check(&Spec { int8: true, ..spec }, 4e-3);
        }
    }

    #[test]
    fn steps_around_the_softmax_apply_in_order() {
        let d = dims(2, 40, 40);
        let l = |cols: usize| Layout {
            head: 40 * cols,
            row: cols,
            col: 1,
        };
        let spec = Spec {
            dims: d,
            q: l(20),
            k: l(20),
            v: l(52),
            out: l(52),
            before: vec![
                Step::FakeQuantize {
                    q_scale: 25.0,
                    q_zero: -5,
                    dq_scale: 0.04,
                    dq_zero: -5,
                },
                Step::Scale(0.125),
            ],
            after: vec![Step::FakeQuantize {
                q_scale: 2000.0,
                q_zero: -128,
                dq_scale: 5e-4,
                dq_zero: -128,
            }],
            int8: false,
        };
        // the fake quantisation makes a rounding step of 5e-4 in each probability: the
        // kernels must land on the same side of it nearly always
        check(&spec, 1e-3);
        check(&Spec { int8: true, ..spec }, 4e-3);
    }

    #[test]
    fn operands_too_short_or_an_output_with_holes_are_errors() {
        let l = Layout {
            head: 400,
            row: 20,
            col: 1,
        };
        let spec = Spec {
            dims: Dims {
                heads: 2,
                queries: 20,
                keys: 20,
                depth: 20,
                value_depth: 20,
            },
            q: l,
            k: l,
            v: l,
            out: l,
            before: vec![],
            after: vec![],
            int8: false,
        };
        let x = vec![0f32; 800];
        let mut out = vec![0f32; 800];
        assert!(attend(&spec, &x[..799], &x, &x, &mut out).is_err());
        let holes = Spec {
            out: Layout { row: 40, ..l },
            ..spec.clone()
        };
        assert!(attend(&holes, &x, &x, &x, &mut out).is_err());
        assert!(attend(&spec, &x, &x, &x, &mut out).is_ok());
    }
}
