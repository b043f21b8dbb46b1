//! Rotary position embeddings (DINOv3's RoPE) as one operator per query or key tensor.
//!
//! Hugging Face's DINOv3 export rotates each block's queries and keys with `rotate_half`:
//! the patch tokens are split from the prefix (CLS and registers), their two halves sliced
//! apart, the second negated and concatenated before the first, both products with the
//! position tables (`cos`, `sin`) taken and added, and the prefix concatenated back — eight
//! operators and as many passes over `[tokens, heads, depth]` per tensor, 24 tensors a run,
//! each too small for tract to split over threads (~10 ms of a 40 ms int8 ViT-S/16 run at
//! 224 stayed on one core). tract's decluttering moves that split up to the projection's
//! input, so the prefix and the patches get a product each (24 products of 5 rows a run, on
//! tract's kernels: ~3 ms of 25).
//!
//! [`swap_rotary`] finds the chain in the decluttered graph, joins the split again (the ops
//! tract repeated for the two slices are wired once on the whole tensor, [`unsplit`]), and
//! puts one [`Rotary`] on the result: a pass over the rows, the prefix's copied and the
//! patches' rotated as `x · cos + rotate_half(x) · sin`, with tract's roundings (a product
//! each, then the sum; no fused multiply-add), so the rotation is the same to the bit.

use tract_core::internal::*;
use tract_core::ops::array::{Slice, TypedConcat};
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::Neg;

use crate::ops::{other_operand, sole_reader};

/// `y = x` on the first `prefix` tokens, `x · cos + rotate_half(x) · sin` on the others;
/// inputs `(x, cos, sin)`, `f32`, the channels on the last axis, `cos` and `sin` as
/// `[tokens − prefix, channels]`. `rotate_half(x)` is `(−x₂, x₁)` for the halves `(x₁, x₂)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rotary {
    /// The axis of the tokens (not the last one).
    pub token_axis: usize,
    /// Tokens left as they are, before the rotated ones (CLS and registers).
    pub prefix: usize,
}

/// One rotated row: `y = x · c + rotate_half(x) · s`, each product rounded, then the sum.
pub fn rotate_row(x: &[f32], c: &[f32], s: &[f32], y: &mut [f32]) {
    let h = x.len() / 2;
    let (x1, x2) = x.split_at(h);
    let (c1, c2) = c.split_at(h);
    let (s1, s2) = s.split_at(h);
    let (y1, y2) = y.split_at_mut(h);
    for i in 0..h {
        y1[i] = x1[i] * c1[i] + (-x2[i]) * s1[i];
        y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
    }
}

