//! dinoedge's own tract operators, swapped into compiled graphs.
//!
//! [`FastDynamicQuantizeLinearU8`] replaces tract-onnx's `DynamicQuantizeLinearU8` (the
//! quantiser in front of every `MatMulInteger` of a dynamic-int8 model, 49 of them in
//! ViT-S). tract's version folds min/max with branches and rounds with `round_ties_even`,
//! which a portable x86-64 build (no SSE4.1) turns into a libm call per value; on a
//! 2-core Zen 4 it cost ~100 ms of a ~200 ms int8 ViT-S run. This one computes the same
//! bytes (same division, same ties-to-even rounding, via the 1.5·2²³ trick that is exact
//! for |q| ≤ 2²²) in loops the compiler vectorises on any x86-64 or ARM target.
//!
//! [`FastQuantizeLinearI8`] does the same for tract-core's `QuantizeLinearI8`, the static
//! quantiser of QDQ files (182 of them in ViT-S, ~26% of a QDQ run on AVX2).
//!
//! The loops themselves are in [`dinoedge_kernels::activations`] (dispatched to AVX2 / AVX-512
//! at run time).

use tract_core::internal::*;
use tract_nnef::internal::{
    IntoAst, ModelBuilder, Registry, ResolvedInvocation, TypeName, Value, invocation,
};

/// ONNX `DynamicQuantizeLinear` to uint8: outputs `(y: u8, scale: f32, zero_point: u8)`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct FastDynamicQuantizeLinearU8;

/// Scale and zero point of a tensor, as ONNX defines them (range extended to include 0).
pub fn scale_and_zero_point(xs: &[f32]) -> (f32, u8) {
    let (min, max) = dinoedge_kernels::activations::min_max_with_zero(xs);
    let scale = (max - min) / 255.0;
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

/// `y = saturate(round_ties_even(x / scale) + zero_point)`, bit-identical to the scalar
/// definition (including `scale == 0`, where every value maps to the zero point).
pub fn quantize_u8(scale: f32, zero_point: u8, xs: &[f32], ys: &mut [u8]) {
    dinoedge_kernels::activations::quantize_u8(scale, zero_point, xs, ys)
}

/// The fact of an element-wise operator's output: the input's shape, of type `dt`.
fn retyped(input: &TypedFact, dt: DatumType) -> TypedFact {
    let mut y = input.without_value();
    y.datum_type = dt;
    y
}

/// The innermost dimension (the unit work is split on), 1 for a scalar.
pub(crate) fn row_len(shape: &[usize]) -> usize {
    shape.last().copied().filter(|n| *n > 0).unwrap_or(1)
}

/// Below this many elements dinoedge's element-wise operators stay on one thread: at ~0.1 ns
/// an element, handing 2^18 of them to another thread costs about what it saves (measured on
/// ViT-S at 224, whose 257x384 activations ran slower split over two threads than on one).
const PARALLEL_ELEMENTS: usize = 1 << 18;

/// Split `ys` (rows of `row_len`) over the backbone's threads when it is large enough.
pub(crate) fn par_rows<Y: Send>(
    ys: &mut [Y],
    row_len: usize,
    f: impl Fn(usize, &mut [Y]) -> TractResult<()> + Sync + Send,
) -> TractResult<()> {
    if ys.is_empty() {
        return Ok(());
    }
    if ys.len() < PARALLEL_ELEMENTS {
        return f(0, ys);
    }
    tract_linalg::multithread::par_chunks_mut(ys, row_len, ys.len(), f)
}

/// A new `Y` tensor of `input`'s shape, filled by `f` over matching blocks of whole rows of
/// `input` and the output, on the backbone's threads (tract's executor; inline on one thread
/// or a small tensor). Each output row depends only on its own input row, so the result does
/// not depend on the split.
pub(crate) fn map_rows<X: Datum, Y: Datum>(
    input: &Tensor,
    f: impl Fn(&[X], &mut [Y]) + Sync + Send,
) -> TractResult<Tensor> {
    map_rows_as(input, Y::datum_type(), f)
}

/// [`map_rows`] into a tensor of type `output` (a quantised `Y`, say: its values are `Y`s).
pub(crate) fn map_rows_as<X: Datum, Y: Datum>(
    input: &Tensor,
    output: DatumType,
    f: impl Fn(&[X], &mut [Y]) + Sync + Send,
) -> TractResult<Tensor> {
    let plain = input.try_as_plain_ram()?;
    let xs = plain.as_slice::<X>()?;
    let n = row_len(input.shape());
    let mut dst = unsafe { Tensor::uninitialized_dt(output, input.shape())? };
    {
        let mut out = dst.try_as_plain_ram_mut()?;
        let ys = out.as_slice_mut::<Y>()?;
        ensure!(xs.len() == ys.len(), "input and output sizes differ");
        par_rows(ys, n, |first_row, chunk| {
            let start = first_row * n;
            f(&xs[start..start + chunk.len()], chunk);
            Ok(())
        })?;
    }
    Ok(dst)
}

/// `min(0, xs)` and `max(0, xs)` in parallel parts (min and max are exact, so the parts'
/// order does not matter).
fn par_min_max(xs: &[f32]) -> TractResult<(f32, f32)> {
    let parts = (xs.len() / (PARALLEL_ELEMENTS / 2)).clamp(1, 64);
    let len = xs.len().div_ceil(parts);
    let mut found = vec![(0f32, 0f32); parts];
    tract_linalg::multithread::par_chunks_mut(&mut found, 1, xs.len(), |first, chunk| {
        for (i, r) in chunk.iter_mut().enumerate() {
            let lo = ((first + i) * len).min(xs.len());
            let hi = ((first + i + 1) * len).min(xs.len());
            *r = dinoedge_kernels::activations::min_max_with_zero(&xs[lo..hi]);
        }
        Ok(())
    })?;
    Ok(found
        .iter()
        .fold((0f32, 0f32), |(a, b), (c, d)| (a.min(*c), b.max(*d))))
}

impl Op for FastDynamicQuantizeLinearU8 {
    fn name(&self) -> StaticName {
        "DinoedgeDynamicQuantizeLinearU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for FastDynamicQuantizeLinearU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let (min, max) = par_min_max(xs)?;
        let scale = (max - min) / 255.0;
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        let dst = map_rows(&input, |x: &[f32], y: &mut [u8]| {
            quantize_u8(scale, zero_point, x, y)
        })?;
        Ok(tvec!(
            dst.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for FastDynamicQuantizeLinearU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(
            retyped(inputs[0], u8::datum_type()),
            f32::fact([0usize; 0]),
            u8::fact([0usize; 0])
        ))
    }

    as_op!();
}

/// `y = saturate_i8(round_ties_even(x * scale) + zero_point)`: tract-core's static
/// `QuantizeLinearI8` (its `scale` is the reciprocal of the ONNX scale), vectorised.
#[derive(Clone, Debug, PartialEq)]
pub struct FastQuantizeLinearI8 {
    /// Multiplier (1 / ONNX scale), exactly as tract stores it.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i8,
}

impl Eq for FastQuantizeLinearI8 {}

impl std::hash::Hash for FastQuantizeLinearI8 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
    }
}

