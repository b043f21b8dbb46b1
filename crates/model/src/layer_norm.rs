//! ONNX `LayerNormalization` as one operator.
//!
//! tract-onnx expands each LayerNorm into a chain (sum, divide, subtract, square, sum, add,
//! reciprocal square root, multiply, multiply, add) that tract then runs as four or five
//! passes over the tokens: in an int8 ViT-S at 224 the 25 LayerNorms cost ~4.6 ms a run on one
//! thread (`Reduce<Sum>`, `OptSubByScalar`, `RmsNorm`, `OptBinChain` in `dinoedge bench
//! --profile`), as much as a third of the weight products. [`LayerNorm`] does each row in one
//! operator: the mean, the variance of the differences (two passes over a row that stays in
//! L1), then `(x − mean) · (1 / √(var + ε)) · γ + β`, rounded in that order (no fused
//! multiply-add), the rows split over the backbone's threads like dinoedge's other
//! element-wise operators.
//!
//! [`register_onnx`] puts it in place of tract-onnx's expansion for the LayerNorms it covers
//! (the last axis, with a bias, `f32`, no mean or inverse deviation outputs: every DINOv2
//! export); any other keeps tract's.

use std::sync::OnceLock;

use tract_core::internal::*;
use tract_nnef::internal::{
    IntoAst, ModelBuilder, Registry, ResolvedInvocation, TypeName, Value, invocation, numeric,
};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::{
    Expansion, InferenceOp, InferenceResult, Solver, TensorProxy, check_input_arity,
    check_output_arity, expand,
};

/// `y = (x − mean(x)) / √(var(x) + ε) · γ + β` over the last axis; inputs `(x, γ, β)`, all
/// `f32`, `γ` and `β` as long as the last axis.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// ε, added to the variance.
    pub epsilon: f32,
}

impl Eq for LayerNorm {}

impl std::hash::Hash for LayerNorm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.epsilon.to_bits().hash(state);
    }
}

/// `Σ f(x)` over `xs` in 16 running sums (so the compiler vectorises it), then their sum.
fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|x| f(*x)).sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += f(*x);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One row: `y = (x − mean) · inv · γ + β`, `inv = 1 / √(var + ε)`.
pub fn normalize_row(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f32, y: &mut [f32]) {
    let n = x.len() as f32;
    let mean = sum16(x, |v| v) / n;
    let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + epsilon).sqrt();
    for (((y, x), g), b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *y = (*x - mean) * inv * *g + *b;
    }
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "DinoedgeLayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("epsilon: {}", self.epsilon)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (gamma, beta) = (inputs[1].try_as_plain_ram()?, inputs[2].try_as_plain_ram()?);
        let (gamma, beta) = (gamma.as_slice::<f32>()?, beta.as_slice::<f32>()?);
        let c = crate::ops::row_len(inputs[0].shape());
        ensure!(
            gamma.len() == c && beta.len() == c,
            "LayerNorm over {c} values with {} scales and {} biases",
            gamma.len(),
            beta.len()
        );
        let y = crate::ops::map_rows(&inputs[0], |xs: &[f32], ys: &mut [f32]| {
            for (x, y) in xs.chunks_exact(c).zip(ys.chunks_exact_mut(c)) {
                normalize_row(x, gamma, beta, self.epsilon, y)
            }
        })?;
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "LayerNorm on f32 only"
        );
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// The ONNX side: what a covered `LayerNormalization` node parses into.
#[derive(Clone, Debug)]
struct OnnxLayerNorm {
    epsilon: f32,
}

impl Expansion for OnnxLayerNorm {
    fn name(&self) -> StaticName {
        "DinoedgeLayerNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, f32::datum_type())?;
        s.equals(&inputs[2].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            LayerNorm {
                epsilon: self.epsilon,
            },
            inputs,
        )
    }
}