impl Op for Rotary {
    fn name(&self) -> StaticName {
        "DinoedgeRotary".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "tokens on axis {}, the first {} as they are",
            self.token_axis, self.prefix
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Rotary {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = inputs[0].shape().to_vec();
        let d = crate::ops::row_len(&shape);
        let axis = self.token_axis;
        ensure!(
            axis + 1 < shape.len() && d.is_multiple_of(2) && self.prefix <= shape[axis],
            "rotary: tokens on axis {axis} of {shape:?}, {} passed through",
            self.prefix
        );
        let tokens = shape[axis];
        // rows from one token to the next (the axes between the tokens' and the channels')
        let stride: usize = shape[axis + 1..shape.len() - 1].iter().product();
        let plain: TVec<_> = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<_>>()?;
        let xs = plain[0].as_slice::<f32>()?;
        let (cos, sin) = (plain[1].as_slice::<f32>()?, plain[2].as_slice::<f32>()?);
        ensure!(
            cos.len() == (tokens - self.prefix) * d && sin.len() == cos.len(),
            "rotary: {} and {} table values for {} tokens of {d}",
            cos.len(),
            sin.len(),
            tokens - self.prefix
        );
        let mut y = unsafe { Tensor::uninitialized_dt(f32::datum_type(), &shape)? };
        {
            let mut out = y.try_as_plain_ram_mut()?;
            let ys = out.as_slice_mut::<f32>()?;
            crate::ops::par_rows(ys, d, |first, chunk| {
                for (i, y) in chunk.chunks_exact_mut(d).enumerate() {
                    let row = first + i;
                    let x = &xs[row * d..][..d];
                    match (row / stride % tokens).checked_sub(self.prefix) {
                        None => y.copy_from_slice(x),
                        Some(p) => rotate_row(x, &cos[p * d..][..d], &sin[p * d..][..d], y),
                    }
                }
                Ok(())
            })?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Rotary {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "rotary on f32 only"
        );
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// A `Slice` node's `(axis, start, end)`, when its bounds are known.
fn slice_of(node: &TypedNode) -> Option<(usize, usize, usize)> {
    let s = node.op_as::<Slice>()?;
    Some((s.axis, s.start.to_usize().ok()?, s.end.to_usize().ok()?))
}

/// The node behind `outlet`.
fn source(model: &TypedModel, outlet: OutletId) -> &TypedNode {
    model.node(outlet.node)
}

/// A constant operand broadcast over everything but the tokens and the channels, as
/// `[tokens, channels]` values (`None` when it varies along another axis or has other sizes).
fn table(
    model: &TypedModel,
    outlet: OutletId,
    rank: usize,
    token_axis: usize,
    tokens: usize,
    channels: usize,
) -> Option<Tensor> {
    let k = model.outlet_fact(outlet).ok()?.konst.clone()?;
    if k.datum_type() != f32::datum_type() || k.rank() > rank {
        return None;
    }
    // broadcasting aligns the last axes
    let shape: Vec<usize> = std::iter::repeat_n(1, rank - k.rank())
        .chain(k.shape().iter().copied())
        .collect();
    let fits = shape.iter().enumerate().all(|(ax, &n)| match ax {
        a if a == token_axis => n == tokens,
        a if a == rank - 1 => n == channels,
        _ => n == 1,
    });
    if !fits {
        return None;
    }
    let plain = k.try_as_plain_ram().ok()?;
    Tensor::from_shape(&[tokens, channels], plain.as_slice::<f32>().ok()?).ok()
}

/// One rotation found: the concatenation it replaces, the prefix and the patches it joins,
/// the op, and its tables.
type Found = (usize, [OutletId; 2], Rotary, Tensor, Tensor);

/// Whether two outlets hold the same values for certain: the same outlet, equal constants,
/// or the same op on such inputs, a few ops deep (tract gives each part of a split its own
/// copy of a bias and of the reshape that feeds it).
fn same_value(model: &TypedModel, a: OutletId, b: OutletId, depth: usize) -> bool {
    let konst = |o| model.outlet_fact(o).ok().and_then(|f| f.konst.clone());
    if a == b || matches!((konst(a), konst(b)), (Some(x), Some(y)) if x == y) {
        return true;
    }
    let (na, nb) = (model.node(a.node), model.node(b.node));
    depth > 0
        && a.slot == b.slot
        && !na.inputs.is_empty()
        && na.inputs.len() == nb.inputs.len()
        && na.op().dyn_eq(nb.op())
        && na
            .inputs
            .iter()
            .zip(&nb.inputs)
            .all(|(x, y)| same_value(model, *x, *y, depth - 1))
}

/// One op tract repeated for the two parts of a split: the patches' node, the input on the
/// path from the split, and the output slot the path leaves by.
pub type RepeatedOp = (usize, usize, usize);

/// The whole tensor that tract split into `prefix` and `patches` and the ops it repeated on
/// the two parts: walking back from both in step while the two nodes are the same op on the
/// same inputs but one (the path; [`same_value`]), down to two slices of one outlet on one
/// axis that cover it from the start and meet. The ops come in order from the slices on;
/// none when the two did not come from one split.
pub fn unsplit(
    model: &TypedModel,
    prefix: OutletId,
    patches: OutletId,
) -> Option<(OutletId, Vec<RepeatedOp>)> {
    let (mut a, mut b) = (prefix, patches);
    let mut ops = Vec::new();
    loop {
        if a.slot != b.slot || a.node == b.node {
            return None;
        }
        let (na, nb) = (model.node(a.node), model.node(b.node));
        if let (Some(sa), Some(sb)) = (slice_of(na), slice_of(nb)) {
            let whole = na.inputs[0];
            let len = model.outlet_fact(whole).ok()?.shape.as_concrete()?[sa.0];
            let covers = sa.0 == sb.0 && sa.1 == 0 && sa.2 == sb.1 && sb.2 == len;
            if nb.inputs[0] != whole || !covers {
                return None;
            }
            ops.reverse();
            return Some((whole, ops));
        }
        if na.inputs.len() != nb.inputs.len() || !na.op().dyn_eq(nb.op()) {
            return None;
        }
        let mut differ =
            (0..na.inputs.len()).filter(|&i| !same_value(model, na.inputs[i], nb.inputs[i], 3));
        let (Some(path), None) = (differ.next(), differ.next()) else {
            return None;
        };
        ops.push((nb.id, path, b.slot));
        (a, b) = (na.inputs[path], nb.inputs[path]);
    }
}

/// The chain around the negation `neg`, when it is `rotate_half` inside a rotary embedding of
/// the patch tokens (see the module's documentation).
fn candidate(model: &TypedModel, neg: &TypedNode) -> Option<Found> {
    let op = neg.op_as::<ElementWiseOp>()?;
    if !op.0.is::<Neg>() || op.1.is_some() {
        return None;
    }
    // x₂ = a[.., h..2h] is negated and put before x₁ = a[.., 0..h]
    let second = source(model, neg.inputs[0]);
    let (axis, h, end) = slice_of(second)?;
    let a = second.inputs[0];
    let fact = model.outlet_fact(a).ok()?;
    let shape = fact.shape.as_concrete()?.to_vec();
    let rank = shape.len();
    if fact.datum_type != f32::datum_type()
        || axis + 1 != rank
        || end != 2 * h
        || shape[axis] != end
    {
        return None;
    }
    let concat = sole_reader(model, OutletId::new(neg.id, 0))?;
    if concat.op_as::<TypedConcat>()?.axis != axis || concat.inputs.len() != 2 {
        return None;
    }
    let first = source(model, concat.inputs[1]);
    if concat.inputs[0] != OutletId::new(neg.id, 0)
        || first.inputs[0] != a
        || slice_of(first)? != (axis, 0, h)
    {
        return None;
    }
    // a · cos + rotate_half(a) · sin
    let times_sin = sole_reader(model, OutletId::new(concat.id, 0))?;
    let sin = other_operand(times_sin, "Mul", OutletId::new(concat.id, 0))?;
    let add = sole_reader(model, OutletId::new(times_sin.id, 0))?;
    let times_cos = other_operand(add, "Add", OutletId::new(times_sin.id, 0))?;
    let times_cos = source(model, times_cos);
    if sole_reader(model, OutletId::new(times_cos.id, 0))?.id != add.id {
        return None;
    }
    let cos = other_operand(times_cos, "Mul", a)?;
    // the prefix goes back before the result, on the token axis
    let outer = sole_reader(model, OutletId::new(add.id, 0))?;
    let token_axis = outer.op_as::<TypedConcat>()?.axis;
    if outer.inputs.len() != 2 || outer.inputs[1] != OutletId::new(add.id, 0) {
        return None;
    }
    let prefix = outer.inputs[0];
    let prefix_fact = model.outlet_fact(prefix).ok()?;
    let prefix_shape = prefix_fact.shape.as_concrete()?;
    let same = prefix_shape.len() == rank
        && (0..rank).all(|ax| ax == token_axis || prefix_shape[ax] == shape[ax]);
    if prefix_fact.datum_type != f32::datum_type() || !same || token_axis + 1 >= rank {
        return None;
    }
    let cos = table(model, cos, rank, token_axis, shape[token_axis], end)?;
    let sin = table(model, sin, rank, token_axis, shape[token_axis], end)?;
    let op = Rotary {
        token_axis,
        prefix: prefix_shape[token_axis],
    };
    Some((outer.id, [prefix, a], op, cos, sin))
}

/// Whether rotary embeddings run as [`Rotary`]: yes, unless `DINOEDGE_ROTARY=tract` (to
/// measure tract's chain against it, or to rule it out).
pub fn enabled() -> bool {
    std::env::var("DINOEDGE_ROTARY").map_or(true, |v| v != "tract")
}

/// The tensor the rotation reads, wired into `patch`: the whole one that `parts` (the prefix
/// and the patches) were split from, the split's ops wired once on it, when its shape is
/// `joined`'s; else the two parts concatenated on `axis`.
fn whole_input(
    model: &TypedModel,
    patch: &mut TypedModelPatch,
    name: &str,
    parts: [OutletId; 2],
    axis: usize,
    joined: &TypedFact,
) -> TractResult<OutletId> {
    if let Some((source, ops)) = unsplit(model, parts[0], parts[1]) {
        let mut trial = TypedModelPatch::default();
        let mut wire = trial.tap_model(model, source)?;
        for (node, path, slot) in &ops {
            let node = model.node(*node);
            let mut inputs = trial.taps(model, &node.inputs)?;
            inputs[*path] = wire;
            wire =
                trial.wire_node(format!("{}.whole", node.name), node.op.clone(), &inputs)?[*slot];
        }
        if *trial.outlet_fact(wire)? == joined.without_value() {
            *patch = trial;
            return Ok(wire);
        }
    }
    tracing::debug!("{name}: the rotary embedding's prefix and patches are joined as they are");
    let taps = patch.taps(model, &parts)?;
    Ok(patch.wire_node(format!("{name}.joined"), TypedConcat::new(axis), &taps)?[0])
}

/// Replace every rotary chain in the decluttered `model` by a [`Rotary`]; how many.
pub fn swap_rotary(model: &mut TypedModel) -> TractResult<usize> {
    let found: Vec<Found> = model
        .nodes()
        .iter()
        .filter_map(|n| candidate(model, n))
        .collect();
    for (outer, parts, op, cos, sin) in &found {
        let mut patch = TypedModelPatch::default();
        let name = model.node(*outer).name.clone();
        let joined = model.outlet_fact(OutletId::new(*outer, 0))?.clone();
        let x = whole_input(model, &mut patch, &name, *parts, op.token_axis, &joined)?;
        let cos = patch.add_const(format!("{name}.dinoedge_cos"), cos.clone())?;
        let sin = patch.add_const(format!("{name}.dinoedge_sin"), sin.clone())?;
        let out = patch.wire_node(
            format!("{name}.dinoedge_rotary"),
            op.clone(),
            &[x, cos, sin],
        )?;
        patch.shunt_outside(model, OutletId::new(*outer, 0), out[0])?;
        patch.apply(model)?;
    }
    if !found.is_empty() {
        model.compact()?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dinoedge_testkit::noise;
    use tract_core::ops::binary::TypedBinOp;
    use tract_core::ops::math;

    /// How the prefix and the patches come from `x`.
    #[derive(Clone, Copy, Debug)]
    enum Split {
        /// Two slices of `x`.
        Slices,
        /// Two slices of `x`, each plus the same bias (as tract splits a projection).
        ThroughAdd,
        /// Two slices of `x`, each plus another bias: not one split.
        Unrelated,
    }

    /// HF's DINOv3 chain on `x` `[batch, tokens, heads, depth]`, tables `[1, tokens − prefix,
    /// 1, depth]` (constants of the full rank, as decluttering leaves them); with `swapped`,
    /// the halves concatenated the other way round (not `rotate_half`).
    fn hf_chain(
        batch: usize,
        tokens: usize,
        heads: usize,
        depth: usize,
        prefix: usize,
        swapped: bool,
        split: Split,
    ) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m
            .add_source("x", f32::fact([batch, tokens, heads, depth]))
            .unwrap();
        let p = tokens - prefix;
        let table = |seed| {
            Tensor::from_shape(&[1, p, 1, depth], &noise(p * depth, seed))
                .unwrap()
                .into_arc_tensor()
        };
        let cos = m.add_const("cos", table(7)).unwrap();
        let sin = m.add_const("sin", table(8)).unwrap();
        let h = depth / 2;
        let w = |m: &mut TypedModel, name: &str, op: Box<dyn TypedOp>, inputs: &[OutletId]| {
            m.wire_node(name, op, inputs).unwrap()[0]
        };
        let head = w(&mut m, "head", Box::new(Slice::new(1, 0, prefix)), &[x]);
        let a = w(&mut m, "a", Box::new(Slice::new(1, prefix, tokens)), &[x]);
        let bias = |m: &mut TypedModel, name: &str, seed| {
            let b = Tensor::from_shape(&[1, 1, 1, depth], &noise(depth, seed)).unwrap();
            m.add_const(name, b.into_arc_tensor()).unwrap()
        };
        let add = || Box::new(TypedBinOp(Box::new(math::Add), None));
        let (head, a) = match split {
            Split::Slices => (head, a),
            Split::ThroughAdd => {
                // each part its own copy of the bias and of the op that shapes it, as tract's
                // split leaves them
                let shaped = |m: &mut TypedModel, name: &str| {
                    let b = Tensor::from_shape(&[1, 1, depth], &noise(depth, 9)).unwrap();
                    let b = m.add_const(name, b.into_arc_tensor()).unwrap();
                    w(m, &format!("{name}.shaped"), Box::new(AxisOp::Add(0)), &[b])
                };
                let (b1, b2) = (shaped(&mut m, "b1"), shaped(&mut m, "b2"));
                (
                    w(&mut m, "head+b", add(), &[head, b1]),
                    w(&mut m, "a+b", add(), &[a, b2]),
                )
            }
            Split::Unrelated => {
                let (b1, b2) = (bias(&mut m, "b1", 9), bias(&mut m, "b2", 10));
                (
                    w(&mut m, "head+b", add(), &[head, b1]),
                    w(&mut m, "a+b", add(), &[a, b2]),
                )
            }
        };
        let x1 = w(&mut m, "x1", Box::new(Slice::new(3, 0, h)), &[a]);
        let x2 = w(&mut m, "x2", Box::new(Slice::new(3, h, depth)), &[a]);
        let neg = w(&mut m, "neg", Box::new(math::neg()), &[x2]);
        let halves = if swapped { [x1, neg] } else { [neg, x1] };
        let rot = w(&mut m, "rot", Box::new(TypedConcat::new(3)), &halves);
        let mul = || Box::new(TypedBinOp(Box::new(math::Mul), None));
        let mc = w(&mut m, "mc", mul(), &[a, cos]);
        let ms = w(&mut m, "ms", mul(), &[rot, sin]);
        let sum = w(&mut m, "sum", add(), &[mc, ms]);
        let out = w(&mut m, "out", Box::new(TypedConcat::new(1)), &[head, sum]);
        m.select_output_outlets(&[out]).unwrap();
        m
    }

    fn run(m: TypedModel, x: &Tensor) -> Tensor {
        let plan = TypedSimplePlan::new(m).unwrap();
        let out = plan.run(tvec!(x.clone().into_tvalue())).unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn the_fused_rotation_is_tracts_chain_to_the_bit() {
        let sizes = [
            (1, 201, 6, 64, 5, Split::Slices),
            (2, 13, 2, 8, 1, Split::ThroughAdd),
            (3, 7, 3, 2, 4, Split::Unrelated),
            (1, 201, 6, 64, 5, Split::ThroughAdd),
        ];
        for (batch, tokens, heads, depth, prefix, split) in sizes {
            let chain = hf_chain(batch, tokens, heads, depth, prefix, false, split);
            let shape = [batch, tokens, heads, depth];
            let x = Tensor::from_shape(&shape, &noise(shape.iter().product(), 3)).unwrap();
            let want = run(chain.clone(), &x);
            let mut fused = chain;
            assert_eq!(swap_rotary(&mut fused).unwrap(), 1);
            assert!(fused.nodes().iter().any(|n| n.op_is::<Rotary>()));
            // one split joined again: no concatenation left; else the parts joined for it
            let concats = fused
                .nodes()
                .iter()
                .filter(|n| n.op_is::<TypedConcat>())
                .count();
            let adds = fused
                .nodes()
                .iter()
                .filter(|n| n.op_is::<TypedBinOp>())
                .count();
            match split {
                Split::Unrelated => assert_eq!((concats, adds), (1, 2)),
                Split::ThroughAdd => assert_eq!((concats, adds), (0, 1)),
                Split::Slices => assert_eq!((concats, adds), (0, 0)),
            }
            let got = run(fused, &x);
            let (got, want) = (
                got.try_as_plain_ram().unwrap(),
                want.try_as_plain_ram().unwrap(),
            );
            let (got, want) = (
                got.as_slice::<f32>().unwrap(),
                want.as_slice::<f32>().unwrap(),
            );
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "{shape:?}, prefix {prefix}, {split:?}"
            );
        }
    }

    #[test]
    fn another_chain_is_left_alone() {
        // the halves in the other order is not rotate_half
        let mut m = hf_chain(1, 9, 2, 8, 1, true, Split::Slices);
        assert_eq!(swap_rotary(&mut m).unwrap(), 0);
    }
}
