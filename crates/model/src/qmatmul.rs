//! The products of a compiled graph whose weights are constant, on dinoedge's own kernels:
//! [`dinoedge_kernels::qgemm`] (int8) and [`dinoedge_kernels::sgemm`] (`f32`).
//!
//! tract-onnx reads `MatMulInteger` as an `EinSum` with quantisation inputs; dinoedge's
//! earlier passes ([`crate::ops::fuse_dequantize`]) leave it followed by
//! [`DequantizeI32`](crate::ops::DequantizeI32) (dynamic int8: one scale, a bias) or
//! [`ScaleI32`](crate::ops::ScaleI32) (QDQ: a scale per column). [`swap_products`] replaces
//! each such pair whose weights are constant by one [`MatMulInt8`], which holds the weights
//! packed once and writes `f32` directly, and each `f32` `EinSum` with constant weights (and
//! the bias `Add` after it) by one [`MatMulF32`]. Attention is fused before this pass runs
//! ([`crate::attention`]); the products of activations by activations it leaves (the block
//! whose attention map is a model output) become [`BatchedMatMulF32`].
//!
//! It runs on the decluttered graph just before tract optimises it (not on what the compile
//! cache stores), and only for the kernels this CPU runs ([`Kernels::available`]): x86-64
//! with AVX-512 (VNNI for int8) or AVX2 + FMA. Elsewhere (ARM's NEON and `sdot`) tract's
//! own kernels run.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use crate::ops::{DequantizeI32, ScaleI32};
use dinoedge_kernels::qgemm::{self, Activations, Epilogue, PackedWeights, Sums, Weights};
use dinoedge_kernels::sgemm::{self, PackedF32};

/// What follows the exact sums.
#[derive(Clone, Debug, PartialEq)]
pub enum Dequantize {
    /// `f32(c) · scale + bias[n]`; the scale is the operator's third input, one value or (a
    /// per-channel file's) one per column.
    Scale {
        /// One value per column.
        bias: Arc<Vec<f32>>,
    },
    /// `f32(c) · scales[n]`.
    Columns {
        /// One value per column.
        scales: Arc<Vec<f32>>,
    },
}

/// An int8 product with constant weights and its dequantisation: inputs `(a: u8 or i8
/// [.., M, K], a_zero_point: scalar of a's type)` and, for [`Dequantize::Scale`], `scale: f32
/// scalar`; output `f32 [.., M, N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MatMulInt8 {
    /// The weights, packed.
    pub weights: Arc<PackedWeights>,
    /// The epilogue.
    pub dequantize: Dequantize,
    /// The output's shape (`[.., M, N]`, maybe with other unit axes than the input's).
    pub out_shape: TVec<usize>,
    /// A QDQ file's requantisation of the output, fused in by [`fuse_requantize`].
    pub requantize: Option<Requantize>,
}

/// A static `QuantizeLinear` to int8 and the `DequantizeLinear` back to `f32` after it (a QDQ
/// file's product outputs go through such a pair before their bias is added), and the bias
/// `Add` after them where there is one, applied to the product's output as its rows are
/// written: tract's operators' arithmetic ([`crate::ops::FastQuantizeLinearI8`],
/// [`crate::ops::FastDequantizeLinearF32`], the `f32` sum), bit for bit, without the int8
/// tensor between them and the passes over the whole output.
#[derive(Clone, Debug, PartialEq)]
pub struct Requantize {
    /// The quantiser's multiplier (1 / ONNX scale, as tract stores it).
    pub q_scale: f32,
    /// The quantiser's zero point.
    pub q_zero: i8,
    /// The dequantiser's scale.
    pub dq_scale: f32,
    /// The dequantiser's zero point.
    pub dq_zero: i32,
    /// The bias added after the dequantiser, one value per column.
    pub bias: Option<Arc<Vec<f32>>>,
}

impl Requantize {
    /// `xs`, the columns `c0..` of one output row, through the quantiser, the dequantiser and
    /// the bias, in place.
    pub fn apply(&self, c0: usize, xs: &mut [f32]) {
        use dinoedge_kernels::activations::{requantize_i8, requantize_i8_add};
        let (q, qz, dq, dqz) = (self.q_scale, self.q_zero, self.dq_scale, self.dq_zero);
        match &self.bias {
            Some(bias) => requantize_i8_add(q, qz, dq, dqz, &bias[c0..c0 + xs.len()], xs),
            None => requantize_i8(q, qz, dq, dqz, xs),
        }
    }
}

impl Eq for MatMulInt8 {}

impl std::hash::Hash for MatMulInt8 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.weights.hash(state);
        self.out_shape.hash(state);
        let (tag, values) = match &self.dequantize {
            Dequantize::Scale { bias } => (0u8, bias),
            Dequantize::Columns { scales } => (1u8, scales),
        };
        tag.hash(state);
        for v in values.iter() {
            v.to_bits().hash(state);
        }
        if let Some(r) = &self.requantize {
            (
                r.q_scale.to_bits(),
                r.q_zero,
                r.dq_scale.to_bits(),
                r.dq_zero,
            )
                .hash(state);
            for v in r.bias.iter().flat_map(|b| b.iter()) {
                v.to_bits().hash(state);
            }
        }
    }
}