/// The loop of [`FastQuantizeLinearI8`].
pub fn quantize_i8(scale: f32, zero_point: i8, xs: &[f32], ys: &mut [i8]) {
    dinoedge_kernels::activations::quantize_i8(scale, zero_point, xs, ys)
}

impl Op for FastQuantizeLinearI8 {
    fn name(&self) -> StaticName {
        "DinoedgeQuantizeLinearI8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {} zero_point: {}",
            self.scale, self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FastQuantizeLinearI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dst = map_rows(&inputs[0], |x: &[f32], y: &mut [i8]| {
            quantize_i8(self.scale, self.zero_point, x, y)
        })?;
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for FastQuantizeLinearI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(retyped(inputs[0], i8::datum_type())))
    }

    as_op!();
}

/// Swap tract-core's `QuantizeLinearI8` on f32 inputs for the vectorised one. Returns how
/// many were swapped.
pub fn swap_static_quantizers(model: &mut TypedModel) -> usize {
    use tract_core::ops::element_wise::ElementWiseOp;
    use tract_core::ops::quant::QuantizeLinearI8;
    let candidates: Vec<(usize, f32, i8)> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let q = n
                .op_as::<ElementWiseOp>()?
                .0
                .downcast_ref::<QuantizeLinearI8>()?;
            let input_is_f32 = model.outlet_fact(n.inputs[0]).ok()?.datum_type == f32::datum_type();
            input_is_f32.then_some((n.id, q.scale, q.zero_point))
        })
        .collect();
    for (id, scale, zero_point) in &candidates {
        model.node_mut(*id).op = Box::new(FastQuantizeLinearI8 {
            scale: *scale,
            zero_point: *zero_point,
        });
    }
    candidates.len()
}

