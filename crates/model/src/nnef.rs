//! The compile cache's NNEF dialect: tract-core's, the ONNX and transformer extensions', and a
//! `dinoedge` registry for what tract 0.23.9 cannot write itself — dinoedge's operators
//! ([`crate::ops::register`], [`crate::layer_norm::register_nnef`]), the exact GELU that
//! `Erf`-based MLPs declutter into, and the static quantisers of QDQ files (tract-core's
//! `QuantizeLinearI8`/`U8`, `DequantizeLinearF32` and the `LookupTable` its decluttering makes
//! of a dequantiser → quantiser chain), without which a QDQ file was never cached and compiled
//! again at every start.
//!
//! Each operator is written with its exact parameters (floats in their shortest round-trip
//! form, a table as its 256 bytes) and read back as the same operator: a cached graph computes
//! bit for bit what a fresh one does (`tests/it/cache.rs`).

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::quant::{
    DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8,
};
use tract_nnef::ast::RValue;
use tract_nnef::internal::{
    IntoAst, ModelBuilder, Registry, ResolvedInvocation, TypeName, Value, invocation, numeric,
};
use tract_nnef::ser::array;

const QUANTIZE_I8: &str = "dinoedge_tract_quantize_linear_i8";
const QUANTIZE_U8: &str = "dinoedge_tract_quantize_linear_u8";
const DEQUANTIZE_F32: &str = "dinoedge_tract_dequantize_linear_f32";
const LOOKUP_TABLE: &str = "dinoedge_tract_lookup_table";

/// The NNEF framework the compile cache writes and reads graphs with.
pub(crate) fn framework() -> tract_nnef::framework::Nnef {
    use tract_onnx_opl::WithOnnx;
    use tract_transformers::WithTractTransformers;
    let mut dinoedge = Registry::new("dinoedge");
    dinoedge.register_unit_element_wise("dinoedge_gelu_exact", &tract_core::ops::nn::GeluExact {});
    crate::ops::register(&mut dinoedge);
    crate::layer_norm::register_nnef(&mut dinoedge);
    register_quantisers(&mut dinoedge);
    tract_nnef::nnef()
        .with_onnx()
        .with_tract_transformers()
        .with_registry(dinoedge)
}

/// tract-core's static quantisers, which tract 0.23.9's NNEF has no serialiser for.
fn register_quantisers(registry: &mut Registry) {
    let scale_and_zero = || {
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ]
    };
    registry.register_element_wise(
        QUANTIZE_I8,
        std::any::TypeId::of::<QuantizeLinearI8>(),
        Box::new(dump_quantize),
        scale_and_zero(),
        load_quantize_i8,
    );
    registry.register_element_wise(
        QUANTIZE_U8,
        std::any::TypeId::of::<QuantizeLinearU8>(),
        Box::new(dump_quantize),
        scale_and_zero(),
        load_quantize_u8,
    );
    registry.register_primitive(
        DEQUANTIZE_F32,
        &[
            TypeName::Integer.tensor().named("input"),
            TypeName::Scalar.named("scale"),
            TypeName::Integer.named("zero_point"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_dequantize,
    );
    registry.register_dumper(dump_dequantize);
    registry.register_element_wise(
        LOOKUP_TABLE,
        std::any::TypeId::of::<LookupTable>(),
        Box::new(dump_lookup_table),
        vec![
            TypeName::Integer.tensor().named("input"),
            TypeName::Integer.array().named("table"),
        ],
        load_lookup_table,
    );
}

/// The element-wise operator of `node` as `T`, where it has no output type of its own (tract's
/// quantisers are built so; anything else is left unwritten, and the graph uncached).
fn element_wise<T: ElementWiseMiniOp>(node: &TypedNode) -> Option<&T> {
    let op = node.op_as::<ElementWiseOp>()?;
    op.1.is_none().then_some(())?;
    op.0.downcast_ref::<T>()
}

fn dump_quantize(ast: &mut IntoAst, node: &TypedNode) -> TractResult<Option<Arc<RValue>>> {
    let (id, scale, zero_point) = if let Some(q) = element_wise::<QuantizeLinearI8>(node) {
        (QUANTIZE_I8, q.scale, q.zero_point as i64)
    } else if let Some(q) = element_wise::<QuantizeLinearU8>(node) {
        (QUANTIZE_U8, q.scale, q.zero_point as i64)
    } else {
        return Ok(None);
    };
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(
        id,
        &[input],
        &[
            ("scale", numeric(scale)),
            ("zero_point", numeric(zero_point)),
        ],
    )))
}

fn scale_and_zero(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
) -> TractResult<(OutletId, f32, i64)> {
    Ok((
        invocation.named_arg_as(builder, "input")?,
        invocation.named_arg_as(builder, "scale")?,
        invocation.named_arg_as(builder, "zero_point")?,
    ))
}

fn load_quantize_i8(builder: &mut ModelBuilder, inv: &ResolvedInvocation) -> TractResult<Value> {
    let (input, scale, zero_point) = scale_and_zero(builder, inv)?;
    let zero_point = i8::try_from(zero_point).context("an int8 zero point")?;
    builder.wire(
        tract_core::ops::quant::quantize_linear_i8(scale, zero_point),
        &[input],
    )
}

fn load_quantize_u8(builder: &mut ModelBuilder, inv: &ResolvedInvocation) -> TractResult<Value> {
    let (input, scale, zero_point) = scale_and_zero(builder, inv)?;
    let zero_point = u8::try_from(zero_point).context("a uint8 zero point")?;
    builder.wire(
        tract_core::ops::quant::quantize_linear_u8(scale, zero_point),
        &[input],
    )
}

fn dump_dequantize(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &DequantizeLinearF32,
) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(
        DEQUANTIZE_F32,
        &[input],
        &[
            ("scale", numeric(op.scale)),
            ("zero_point", numeric(op.zero_point as i64)),
        ],
    )))
}

fn load_dequantize(builder: &mut ModelBuilder, inv: &ResolvedInvocation) -> TractResult<Value> {
    let (input, scale, zero_point) = scale_and_zero(builder, inv)?;
    let zero_point = i32::try_from(zero_point).context("an int32 zero point")?;
    builder.wire(DequantizeLinearF32 { scale, zero_point }, &[input])
}

fn dump_lookup_table(ast: &mut IntoAst, node: &TypedNode) -> TractResult<Option<Arc<RValue>>> {
    let Some(op) = element_wise::<LookupTable>(node) else {
        return Ok(None);
    };
    let table: Vec<RValue> = op
        .table
        .table()
        .iter()
        .map(|b| numeric(*b as i64))
        .collect();
    let input = ast.mapping[&node.inputs[0]].clone();
    Ok(Some(invocation(
        LOOKUP_TABLE,
        &[input],
        &[("table", array(table))],
    )))
}

fn load_lookup_table(builder: &mut ModelBuilder, inv: &ResolvedInvocation) -> TractResult<Value> {
    let input: OutletId = inv.named_arg_as(builder, "input")?;
    let table: TVec<i64> = inv.named_arg_as(builder, "table")?;
    let table = table
        .iter()
        .map(|b| u8::try_from(*b).context("a table of bytes"))
        .collect::<TractResult<Vec<u8>>>()?;
    ensure!(
        table.len() == 256,
        "a table of {} bytes, not 256",
        table.len()
    );
    builder.wire(
        tract_core::ops::quant::lookup_table(tract_linalg::routines::lut_u8(&table)?),
        &[input],
    )
}