impl Op for MatMulInt8 {
    fn name(&self) -> StaticName {
        "DinoedgeMatMulInt8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let kind = match self.dequantize {
            Dequantize::Scale { .. } => "scale + bias",
            Dequantize::Columns { .. } => "per-column scales",
        };
        Ok(vec![format!(
            "K {} N {}, {kind}{}{}",
            self.weights.k(),
            self.weights.n(),
            match (self.weights.narrow(), self.weights.split()) {
                (true, _) => ", 7-bit weights".to_string(),
                (false, 0) => String::new(),
                (false, n) => format!(", {n} weights split off for the AVX2 byte kernel"),
            },
            match &self.requantize {
                Some(Requantize { bias: Some(_), .. }) => ", requantised (QDQ) and the bias added",
                Some(_) => ", requantised (QDQ)",
                None => "",
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MatMulInt8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.weights.k(), self.weights.n());
        let a = &inputs[0];
        let shape = a.shape();
        let rows = self.out_shape.iter().product::<usize>() / n;
        ensure!(
            a.len() == rows * k,
            "activations {shape:?} for {rows} rows of K = {k}"
        );
        let first = |t: &TValue| -> TractResult<Tensor> {
            let t = t.cast_to::<i32>()?.into_owned();
            ensure!(t.len() == 1, "a zero point or scale of {} values", t.len());
            Ok(t)
        };
        let zero = *first(&inputs[1])?
            .try_as_plain_ram()?
            .as_slice::<i32>()?
            .first()
            .context("empty zero point")?;
        let a_plain = a.try_as_plain_ram()?;
        let acts = match a.datum_type() {
            DatumType::U8 => Activations::U8(a_plain.as_slice::<u8>()?, zero as u8),
            DatumType::I8 => Activations::I8(a_plain.as_slice::<i8>()?, zero as i8),
            dt => bail!("DinoedgeMatMulInt8 takes u8 or i8 activations, not {dt:?}"),
        };
        let scale_plain = match inputs.get(2) {
            Some(s) => Some(s.try_as_plain_ram()?),
            None => None,
        };
        let epilogue = match &self.dequantize {
            Dequantize::Scale { bias } => match *scale_plain
                .as_ref()
                .context("no scale input")?
                .as_slice::<f32>()?
            {
                [scale] => Epilogue::Scale {
                    scale,
                    bias: Some(bias.as_slice()),
                },
                // a per-channel file's: the activations' scale times each column's
                ref scales => Epilogue::ColumnsBias {
                    scales,
                    bias: bias.as_slice(),
                },
            },
            Dequantize::Columns { scales } => Epilogue::Columns(scales.as_slice()),
        };
        let m = a.len() / k;
        ensure!(
            self.out_shape.iter().product::<usize>() == m * n,
            "{m} rows of {n} into {:?}",
            self.out_shape
        );
        let mut dst = unsafe { Tensor::uninitialized_dt(f32::datum_type(), &self.out_shape)? };
        {
            let mut plain = dst.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            match &self.requantize {
                Some(r) => {
                    let step = |c0: usize, xs: &mut [f32]| r.apply(c0, xs);
                    qgemm::matmul_then(&acts, &self.weights, &epilogue, &step, out)
                }
                None => qgemm::matmul(&acts, &self.weights, &epilogue, out),
            }
            .map_err(|e| format_err!("{e}"))?;
        }
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for MatMulInt8 {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

/// The constant behind `outlet`, through reshapes (which keep the values' order).
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    let fact = model.outlet_fact(outlet).ok()?;
    if let Some(k) = &fact.konst {
        return Some(k.clone());
    }
    let node = model.node(outlet.node);
    let op = node.op_as::<AxisOp>()?;
    if matches!(op, AxisOp::Move(..)) || node.inputs.len() != 1 {
        return None;
    }
    konst(model, node.inputs[0])
}

/// Every value of a constant, as `T`, when it has exactly `len` of them (1 for a scalar).
fn values<T: Datum>(model: &TypedModel, outlet: OutletId, len: usize) -> Option<Vec<T>> {
    let k = konst(model, outlet)?;
    let k = k.cast_to::<T>().ok()?;
    let plain = k.try_as_plain_ram().ok()?;
    let v = plain.as_slice::<T>().ok()?;
    (v.len() == len).then(|| v.to_vec())
}

/// `(K, N, output shape)` when `node` is the plain product `[.., M, K] x [1.., K, N] ->
/// [.., M, N]` with constant weights of that shape: the output's rows are the input's rows in
/// order (its other axes in the same order, unit axes dropped or added). `K` may be several
/// axes, the last of the input's and the same ones in the same order before `N` in the
/// weights (`mhd,hdn->mn`: a QDQ file's attention output, quantised before its reshape).
fn product_shape(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> Option<(usize, usize, TVec<usize>)> {
    let a = model.outlet_fact(node.inputs[0]).ok()?;
    let b = model.outlet_fact(*node.inputs.get(1)?).ok()?;
    let out = model.outlet_fact(OutletId::new(node.id, 0)).ok()?;
    let (ra, rb, ro) = (a.rank(), b.rank(), out.rank());
    let adims = a.shape.as_concrete()?;
    let bdims = b.shape.as_concrete()?;
    let odims: TVec<usize> = out.shape.as_concrete()?.into();
    if ra < 2 || rb < 2 || ro < 2 {
        return None;
    }
    let axes = &op.axes;
    let at = |io: InOut, i: usize| axes.axis((io, i)).ok();
    // the contracted axes: the input's last ones that the output does not have
    let c = (0..ra)
        .rev()
        .take_while(|i| at(InOut::In(0), *i).is_some_and(|ax| ax.outputs[0].is_empty()))
        .count();
    if c == 0 || c >= ra || c >= rb || bdims[..rb - 1 - c].iter().any(|d| *d != 1) {
        return None;
    }
    let same_k = (0..c).all(|j| {
        let (ka, kb) = (
            at(InOut::In(0), ra - c + j),
            at(InOut::In(1), rb - 1 - c + j),
        );
        ka.zip(kb).is_some_and(|(ka, kb)| ka.repr == kb.repr)
            && adims[ra - c + j] == bdims[rb - 1 - c + j]
    });
    let (k, n) = (adims[ra - c..].iter().product::<usize>(), bdims[rb - 1]);
    let nb = at(InOut::In(1), rb - 1)?;
    let ma = at(InOut::In(0), ra - c - 1)?;
    // every other axis of `a` in the output in order, or a unit axis left out
    let mut last = None;
    let in_order =
        (0..ra - c).all(
            |i| match at(InOut::In(0), i).map(|ax| ax.outputs[0].as_slice()) {
                Some([p]) => {
                    let ok = last.is_none_or(|l| *p > l);
                    last = Some(*p);
                    ok
                }
                Some([]) => adims[i] == 1,
                _ => false,
            },
        );
    let rows: usize = adims[..ra - c].iter().product();
    (same_k
        && nb.outputs[0].as_slice() == [ro - 1]
        && nb.inputs[0].is_empty()
        && ma.outputs[0].as_slice() == [ro - 2]
        && in_order
        && odims.iter().product::<usize>() == rows * n
        && konst(model, node.inputs[1]).is_some())
    .then_some((k, n, odims))
}

/// `(K, N)` when `node` is an int8 product as tract-onnx reads `MatMulInteger`: unit scales,
/// zero offsets, int8 operands.
fn int8_product(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
) -> Option<(usize, usize, TVec<usize>)> {
    if op.q_params != Some(DatumType::I32) || node.inputs.len() != 9 {
        return None;
    }
    let (k, n, out_shape) = product_shape(model, node, op)?;
    let dt = |i: usize| model.outlet_fact(node.inputs[i]).ok().map(|f| f.datum_type);
    let a_zero = model.outlet_fact(node.inputs[3]).ok()?;
    (values::<i32>(model, node.inputs[2], 1) == Some(vec![0])
        && values::<f32>(model, node.inputs[4], 1) == Some(vec![1.0])
        && values::<f32>(model, node.inputs[6], 1) == Some(vec![1.0])
        && values::<i32>(model, node.inputs[7], 1) == Some(vec![0])
        && values::<f32>(model, node.inputs[8], 1) == Some(vec![1.0])
        && matches!(dt(0)?, DatumType::U8 | DatumType::I8)
        && matches!(dt(1)?, DatumType::U8 | DatumType::I8)
        && a_zero.shape.volume() == TDim::from(1))
    .then_some((k, n, out_shape))
}

/// One product to swap: `(einsum, epilogue node, new op, inputs)`.
type Swap = (usize, usize, Box<dyn TypedOp>, TVec<OutletId>);

fn int8_candidate(model: &TypedModel, node: &TypedNode, sums: Sums) -> Option<Swap> {
    let op = node.op_as::<EinSum>()?;
    let (k, n, out_shape) = int8_product(model, node, op)?;
    let b = konst(model, node.inputs[1])?;
    let zero = values::<i32>(model, node.inputs[5], 1)
        .or_else(|| values::<i32>(model, node.inputs[5], n))?;
    let plain = b.try_as_plain_ram().ok()?;
    let weights = match b.datum_type() {
        DatumType::I8 => Weights::I8(plain.as_slice::<i8>().ok()?),
        DatumType::U8 => Weights::U8(plain.as_slice::<u8>().ok()?),
        _ => return None,
    };
    // saturating sums are onnxruntime's for unsigned activations (dynamic int8) only: its QDQ
    // products (signed activations) saturate other pairs (measured: docs/PERFORMANCE.md)
    let unsigned = model.outlet_fact(node.inputs[0]).ok()?.datum_type == DatumType::U8;
    let sums = if unsigned { sums } else { Sums::Exact };
    let weights = Arc::new(PackedWeights::with_sums(weights, k, n, &zero, sums).ok()?);
    let out = OutletId::new(node.id, 0);
    let succ = model.outlet_successors(out);
    if succ.len() != 1 || model.outputs.contains(&out) {
        return None;
    }
    let next = model.node(succ[0].node);
    let (a, a_zero) = (node.inputs[0], node.inputs[3]);
    if next.op_as::<DequantizeI32>().is_some() {
        let bias = values::<f32>(model, next.inputs[2], n)?;
        let op = MatMulInt8 {
            weights,
            dequantize: Dequantize::Scale {
                bias: Arc::new(bias),
            },
            out_shape,
            requantize: None,
        };
        return Some((
            node.id,
            next.id,
            Box::new(op),
            tvec![a, a_zero, next.inputs[1]],
        ));
    }
    if next.op_as::<ScaleI32>().is_some() {
        let scales = values::<f32>(model, next.inputs[1], n)?;
        let op = MatMulInt8 {
            weights,
            dequantize: Dequantize::Columns {
                scales: Arc::new(scales),
            },
            out_shape,
            requantize: None,
        };
        return Some((node.id, next.id, Box::new(op), tvec![a, a_zero]));
    }
    None
}

/// An `f32` product with constant weights, with the `Add` of a per-column constant after
/// it when there is one.
fn f32_candidate(model: &TypedModel, node: &TypedNode) -> Option<Swap> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some() || node.inputs.len() != 2 || op.operating_dt != DatumType::F32 {
        return None;
    }
    let (k, n, out_shape) = product_shape(model, node, op)?;
    if model.outlet_fact(node.inputs[0]).ok()?.datum_type != DatumType::F32 {
        return None;
    }
    let b = konst(model, node.inputs[1])?;
    let plain = b.try_as_plain_ram().ok()?;
    let weights = Arc::new(PackedF32::new(plain.as_slice::<f32>().ok()?, k, n).ok()?);
    let out = OutletId::new(node.id, 0);
    let out_fact = model.outlet_fact(out).ok()?;
    let add = crate::ops::sole_reader(model, out).and_then(|add| {
        let bias = crate::ops::other_operand(add, "Add", out)?;
        let bias_fact = model.outlet_fact(bias).ok()?;
        let dims = bias_fact.shape.as_concrete()?;
        let per_column = dims.last() == Some(&n)
            && dims.len() <= out_fact.rank()
            && dims.iter().rev().skip(1).all(|d| *d == 1);
        let same_shape = model.outlet_fact(OutletId::new(add.id, 0)).ok()?.shape == out_fact.shape;
        (per_column && same_shape && bias_fact.datum_type == DatumType::F32)
            .then(|| values::<f32>(model, bias, n))
            .flatten()
            .map(|v| (add.id, v))
    });
    let (last, bias) = match add {
        Some((id, v)) => (id, Some(Arc::new(F32Bits::vec(v)))),
        None => (node.id, None),
    };
    let op = MatMulF32 {
        weights,
        bias,
        out_shape,
    };
    Some((node.id, last, Box::new(op), tvec![node.inputs[0]]))
}

/// A product of two activations with the same batch axes, `[.., M, K] x [.., K, N] ->
/// [.., M, N]` (attention's `Q·Kᵀ` and `P·V`, one matrix per head).
fn batched_candidate(model: &TypedModel, node: &TypedNode) -> Option<Swap> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some() || node.inputs.len() != 2 || op.operating_dt != DatumType::F32 {
        return None;
    }
    let a = model.outlet_fact(node.inputs[0]).ok()?;
    let b = model.outlet_fact(node.inputs[1]).ok()?;
    let out = model.outlet_fact(OutletId::new(node.id, 0)).ok()?;
    let r = a.rank();
    if r < 2 || b.rank() != r || out.rank() != r {
        return None;
    }
    let (adims, bdims) = (a.shape.as_concrete()?, b.shape.as_concrete()?);
    let at = |io: InOut, i: usize| op.axes.axis((io, i)).ok();
    let linked = |i: usize, j: usize, o: Option<usize>| {
        at(InOut::In(0), i).is_some_and(|ax| {
            ax.inputs[1].as_slice() == [j] && ax.outputs[0].as_slice() == o.as_slice()
        })
    };
    let batch_ok = (0..r - 2).all(|i| linked(i, i, Some(i)) && adims[i] == bdims[i]);
    let m_ok = at(InOut::In(0), r - 2)
        .is_some_and(|ax| ax.inputs[1].is_empty() && ax.outputs[0].as_slice() == [r - 2]);
    let n_ok = at(InOut::In(1), r - 1)
        .is_some_and(|ax| ax.inputs[0].is_empty() && ax.outputs[0].as_slice() == [r - 1]);
    let ok = batch_ok
        && m_ok
        && n_ok
        && linked(r - 1, r - 2, None)
        && a.datum_type == DatumType::F32
        && b.datum_type == DatumType::F32
        && a.konst.is_none()
        && b.konst.is_none();
    ok.then(|| {
        let op = BatchedMatMulF32 {
            out_shape: out.shape.as_concrete().unwrap().into(),
        };
        (
            node.id,
            node.id,
            Box::new(op) as Box<dyn TypedOp>,
            tvec![node.inputs[0], node.inputs[1]],
        )
    })
}

/// A product of two `f32` activations with the same batch axes: inputs `a [.., M, K]`, `b
/// [.., K, N]`, output `[.., M, N]`. Each batch's `b` is packed as it comes (`K·N` values,
/// small next to the `M·K·N` multiply-adds), the batches spread over the threads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchedMatMulF32 {
    /// The output's shape.
    pub out_shape: TVec<usize>,
}

impl Op for BatchedMatMulF32 {
    fn name(&self) -> StaticName {
        "DinoedgeBatchedMatMulF32".into()
    }

    op_as_typed_op!();
}

impl EvalOp for BatchedMatMulF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let r = self.out_shape.len();
        ensure!(
            a.rank() == r && b.rank() == r,
            "ranks {} and {} for {r}",
            a.rank(),
            b.rank()
        );
        let (m, k, n) = (a.shape()[r - 2], a.shape()[r - 1], b.shape()[r - 1]);
        let batches: usize = self.out_shape[..r - 2].iter().product();
        ensure!(
            a.len() == batches * m * k && b.len() == batches * k * n && b.shape()[r - 2] == k,
            "shapes {:?} x {:?} for {:?}",
            a.shape(),
            b.shape(),
            self.out_shape
        );
        let (a_plain, b_plain) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        let (xs, ws) = (a_plain.as_slice::<f32>()?, b_plain.as_slice::<f32>()?);
        let mut dst = unsafe { Tensor::uninitialized_dt(f32::datum_type(), &self.out_shape)? };
        {
            let mut plain = dst.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            tract_linalg::multithread::par_chunks_mut(
                out,
                m * n,
                batches * m * n * k,
                |b0, chunk| {
                    for (i, out) in chunk.chunks_exact_mut(m * n).enumerate() {
                        let bi = b0 + i;
                        let packed = PackedF32::new(&ws[bi * k * n..(bi + 1) * k * n], k, n)
                            .map_err(|e| format_err!("{e}"))?;
                        sgemm::matmul_here(&xs[bi * m * k..(bi + 1) * m * k], &packed, None, out)
                            .map_err(|e| format_err!("{e}"))?;
                    }
                    Ok(())
                },
            )?;
        }
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for BatchedMatMulF32 {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

/// Which products [`swap_products`] moves to dinoedge's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// int8 products ([`dinoedge_kernels::qgemm`]).
    pub int8: bool,
    /// `f32` products ([`dinoedge_kernels::sgemm`]).
    pub f32: bool,
    /// How the AVX2 int8 kernel sums 8-bit signed weights against unsigned activations
    /// (dynamic int8 files): exactly, unless `DINOEDGE_INT8_SUMS=saturating`
    /// ([`Sums::Saturating`]: onnxruntime's AVX2 arithmetic). QDQ products stay exact.
    pub sums: Sums,
}

impl Kernels {
    /// The kernels this CPU runs; none with `DINOEDGE_PRODUCTS=tract` (to measure tract's
    /// products against them, or to rule them out).
    pub fn available() -> Kernels {
        let tract = std::env::var("DINOEDGE_PRODUCTS").is_ok_and(|v| v == "tract");
        Kernels {
            int8: !tract && qgemm::available(),
            f32: !tract && sgemm::available(),
            sums: int8_sums(),
        }
    }

    /// Whether attention fuses onto dinoedge's kernels ([`crate::attention`]): wherever an
    /// `f32` kernel runs, the AVX2 one included (there the fused op in fp32 measured 173–176
    /// against 184–186 ms per fp32 run for tract's chain, 97–102 against 119–138 on 2
    /// threads); never with `DINOEDGE_PRODUCTS=tract`.
    pub fn fused_attention() -> bool {
        let tract = std::env::var("DINOEDGE_PRODUCTS").is_ok_and(|v| v == "tract");
        !tract && sgemm::available()
    }
}

/// `DINOEDGE_INT8_SUMS`: `saturating` for [`Sums::Saturating`], else (unset, `exact`) exact.
/// Another value is a warning (once), then exact. Read once per process.
pub fn int8_sums() -> Sums {
    static SUMS: std::sync::OnceLock<Sums> = std::sync::OnceLock::new();
    *SUMS.get_or_init(|| match std::env::var("DINOEDGE_INT8_SUMS").as_deref() {
        Ok("saturating") => Sums::Saturating,
        Ok("exact") | Ok("") | Err(_) => Sums::Exact,
        Ok(other) => {
            tracing::warn!("DINOEDGE_INT8_SUMS={other:?} is not `exact` or `saturating`: exact");
            Sums::Exact
        }
    })
}

/// In an optimised graph whose static quantisers are dinoedge's ([`crate::ops::swap_static_quantizers`],
/// [`crate::ops::swap_static_dequantizers`]), each [`MatMulInt8`] → `FastQuantizeLinearI8` →
/// `FastDequantizeLinearF32` chain (a QDQ file's requantised product output: 72 of ViT-S's 96
/// products), where each link is the only reader of the one before and no link's output is a
/// model output, becomes the product alone with [`Requantize`], and with it the `Add` of a
/// per-column constant after the chain where that `Add` is the dequantiser's only reader (the
/// bias of 48 of the 72): the same values, bit for bit, without the passes over the output
/// and the int8 tensor between them. Returns how many chains, and how many of them took their
/// bias.
pub fn fuse_requantize(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    use crate::ops::{FastDequantizeLinearF32, FastQuantizeLinearI8};
    let chains: Vec<(usize, usize, Requantize)> = model
        .nodes()
        .iter()
        .filter(|n| {
            n.op_as::<MatMulInt8>()
                .is_some_and(|op| op.requantize.is_none())
        })
        .filter_map(|n| {
            let q = model.node(only_reader(model, n.id)?);
            let quantize = q.op_as::<FastQuantizeLinearI8>()?;
            let dq = model.node(only_reader(model, q.id)?);
            let dequantize = dq.op_as::<FastDequantizeLinearF32>()?;
            let q_out = model.outlet_fact(OutletId::new(q.id, 0)).ok()?;
            (q_out.datum_type.unquantized() == DatumType::I8).then_some(())?;
            let mut r = Requantize {
                q_scale: quantize.scale,
                q_zero: quantize.zero_point,
                dq_scale: dequantize.scale,
                dq_zero: dequantize.zero_point,
                bias: None,
            };
            let n_cols = n.op_as::<MatMulInt8>()?.weights.n();
            let last = match bias_after(model, dq.id, n_cols) {
                Some((add, bias)) => {
                    r.bias = Some(Arc::new(bias));
                    add
                }
                None => dq.id,
            };
            Some((n.id, last, r))
        })
        .collect();
    let with_bias = chains.iter().filter(|c| c.2.bias.is_some()).count();
    for (product, last, r) in &chains {
        let mut op = model.node(*product).op_as::<MatMulInt8>().unwrap().clone();
        op.requantize = Some(r.clone());
        model.node_mut(*product).op = Box::new(op);
        let from = OutletId::new(*last, 0);
        for inlet in model.outlet_successors(from).to_vec() {
            model.add_edge(OutletId::new(*product, 0), inlet)?;
        }
        // the chain's last output may be a model output (only the links before it are
        // excluded above)
        for o in model.outputs.iter_mut().filter(|o| **o == from) {
            *o = OutletId::new(*product, 0);
        }
    }
    if !chains.is_empty() {
        model.compact()?;
    }
    Ok((chains.len(), with_bias))
}

/// The only reader of `node`'s one output, where that output is not a model output.
fn only_reader(model: &TypedModel, node: usize) -> Option<usize> {
    let out = OutletId::new(node, 0);
    let succ = model.outlet_successors(out);
    (model.node(node).outputs.len() == 1 && succ.len() == 1 && !model.outputs.contains(&out))
        .then(|| succ[0].node)
}

/// `(add, bias)` where the only reader of `node` (`[.., N]` `f32`, not a model output) adds a
/// constant of `n` values along its last axis and nothing else (every other axis of the
/// constant 1, the sum the shape of `node`'s output): tract's `Add` before optimisation, its
/// `OptAddUnicast` after.
fn bias_after(model: &TypedModel, node: usize, n: usize) -> Option<(usize, Vec<f32>)> {
    use tract_core::ops::binary::{OptBinUnicast, TypedBinOp};
    let add = model.node(only_reader(model, node)?);
    let is_add = add
        .op_as::<OptBinUnicast>()
        .map(|op| op.binop.name() == "Add")
        .or_else(|| add.op_as::<TypedBinOp>().map(|op| op.0.name() == "Add"))?;
    let ours = OutletId::new(node, 0);
    let other = match add.inputs.as_slice() {
        [a, b] if *a == ours && *b != ours => *b,
        [a, b] if *b == ours && *a != ours => *a,
        _ => return None,
    };
    let fact = model.outlet_fact(ours).ok()?;
    let bias_fact = model.outlet_fact(other).ok()?;
    let sum_fact = model.outlet_fact(OutletId::new(add.id, 0)).ok()?;
    let dims = bias_fact.shape.as_concrete()?;
    let along_last = dims.last() == Some(&n) && dims[..dims.len() - 1].iter().all(|d| *d == 1);
    (is_add
        && fact.datum_type == DatumType::F32
        && bias_fact.datum_type == DatumType::F32
        && sum_fact.datum_type == DatumType::F32
        && sum_fact.shape == fact.shape
        && dims.len() <= fact.rank()
        && along_last)
        .then_some(())?;
    Some((add.id, values::<f32>(model, other, n)?))
}

/// Replace every product with constant weights (see the module's text) by one
/// [`MatMulInt8`] or [`MatMulF32`], as `kernels` allows. Returns how many were replaced.
pub fn swap_products(model: &mut TypedModel, kernels: Kernels) -> TractResult<usize> {
    let swaps: Vec<Swap> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let int8 = kernels.int8.then(|| int8_candidate(model, n, kernels.sums));
            let int8 = int8.flatten();
            int8.or_else(|| kernels.f32.then(|| f32_candidate(model, n)).flatten())
                .or_else(|| kernels.f32.then(|| batched_candidate(model, n)).flatten())
        })
        .collect();
    for (first, last, op, inputs) in swaps.iter() {
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, inputs)?;
        let name = format!("{}.dinoedge", model.node(*first).name);
        let out = patch.wire_node(name, op.clone(), &taps)?;
        patch.shunt_outside(model, OutletId::new(*last, 0), out[0])?;
        patch.apply(model)?;
    }
    if !swaps.is_empty() {
        model.compact()?;
    }
    Ok(swaps.len())
}