/// tract-core's `DequantizeLinearF32` on i8 or u8 inputs (the activations of QDQ files, 182 of
/// them in ViT-S), vectorised: the same `(x - zero_point) as f32 * scale`, bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct FastDequantizeLinearF32 {
    /// Scale, as tract stores it.
    pub scale: f32,
    /// Zero point.
    pub zero_point: i32,
}

impl Eq for FastDequantizeLinearF32 {}

impl std::hash::Hash for FastDequantizeLinearF32 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.scale.to_bits().hash(state);
        self.zero_point.hash(state);
    }
}

impl Op for FastDequantizeLinearF32 {
    fn name(&self) -> StaticName {
        "DinoedgeDequantizeLinearF32".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale: {} zero_point: {}",
            self.scale, self.zero_point
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for FastDequantizeLinearF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let (scale, zp) = (self.scale, self.zero_point);
        let dst = match input.datum_type() {
            DatumType::I8 => map_rows(input, |x: &[i8], y: &mut [f32]| {
                dinoedge_kernels::activations::dequantize_i8(scale, zp, x, y)
            })?,
            DatumType::U8 => map_rows(input, |x: &[u8], y: &mut [f32]| {
                dinoedge_kernels::activations::dequantize_u8(scale, zp, x, y)
            })?,
            dt => bail!("DinoedgeDequantizeLinearF32 takes i8 or u8, not {dt:?}"),
        };
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for FastDequantizeLinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(retyped(inputs[0], f32::datum_type())))
    }

    as_op!();
}

/// Swap tract-core's `DequantizeLinearF32` on i8 and u8 inputs for the vectorised one.
/// Returns how many were swapped.
pub fn swap_static_dequantizers(model: &mut TypedModel) -> usize {
    use tract_core::ops::quant::DequantizeLinearF32;
    let candidates: Vec<(usize, f32, i32)> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let d = n.op_as::<DequantizeLinearF32>()?;
            let dt = model.outlet_fact(n.inputs[0]).ok()?.datum_type;
            matches!(dt, DatumType::I8 | DatumType::U8).then_some((n.id, d.scale, d.zero_point))
        })
        .collect();
    for (id, scale, zero_point) in &candidates {
        model.node_mut(*id).op = Box::new(FastDequantizeLinearF32 {
            scale: *scale,
            zero_point: *zero_point,
        });
    }
    candidates.len()
}

/// Swap every tract-onnx `DynamicQuantizeLinearU8` in `model` for the fast one. Returns how
/// many were swapped.
pub fn swap_dynamic_quantizers(model: &mut TypedModel) -> usize {
    let mut n = 0;
    for node in model.nodes_mut() {
        if node.op.name() == "DynamicQuantizeLinearU8" && node.outputs.len() == 3 {
            node.op = Box::new(FastDynamicQuantizeLinearU8);
            n += 1;
        }
    }
    n
}

/// The epilogue of a dynamic-int8 product, `Cast(i32 → f32) → Mul(scale) → Add(bias)`, as one
/// operator: inputs `(acc: i32 [.., N], scale: f32, bias: f32 const of N)`, one pass instead of
/// three (tract does not fuse an i32 → f32 cast into its int8 kernels), rounded exactly as the
/// three are. The scale is one value, or one per column: a per-channel file's (`quantize_dynamic`
/// with `per_channel`), the activations' scale times each column's, computed at run time.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DequantizeI32;

impl Op for DequantizeI32 {
    fn name(&self) -> StaticName {
        "DinoedgeDequantizeI32".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DequantizeI32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (acc, scale, bias) = (&inputs[0], &inputs[1], &inputs[2]);
        let scale_plain = scale.try_as_plain_ram()?;
        let scales = scale_plain.as_slice::<f32>()?;
        let bias_plain = bias.try_as_plain_ram()?;
        let bias = bias_plain.as_slice::<f32>()?;
        let n = row_len(acc.shape());
        ensure!(bias.len() == n, "bias of {} for rows of {n}", bias.len());
        let dst = match *scales {
            [scale] => map_rows(acc, |x: &[i32], y: &mut [f32]| {
                dinoedge_kernels::activations::dequantize_i32(x, scale, bias, y)
            })?,
            _ if scales.len() == n => map_rows(acc, |x: &[i32], y: &mut [f32]| {
                dinoedge_kernels::activations::dequantize_i32_columns(x, scales, bias, y)
            })?,
            _ => bail!("{} scales for rows of {n}", scales.len()),
        };
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for DequantizeI32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(retyped(inputs[0], f32::datum_type())))
    }

    as_op!();
}