/// tract-onnx's own parser, for the LayerNorms dinoedge's operator does not cover.
type OnnxBuilder = fn(
    &tract_onnx::model::ParsingContext,
    &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;
static TRACT_LAYER_NORM: OnceLock<OnnxBuilder> = OnceLock::new();

fn parse(
    ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(-1);
    let stash: i64 = node.get_attr_opt("stash_type")?.unwrap_or(1); // 1: FLOAT
    let extra_outputs = node.output.iter().skip(1).any(|o| !o.is_empty());
    if axis == -1 && stash == 1 && node.input.len() == 3 && !extra_outputs {
        let epsilon = node.get_attr_opt("epsilon")?.unwrap_or(1e-5);
        return Ok((expand(OnnxLayerNorm { epsilon }), vec![]));
    }
    match TRACT_LAYER_NORM.get() {
        Some(tract) => tract(ctx, node),
        None => bail!("LayerNormalization: tract-onnx's parser was not registered"),
    }
}

/// Whether LayerNorms are parsed into [`LayerNorm`]: yes, unless `DINOEDGE_LAYER_NORM=tract`
/// (to measure tract's chain against it, or to rule it out).
pub fn enabled() -> bool {
    std::env::var("DINOEDGE_LAYER_NORM").map_or(true, |v| v != "tract")
}

/// Parse the covered `LayerNormalization` nodes into [`LayerNorm`] (the others as tract does).
pub fn register_onnx(onnx: &mut tract_onnx::Onnx) {
    if let Some(tract) = onnx.op_register.0.get("LayerNormalization") {
        let _ = TRACT_LAYER_NORM.set(*tract);
    }
    onnx.op_register.insert("LayerNormalization", parse);
}

const NNEF_ID: &str = "dinoedge_layer_norm";

/// [`LayerNorm`] in the compile cache's NNEF dialect (ε as its exact bits).
pub fn register_nnef(registry: &mut Registry) {
    registry.register_primitive(
        NNEF_ID,
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Scalar.tensor().named("gamma"),
            TypeName::Scalar.tensor().named("beta"),
            TypeName::Scalar.named("epsilon"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load,
    );
    registry.register_dumper(dump);
}

fn dump(
    ast: &mut IntoAst,
    node: &TypedNode,
    op: &LayerNorm,
) -> TractResult<Option<Arc<tract_nnef::internal::RValue>>> {
    let inputs: Vec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    Ok(Some(invocation(
        NNEF_ID,
        &inputs,
        &[("epsilon", numeric(op.epsilon))],
    )))
}

fn load(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let gamma = invocation.named_arg_as(builder, "gamma")?;
    let beta = invocation.named_arg_as(builder, "beta")?;
    let epsilon: f32 = invocation.named_arg_as(builder, "epsilon")?;
    builder.wire(LayerNorm { epsilon }, &[input, gamma, beta])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in f64.
    fn reference(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
        let n = x.len() as f64;
        let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
        let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
        x.iter()
            .zip(g.iter().zip(b))
            .map(|(x, (g, b))| {
                (*x as f64 - mean) / (var + eps as f64).sqrt() * *g as f64 + *b as f64
            })
            .collect()
    }

    #[test]
    fn a_row_matches_the_definition_at_every_length() {
        for n in [1, 7, 16, 33, 384, 1025] {
            // an offset far from zero, as residual streams have: the mean must not swamp it
            let x: Vec<f32> = (0..n)
                .map(|i| 40.0 + ((i * 37 % 101) as f32 - 50.0) * 0.03)
                .collect();
            let g: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 3) as f32 - 1.0).collect();
            let mut y = vec![0f32; n];
            normalize_row(&x, &g, &b, 1e-6, &mut y);
            for (i, (got, want)) in y.iter().zip(reference(&x, &g, &b, 1e-6)).enumerate() {
                assert!(
                    (*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "n {n} at {i}: {got} vs {want}"
                );
            }
        }
    }
}