/// [`swap_products`] for the int8 products only.
pub fn swap_int8_products(model: &mut TypedModel) -> TractResult<usize> {
    swap_products(
        model,
        Kernels {
            int8: true,
            f32: false,
            sums: Sums::Exact,
        },
    )
}

/// An `f32` product with constant weights and an optional per-column bias: input `a: f32
/// [.., M, K]`, output `f32 [.., M, N]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatMulF32 {
    /// The weights, packed.
    pub weights: Arc<PackedF32>,
    /// One value per column, added to each row.
    pub bias: Option<Arc<Vec<F32Bits>>>,
    /// The output's shape (`[.., M, N]`, maybe with other unit axes than the input's).
    pub out_shape: TVec<usize>,
}

impl Op for MatMulF32 {
    fn name(&self) -> StaticName {
        "DinoedgeMatMulF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "K {} N {}{}",
            self.weights.k(),
            self.weights.n(),
            if self.bias.is_some() { ", bias" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MatMulF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.weights.k(), self.weights.n());
        let a = &inputs[0];
        let rows = self.out_shape.iter().product::<usize>() / n;
        ensure!(
            a.len() == rows * k,
            "activations {:?} for {rows} rows of K = {k}",
            a.shape()
        );
        let a_plain = a.try_as_plain_ram()?;
        let xs = a_plain.as_slice::<f32>()?;
        let bias: Option<&[f32]> = self.bias.as_ref().map(|b| F32Bits::slice(b));
        let m = xs.len() / k;
        ensure!(
            self.out_shape.iter().product::<usize>() == m * n,
            "{m} rows of {n} into {:?}",
            self.out_shape
        );
        let mut dst = unsafe { Tensor::uninitialized_dt(f32::datum_type(), &self.out_shape)? };
        {
            let mut plain = dst.try_as_plain_ram_mut()?;
            sgemm::matmul(xs, &self.weights, bias, plain.as_slice_mut::<f32>()?)
                .map_err(|e| format_err!("{e}"))?;
        }
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for MatMulF32 {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.out_shape)))
    }

    as_op!();
}