/// `Cast(i32 → f32) → Mul(per-column constant)` as one operator: inputs `(acc: i32 [.., N],
/// scales: f32 [N])`. The int8 products [`crate::qdq`] makes of a QDQ file end so.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct ScaleI32;

impl Op for ScaleI32 {
    fn name(&self) -> StaticName {
        "DinoedgeScaleI32".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ScaleI32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (acc, scales) = (&inputs[0], &inputs[1]);
        let scales_plain = scales.try_as_plain_ram()?;
        let scales = scales_plain.as_slice::<f32>()?;
        let n = row_len(acc.shape());
        ensure!(scales.len() == n, "{} scales for rows of {n}", scales.len());
        let dst = map_rows(acc, |x: &[i32], y: &mut [f32]| {
            dinoedge_kernels::activations::scale_i32(x, scales, y)
        })?;
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for ScaleI32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(retyped(inputs[0], f32::datum_type())))
    }

    as_op!();
}

/// The node that alone reads `outlet`, when nothing else (an output among them) does.
pub(crate) fn sole_reader(model: &TypedModel, outlet: OutletId) -> Option<&TypedNode> {
    let succ = model.outlet_successors(outlet);
    let is_output = model.outputs.contains(&outlet);
    (succ.len() == 1 && !is_output).then(|| model.node(succ[0].node))
}

/// A binary op named `name` (`Mul`, `Add`) with no output type of its own: the input that is
/// not `from`.
pub(crate) fn other_operand(node: &TypedNode, name: &str, from: OutletId) -> Option<OutletId> {
    use tract_core::ops::binary::TypedBinOp;
    let op = node.op_as::<TypedBinOp>()?;
    if op.0.name() != name || op.1.is_some() || node.inputs.len() != 2 {
        return None;
    }
    match (node.inputs[0] == from, node.inputs[1] == from) {
        (true, false) => Some(node.inputs[1]),
        (false, true) => Some(node.inputs[0]),
        _ => None,
    }
}

/// One `Cast(i32 → f32) → Mul(scalar)` pair, with the `Add(const of the last dimension)` after
/// it when there is one, as `(cast, last, acc, scale, bias)` (`last`: the `Add`, or the `Mul`
/// of a projection without a bias, as DINOv3's keys have). The scale may also be one value per
/// column computed at run time (a per-channel dynamic file's); a constant one is a QDQ
/// product's ([`scale_chain`]).
fn dequant_chain(
    model: &TypedModel,
    cast: &TypedNode,
) -> Option<(usize, usize, OutletId, OutletId, Option<OutletId>)> {
    let c = cast.op_as::<tract_core::ops::cast::Cast>()?;
    let acc = *cast.inputs.first()?;
    let acc_fact = model.outlet_fact(acc).ok()?;
    if c.to != f32::datum_type() || acc_fact.datum_type != i32::datum_type() {
        return None;
    }
    let dims = acc_fact.shape.as_concrete()?.to_vec();
    let n = *dims.last()?;
    let cast_out = OutletId::new(cast.id, 0);
    let mul = sole_reader(model, cast_out)?;
    let scale = other_operand(mul, "Mul", cast_out)?;
    let scale_fact = model.outlet_fact(scale).ok()?;
    let per_column = || {
        let d = scale_fact.shape.as_concrete()?;
        (scale_fact.konst.is_none()
            && d.last() == Some(&n)
            && d.len() <= dims.len()
            && d.iter().rev().skip(1).all(|d| *d == 1))
        .then_some(())
    };
    if scale_fact.datum_type != f32::datum_type()
        || (scale_fact.shape.volume() != TDim::from(1) && per_column().is_none())
    {
        return None;
    }
    let mul_out = OutletId::new(mul.id, 0);
    let shape_of = |o: OutletId| Some(model.outlet_fact(o).ok()?.shape.as_concrete()?.to_vec());
    let with_bias = sole_reader(model, mul_out).and_then(|add| {
        let bias = other_operand(add, "Add", mul_out)?;
        let bias_fact = model.outlet_fact(bias).ok()?;
        let bias_dims = bias_fact.shape.as_concrete()?;
        let per_column =
            bias_dims.last() == Some(&n) && bias_dims.iter().rev().skip(1).all(|d| *d == 1);
        (bias_fact.datum_type == f32::datum_type()
            && bias_fact.konst.is_some()
            && per_column
            && bias_dims.len() <= dims.len()
            && shape_of(OutletId::new(add.id, 0))? == dims)
            .then_some((cast.id, add.id, acc, scale, Some(bias)))
    });
    // a scalar scale is never a QDQ file's per-column one ([`scale_chain`])
    with_bias
        .or_else(|| (shape_of(mul_out)? == dims).then_some((cast.id, mul.id, acc, scale, None)))
}

