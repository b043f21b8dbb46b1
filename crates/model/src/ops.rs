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

use tract_core::internal::*;
use tract_nnef::internal::{
    IntoAst, ModelBuilder, Registry, ResolvedInvocation, TypeName, Value, invocation,
};

/// ONNX `DynamicQuantizeLinear` to uint8: outputs `(y: u8, scale: f32, zero_point: u8)`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct FastDynamicQuantizeLinearU8;

/// Scale and zero point of a tensor, as ONNX defines them (range extended to include 0).
pub fn scale_and_zero_point(xs: &[f32]) -> (f32, u8) {
    const LANES: usize = 16;
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
    let scale = (max - min) / 255.0;
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zero_point)
}

/// `y = saturate(round_ties_even(x / scale) + zero_point)`, bit-identical to the scalar
/// definition (including `scale == 0`, where every value maps to the zero point).
pub fn quantize_u8(scale: f32, zero_point: u8, xs: &[f32], ys: &mut [u8]) {
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = (round_saturating(*x / scale) + zp).clamp(0.0, 255.0) as u8;
    }
}

/// `round_ties_even(q)` for the quantisers: NaN gives 0 (as Rust's `as i32` does) and the
/// value is first clamped to ±1024, beyond which every 8-bit result saturates anyway. Within
/// that range, adding and subtracting 1.5·2²³ rounds to an integer, ties to even, exactly,
/// with plain float adds the compiler vectorises.
#[inline(always)]
fn round_saturating(q: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let q = if q.is_nan() {
        0.0
    } else {
        q.clamp(-1024.0, 1024.0)
    };
    (q + MAGIC) - MAGIC
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
        let (scale, zero_point) = scale_and_zero_point(xs);
        let mut dst = unsafe { Tensor::uninitialized_dt(u8::datum_type(), input.shape())? };
        quantize_u8(
            scale,
            zero_point,
            xs,
            dst.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        );
        Ok(tvec!(
            dst.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for FastDynamicQuantizeLinearU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut y = inputs[0].without_value();
        y.datum_type = u8::datum_type();
        Ok(tvec!(y, f32::fact([0usize; 0]), u8::fact([0usize; 0])))
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
    let zp = zero_point as f32;
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        *y = (round_saturating(*x * scale) + zp).clamp(-128.0, 127.0) as i8;
    }
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
        let input = &inputs[0];
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut dst = unsafe { Tensor::uninitialized_dt(i8::datum_type(), input.shape())? };
        quantize_i8(
            self.scale,
            self.zero_point,
            xs,
            dst.try_as_plain_ram_mut()?.as_slice_mut::<i8>()?,
        );
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for FastQuantizeLinearI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut y = inputs[0].without_value();
        y.datum_type = i8::datum_type();
        Ok(tvec!(y))
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

const NNEF_ID: &str = "dinoedge_dynamic_quantize_linear_u8";
const NNEF_Q_I8: &str = "dinoedge_quantize_linear_i8";

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
}