/// An `f32` kept by its bits, so that operators holding one can be `Eq` and `Hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct F32Bits(u32);

impl F32Bits {
    fn vec(v: Vec<f32>) -> Vec<F32Bits> {
        v.into_iter().map(|x| F32Bits(x.to_bits())).collect()
    }

    fn slice(v: &[F32Bits]) -> &[f32] {
        // SAFETY: F32Bits is a transparent u32, of f32's size and alignment; every bit
        // pattern is an f32.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdq::node;
    use crate::qdq::tests::{init_f32, init_i8, qdq_model, value};
    use tract_onnx::pb::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    };

    // ONNX's enum values: tensor element types and the integer attribute type
    const FLOAT: i64 = 1;
    const UINT8: i32 = 2;
    const INT8: i32 = 3;
    const ATTR_INT: i32 = 2;
    use tract_onnx::prelude::*;

    const M: usize = 19;
    const K: usize = 40;
    const N: usize = 50;

    /// x [1, M, K] → DynamicQuantizeLinear → MatMulInteger(W [K, N]) → Cast → Mul(x_scale ·
    /// w_scale) → Add(bias): one product as onnxruntime's `quantize_dynamic` writes it, with
    /// int8 or uint8 weights.
    fn dynamic_model(unsigned: bool) -> ModelProto {
        let n = |op: &str, name: &str, i: &[&str], o: &str| {
            node(
                op,
                name.into(),
                i.iter().map(|s| s.to_string()).collect(),
                o.into(),
            )
        };
        let dql = NodeProto {
            op_type: "DynamicQuantizeLinear".into(),
            name: "dql".into(),
            input: vec!["x".into()],
            output: vec!["xq".into(), "xs".into(), "xz".into()],
            ..Default::default()
        };
        let mut cast = n("Cast", "cast", &["acc"], "accf");
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: ATTR_INT,
            i: FLOAT,
            ..Default::default()
        });
        let w: Vec<i8> = (0..K * N)
            .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
            .collect();
        let (w, wz) = if unsigned {
            let raw = |name: &str, dims: &[i64], v: Vec<u8>| TensorProto {
                name: name.into(),
                dims: dims.to_vec(),
                data_type: UINT8,
                raw_data: v,
                ..Default::default()
            };
            (
                raw(
                    "w",
                    &[K as i64, N as i64],
                    w.iter().map(|v| *v as u8).collect(),
                ),
                raw("wz", &[], vec![131]),
            )
        } else {
            (
                init_i8("w", &[K as i64, N as i64], &w),
                init_i8("wz", &[], &[0]),
            )
        };
        let bias: Vec<f32> = (0..N).map(|c| c as f32 * 0.125 - 2.0).collect();
        let graph = GraphProto {
            node: vec![
                dql,
                n("MatMulInteger", "mm", &["xq", "w", "xz", "wz"], "acc"),
                n("Mul", "scale", &["xs", "ws"], "s"),
                cast,
                n("Mul", "dequant", &["accf", "s"], "y0"),
                n("Add", "bias_add", &["bias", "y0"], "out"),
            ],
            initializer: vec![
                w,
                wz,
                init_f32("ws", &[], &[0.0037]),
                init_f32("bias", &[N as i64], &bias),
            ],
            input: vec![value("x", &[1, M as i64, K as i64])],
            output: vec![value("out", &[1, M as i64, N as i64])],
            name: "dynamic".into(),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// The decluttered graph as dinoedge compiles it, before optimisation.
    fn decluttered(proto: &ModelProto) -> TypedModel {
        let mut m = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .unwrap()
            .into_typed()
            .unwrap()
            .into_decluttered()
            .unwrap();
        crate::ops::swap_dynamic_quantizers(&mut m);
        crate::ops::fuse_dequantize(&mut m).unwrap();
        m
    }

    fn run(model: TypedModel, x: Tensor) -> Vec<f32> {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec![x.into()]).unwrap();
        let plain = out[0].try_as_plain_ram().unwrap();
        plain.as_slice::<f32>().unwrap().to_vec()
    }

    fn same_bits(want: &[f32], got: &[f32]) {
        assert_eq!(want.len(), got.len());
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            assert_eq!(w.to_bits(), g.to_bits(), "at {i}: {w} vs {g}");
        }
    }

    #[test]
    fn dynamic_products_swap_and_give_the_same_bits() {
        let x: Vec<f32> = (0..M * K)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 1.7)
            .collect();
        let x = tract_ndarray::Array3::from_shape_vec((1, M, K), x).unwrap();
        for unsigned in [false, true] {
            let model = decluttered(&dynamic_model(unsigned));
            let mut swapped = model.clone();
            assert_eq!(swap_int8_products(&mut swapped).unwrap(), 1);
            let ops: Vec<String> = swapped.nodes().iter().map(|n| n.op.name().into()).collect();
            assert!(!ops.iter().any(|o| o == "EinSum"), "{ops:?}");
            let want = run(model, x.clone().into_tensor());
            let got = run(swapped, x.clone().into_tensor());
            same_bits(&want, &got);
        }
    }

    #[test]
    fn qdq_products_swap_and_give_the_same_bits() {
        let mut proto = qdq_model();
        assert_eq!(crate::qdq::integer_products(&mut proto), 1);
        let model = decluttered(&proto);
        let mut swapped = model.clone();
        assert_eq!(swap_int8_products(&mut swapped).unwrap(), 1);
        let x = tensor2(&[[0.31f32, -1.2, 2.05, 0.0], [-0.4, 0.77, -2.5, 1.13]]);
        same_bits(&run(model, x.clone()), &run(swapped, x));
    }

    #[test]
    fn f32_products_and_their_bias_swap_and_match() {
        let w: Vec<f32> = (0..K * N)
            .map(|i| ((i * 37 + 11) % 97) as f32 / 50.0 - 1.0)
            .collect();
        let bias: Vec<f32> = (0..N).map(|c| c as f32 * 0.125 - 2.0).collect();
        let n = |op: &str, name: &str, i: &[&str], o: &str| {
            node(
                op,
                name.into(),
                i.iter().map(|s| s.to_string()).collect(),
                o.into(),
            )
        };
        let graph = GraphProto {
            node: vec![
                n("MatMul", "mm", &["x", "w"], "y0"),
                n("Add", "bias_add", &["y0", "bias"], "out"),
            ],
            initializer: vec![
                init_f32("w", &[K as i64, N as i64], &w),
                init_f32("bias", &[N as i64], &bias),
            ],
            input: vec![value("x", &[1, M as i64, K as i64])],
            output: vec![value("out", &[1, M as i64, N as i64])],
            name: "fp32".into(),
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let model = decluttered(&proto);
        let mut swapped = model.clone();
        let f32_only = Kernels {
            int8: false,
            f32: true,
            sums: Sums::Exact,
        };
        assert_eq!(swap_products(&mut swapped, f32_only).unwrap(), 1);
        let ops: Vec<String> = swapped.nodes().iter().map(|n| n.op.name().into()).collect();
        assert!(ops.iter().any(|o| o == "DinoedgeMatMulF32"), "{ops:?}");
        assert!(!ops.iter().any(|o| o == "EinSum" || o == "Add"), "{ops:?}");
        let x: Vec<f32> = (0..M * K)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 1.7)
            .collect();
        let x = tract_ndarray::Array3::from_shape_vec((1, M, K), x).unwrap();
        let want = run(model, x.clone().into_tensor());
        let got = run(swapped, x.into_tensor());
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 1e-5 * w.abs().max(1.0), "{w} vs {g}");
        }
        // the int8 kernels leave an f32 product alone
        let mut untouched = decluttered(&proto);
        assert_eq!(swap_int8_products(&mut untouched).unwrap(), 0);
    }

    #[test]
    fn products_of_two_activations_swap_and_match() {
        let n = |op: &str, name: &str, i: &[&str], o: &str| {
            node(
                op,
                name.into(),
                i.iter().map(|s| s.to_string()).collect(),
                o.into(),
            )
        };
        let graph = GraphProto {
            node: vec![n("MatMul", "mm", &["x", "y"], "out")],
            input: vec![
                value("x", &[3, M as i64, K as i64]),
                value("y", &[3, K as i64, N as i64]),
            ],
            output: vec![value("out", &[3, M as i64, N as i64])],
            name: "batched".into(),
            ..Default::default()
        };
        let proto = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let model = decluttered(&proto);
        let mut swapped = model.clone();
        let f32_only = Kernels {
            int8: false,
            f32: true,
            sums: Sums::Exact,
        };
        assert_eq!(swap_products(&mut swapped, f32_only).unwrap(), 1);
        let ops: Vec<String> = swapped.nodes().iter().map(|n| n.op.name().into()).collect();
        assert!(
            ops.iter().any(|o| o == "DinoedgeBatchedMatMulF32"),
            "{ops:?}"
        );
        let x: Vec<f32> = (0..3 * M * K)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 1.7)
            .collect();
        let y: Vec<f32> = (0..3 * K * N)
            .map(|i| ((i * 104_729) % 997) as f32 / 400.0 - 1.1)
            .collect();
        let x = tract_ndarray::Array3::from_shape_vec((3, M, K), x)
            .unwrap()
            .into_tensor();
        let y = tract_ndarray::Array3::from_shape_vec((3, K, N), y)
            .unwrap()
            .into_tensor();
        let run2 = |m: TypedModel| {
            let plan = m.into_optimized().unwrap().into_runnable().unwrap();
            let out = plan.run(tvec![x.clone().into(), y.clone().into()]).unwrap();
            let plain = out[0].try_as_plain_ram().unwrap();
            plain.as_slice::<f32>().unwrap().to_vec()
        };
        let (want, got) = (run2(model), run2(swapped));
        assert_eq!(want.len(), got.len());
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 1e-5 * w.abs().max(1.0), "{w} vs {g}");
        }
    }

    #[test]
    fn products_with_computed_weights_stay_tract_s() {
        // the weights as a graph input: nothing to pack
        let mut proto = dynamic_model(false);
        let g = proto.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "w");
        let mut w = value("w", &[K as i64, N as i64]);
        if let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
            w.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = INT8;
        }
        g.input.push(w);
        let mut model = decluttered(&proto);
        assert_eq!(swap_int8_products(&mut model).unwrap(), 0);
    }
}