/// A constant of `n` values along the last axis (all other dimensions 1), as broadcast over
/// `[.., n]`.
fn is_per_column(model: &TypedModel, outlet: OutletId, n: usize, rank: usize) -> bool {
    let Ok(fact) = model.outlet_fact(outlet) else {
        return false;
    };
    let Some(dims) = fact.shape.as_concrete() else {
        return false;
    };
    fact.datum_type == f32::datum_type()
        && fact.konst.is_some()
        && dims.last() == Some(&n)
        && dims.len() <= rank
        && dims.iter().rev().skip(1).all(|d| *d == 1)
}

/// One `Cast(i32 → f32) → Mul(const of the last dimension)` pair that is not the start of a
/// [`dequant_chain`], as `(mul, acc, scales)`.
fn scale_chain(model: &TypedModel, cast: &TypedNode) -> Option<(usize, OutletId, OutletId)> {
    let c = cast.op_as::<tract_core::ops::cast::Cast>()?;
    let acc = *cast.inputs.first()?;
    let acc_fact = model.outlet_fact(acc).ok()?;
    if c.to != f32::datum_type() || acc_fact.datum_type != i32::datum_type() {
        return None;
    }
    let dims = acc_fact.shape.as_concrete()?.to_vec();
    let cast_out = OutletId::new(cast.id, 0);
    let mul = sole_reader(model, cast_out)?;
    let scales = other_operand(mul, "Mul", cast_out)?;
    let out = model.outlet_fact(OutletId::new(mul.id, 0)).ok()?;
    (is_per_column(model, scales, *dims.last()?, dims.len())
        && out.shape.as_concrete() == Some(&dims[..]))
    .then_some((mul.id, acc, scales))
}

/// Replace every `Cast(i32 → f32) → Mul(scale) → Add(bias)` after an int8 product (the ONNX
/// dynamic-quantisation pattern; a projection without a bias ends at the `Mul`) by one
/// [`DequantizeI32`], then every remaining
/// `Cast(i32 → f32) → Mul(per-column constant)` (QDQ products, [`crate::qdq`]) by one
/// [`ScaleI32`]. Returns how many were fused.
pub fn fuse_dequantize(model: &mut TypedModel) -> TractResult<usize> {
    let chains: Vec<_> = model
        .nodes()
        .iter()
        .filter_map(|n| dequant_chain(model, n))
        .collect();
    for (cast, last, acc, scale, bias) in &chains {
        let mut patch = TypedModelPatch::default();
        let inputs = patch.taps(model, [acc, scale])?;
        let name = format!("{}.dequantize", model.node(*cast).name);
        // the bias as a flat vector of the last dimension; zeros where there is none (`x · s
        // + 0` is `x · s` to the bit: the product of a non-zero sum is never −0 or 0)
        let flat = match bias {
            Some(bias) => {
                let bias_fact = model.outlet_fact(*bias)?.clone();
                let n = bias_fact.shape.volume();
                let bias = patch.tap_model(model, *bias)?;
                patch.wire_node(
                    format!("{name}.bias"),
                    AxisOp::Reshape(0, bias_fact.shape.iter().cloned().collect(), tvec![n]),
                    &[bias],
                )?[0]
            }
            None => {
                let n = row_len(model.outlet_fact(*acc)?.shape.as_concrete().unwrap_or(&[]));
                patch.add_const(format!("{name}.no_bias"), Tensor::zero::<f32>(&[n])?)?
            }
        };
        let out = patch.wire_node(name, DequantizeI32, &[inputs[0], inputs[1], flat])?;
        patch.shunt_outside(model, OutletId::new(*last, 0), out[0])?;
        patch.apply(model)?;
    }
    let scaled: Vec<_> = model
        .nodes()
        .iter()
        .filter_map(|n| scale_chain(model, n))
        .collect();
    for (mul, acc, scales) in &scaled {
        let mut patch = TypedModelPatch::default();
        let inputs = patch.taps(model, [acc, scales])?;
        let name = format!("{}.scale_i32", model.node(*mul).name);
        let fact = model.outlet_fact(*scales)?.clone();
        let n = fact.shape.volume();
        let flat = patch.wire_node(
            format!("{name}.scales"),
            AxisOp::Reshape(0, fact.shape.iter().cloned().collect(), tvec![n]),
            &[inputs[1]],
        )?;
        let out = patch.wire_node(name, ScaleI32, &[inputs[0], flat[0]])?;
        patch.shunt_outside(model, OutletId::new(*mul, 0), out[0])?;
        patch.apply(model)?;
    }
    if !chains.is_empty() || !scaled.is_empty() {
        model.compact()?;
    }
    Ok(chains.len() + scaled.len())
}

const NNEF_ID: &str = "dinoedge_dynamic_quantize_linear_u8";
const NNEF_Q_I8: &str = "dinoedge_quantize_linear_i8";
const NNEF_DEQ_I32: &str = "dinoedge_dequantize_i32";
const NNEF_SCALE_I32: &str = "dinoedge_scale_i32";

/// Register dinoedge's operators in an NNEF registry (for the compile cache).
pub fn register(registry: &mut Registry) {
    registry.register_primitive(
        NNEF_ID,
        &[TypeName::Scalar.tensor().named("input")],
        &[
            ("output", TypeName::Integer.tensor()),
            ("scale", TypeName::Scalar.tensor()),
            ("zero_point", TypeName::Integer.tensor()),
        ],
        load,
    );
    registry.register_dumper(dump);
    registry.register_primitive(
        NNEF_Q_I8,
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ],
        &[("output", TypeName::Integer.tensor())],
        load_q_i8,
    );
    registry.register_dumper(dump_q_i8);
    registry.register_primitive(
        NNEF_DEQ_I32,
        &[
            TypeName::Integer.tensor().named("input"),
            TypeName::Scalar.tensor().named("scale"),
            TypeName::Scalar.tensor().named("bias"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_dequantize_i32,
    );
    registry.register_dumper(dump_dequantize_i32);
    registry.register_primitive(
        NNEF_SCALE_I32,
        &[
            TypeName::Integer.tensor().named("input"),
            TypeName::Scalar.tensor().named("scales"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_scale_i32,
    );
    registry.register_dumper(dump_scale_i32);
}

fn dump_scale_i32(
    ast: &mut IntoAst,
    node: &TypedNode,
    _op: &ScaleI32,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    Ok(Some(invocation(NNEF_SCALE_I32, &inputs, &[])))
}

fn load_scale_i32(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let scales = invocation.named_arg_as(builder, "scales")?;
    builder.wire(ScaleI32, &[input, scales])
}

fn dump_dequantize_i32(
    ast: &mut IntoAst,
    node: &TypedNode,
    _op: &DequantizeI32,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    Ok(Some(invocation(NNEF_DEQ_I32, &inputs, &[])))
}

fn load_dequantize_i32(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let scale = invocation.named_arg_as(builder, "scale")?;
    let bias = invocation.named_arg_as(builder, "bias")?;
    builder.wire(DequantizeI32, &[input, scale, bias])
}

fn dump_q_i8(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &FastQuantizeLinearI8,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    // The scale as its exact bits, so a cached graph quantises bit for bit the same.
    Ok(Some(invocation(
        NNEF_Q_I8,
        &[input],
        &[
            ("scale", tract_nnef::internal::numeric(op.scale)),
            (
                "zero_point",
                tract_nnef::internal::numeric(op.zero_point as i64),
            ),
        ],
    )))
}

fn load_q_i8(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let scale: f32 = invocation.named_arg_as(builder, "scale")?;
    let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
    builder.wire(
        FastQuantizeLinearI8 {
            scale,
            zero_point: zero_point as i8,
        },
        &[input],
    )
}

fn dump(
    ast: &mut IntoAst,
    node: &TypedNode,
    _op: &FastDynamicQuantizeLinearU8,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(NNEF_ID, &[input], &[])))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    builder.wire(FastDynamicQuantizeLinearU8, &[input])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar definition (ONNX, as tract-onnx implements it).
    fn reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (min, max) = xs
            .iter()
            .fold((0f32, 0f32), |(a, b), v| (a.min(*v), b.max(*v)));
        let scale = (max - min) / 255.0;
        let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        let ys = xs
            .iter()
            .map(|x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8)
            .collect();
        (ys, scale, zp)
    }

    fn check(xs: &[f32]) {
        let (want, ws, wz) = reference(xs);
        let (scale, zp) = scale_and_zero_point(xs);
        assert_eq!((scale.to_bits(), zp), (ws.to_bits(), wz), "{xs:?}");
        let mut got = vec![0u8; xs.len()];
        quantize_u8(scale, zp, xs, &mut got);
        assert_eq!(got, want, "{xs:?}");
    }

    /// `acc: i32 [2, 3], scale: f32 []` → Cast → Mul → Add(bias [3]) (no `Add` without
    /// `with_bias`); with `tap_cast` the cast's output is also a model output (so the chain
    /// must not be fused).
    fn epilogue_model(tap_cast: bool, with_bias: bool, per_channel: bool) -> TypedModel {
        use tract_core::ops::{binary::TypedBinOp, cast::cast, math};
        let mut m = TypedModel::default();
        let acc = m.add_source("acc", i32::fact([2, 3])).unwrap();
        let scale = m.add_source("scale", f32::fact([0usize; 0])).unwrap();
        let bias = m
            .add_const("bias", tensor2(&[[0.5f32, -1.25, 3.0]]))
            .unwrap();
        let c = m
            .wire_node("cast", cast(f32::datum_type()), &[acc])
            .unwrap();
        let scale_b = m.wire_node("scale_axes", AxisOp::Add(0), &[scale]).unwrap();
        let mut scale_b = m
            .wire_node("scale_axes2", AxisOp::Add(0), &scale_b)
            .unwrap();
        if per_channel {
            // `a_scale · b_scale[n]`, computed at run time (`quantize_dynamic(per_channel=True)`)
            let b_scale = m
                .add_const("b_scale", tensor2(&[[0.013f32, -2.5e-4, 7.0]]))
                .unwrap();
            scale_b = m
                .wire_node(
                    "scales",
                    TypedBinOp(Box::new(math::Mul), None),
                    &[scale_b[0], b_scale],
                )
                .unwrap();
        }
        let mul = m
            .wire_node(
                "mul",
                TypedBinOp(Box::new(math::Mul), None),
                &[c[0], scale_b[0]],
            )
            .unwrap();
        let add = m
            .wire_node(
                "add",
                TypedBinOp(Box::new(math::Add), None),
                &[bias, mul[0]],
            )
            .unwrap();
        let mut outputs = vec![if with_bias { add[0] } else { mul[0] }];
        if tap_cast {
            outputs.push(c[0]);
        }
        m.select_output_outlets(&outputs).unwrap();
        m
    }

    fn run(m: TypedModel) -> Vec<f32> {
        let plan = m.into_runnable().unwrap();
        let acc = tensor2(&[[7i32, -300, 0], [i32::MAX, 12345, -1]]);
        let out = plan
            .run(tvec![acc.into(), tensor0(0.0123f32).into()])
            .unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn per_column_scale_fuses_bit_for_bit() {
        use tract_core::ops::{binary::TypedBinOp, cast::cast, math};
        let build = || {
            let mut m = TypedModel::default();
            let acc = m.add_source("acc", i32::fact([2, 3])).unwrap();
            let scales = m
                .add_const("scales", tensor2(&[[0.013f32, -2.5e-4, 7.0]]))
                .unwrap();
            let c = m
                .wire_node("cast", cast(f32::datum_type()), &[acc])
                .unwrap();
            let mul = m
                .wire_node(
                    "mul",
                    TypedBinOp(Box::new(math::Mul), None),
                    &[c[0], scales],
                )
                .unwrap();
            m.select_output_outlets(&mul).unwrap();
            m
        };
        let run = |m: TypedModel| {
            let acc = tensor2(&[[7i32, -300, 0], [i32::MAX, 12345, -1]]);
            let out = m.into_runnable().unwrap().run(tvec![acc.into()]).unwrap();
            let v: Vec<u32> = out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|f| f.to_bits())
                .collect();
            v
        };
        let mut fused = build();
        assert_eq!(fuse_dequantize(&mut fused).unwrap(), 1);
        assert!(fused.nodes().iter().any(|n| n.op_is::<ScaleI32>()));
        assert_eq!(run(fused), run(build()));
    }

    #[test]
    fn dequantize_epilogue_fuses_bit_for_bit() {
        // with a bias, and without one (a projection with no bias: DINOv3's keys); one scale,
        // and one per column
        for (with_bias, per_channel) in [(true, false), (false, false), (true, true)] {
            let want = run(epilogue_model(false, with_bias, per_channel));
            let mut fused = epilogue_model(false, with_bias, per_channel);
            assert_eq!(fuse_dequantize(&mut fused).unwrap(), 1);
            assert!(fused.nodes().iter().any(|n| n.op_is::<DequantizeI32>()));
            assert!(
                !fused
                    .nodes()
                    .iter()
                    .any(|n| n.op_is::<tract_core::ops::cast::Cast>())
            );
            let got = run(fused);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "bias: {with_bias}");
            // a chain whose intermediate is read elsewhere stays as it is
            let mut tapped = epilogue_model(true, with_bias, per_channel);
            assert_eq!(fuse_dequantize(&mut tapped).unwrap(), 0);
        }
    }

    #[test]
    fn static_dequantizer_matches_tract() {
        use tract_core::ops::quant::DequantizeLinearF32;
        let xs: Vec<i8> = (-128..=127).chain(-40..3).collect();
        let us: Vec<u8> = (0..=255).collect();
        for (scale, zp) in [(1.0f32, 0i32), (0.0173, -3), (3.5e-4, 127), (12.0, -128)] {
            let ours = FastDequantizeLinearF32 {
                scale,
                zero_point: zp,
            };
            let theirs = DequantizeLinearF32::new(scale, zp);
            for input in [tensor1(&xs), tensor1(&us)] {
                let run = |op: &dyn EvalOp| {
                    let out = op
                        .eval_out_of_plan(tvec![input.clone().into_tvalue()])
                        .unwrap()
                        .expect("evaluates alone")
                        .remove(0);
                    let v: Vec<u32> = out
                        .try_as_plain_ram()
                        .unwrap()
                        .as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .map(|f| f.to_bits())
                        .collect();
                    v
                };
                assert_eq!(run(&ours), run(&theirs), "scale {scale} zp {zp}");
            }
        }
    }

    #[test]
    fn static_quantizer_matches_tract() {
        use tract_core::ops::quant::quantize_linear_f32_i8;
        let mut s = 0x9E3779B9u32;
        let mut xs: Vec<f32> = (0..3001)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 9.0
            })
            .collect();
        xs.extend([0.5, 1.5, 2.5, -0.5, -1.5, 1e5, -1e5, f32::NAN, 0.0, -0.0]);
        for (scale, zp) in [(1.0f32, 0i8), (31.7, -3), (0.01, 127), (255.0, -128)] {
            let mut got = vec![0i8; xs.len()];
            quantize_i8(scale, zp, &xs, &mut got);
            for (x, g) in xs.iter().zip(&got) {
                assert_eq!(
                    *g,
                    quantize_linear_f32_i8(*x, scale, zp as i32),
                    "x {x} scale {scale} zp {zp}"
                );
            }
        }
    }

    #[test]
    fn matches_the_onnx_definition() {
        // The ONNX specification's examples, and ties on both roundings.
        check(&[0., 2., -3., -2.5, 1.34, 0.5]);
        check(&[-1., -2.1, -1.3, -2.5, -3.34, -4.]);
        check(&[1., 2.1, 1.3, 2.5, 3.34, 4., 1.5, 2.6, 3.9, 4., 3., 2.345]);
        check(&[-127., 128., 0.5]);
        check(&[-253., 257.]);
        check(&[0.0; 40]);
        check(&[]);
        // Pseudo-random activations of several magnitudes and lengths (vector and tail paths).
        let mut s = 0x2545F491u32;
        for len in [1usize, 15, 16, 17, 100, 1537] {
            for mag in [1e-3f32, 1.0, 37.0, 1e4] {
                let xs: Vec<f32> = (0..len)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        (s as f32 / u32::MAX as f32 * 2.0 - 0.7) * mag
                    })
                    .collect();
                check(&xs);
            }
        }
    }

    #[test]
    fn fake_quantisation_is_tract_s_quantise_then_dequantise() {
        use tract_core::ops::quant::quantize_linear_f32_i8;
        let xs: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.013).collect();
        let (qs, qz, ds) = (25.19048f32, -5i8, 0.03969754f32);
        let mut got = xs.clone();
        dinoedge_kernels::activations::fake_quantize_i8(qs, qz, ds, qz, &mut got);
        for (x, g) in xs.iter().zip(&got) {
            let q = quantize_linear_f32_i8(*x, qs, qz as i32);
            let want = (q as i32 - qz as i32) as f32 * ds;
            assert_eq!(g.to_bits(), want.to_bits(), "{x}");
        }
    }
}
