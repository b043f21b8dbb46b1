//! Image resizes (`Resize` over the last two axes of `[N, C, H, W]`) in one pass per plane.
//!
//! Depth Anything's DPT neck and head upsample their feature maps five times per run
//! (bilinear, `align_corners`), the last to the input size: 80 ms of a 340 ms run of the small
//! int8 model at 308x308 on one thread in tract 0.23.9, more than the whole encoder's weight
//! products. tract resamples one axis at a time into a new buffer, and the width pass touches
//! one value at a time through a general loop. [`Resize2d`] computes the same plan as tract
//! (tract's own `plan_axis`: the same taps and weights for every interpolation and coordinate
//! mode) and the same sums in the same order — the height pass first, `0 + w₀·s₀ + w₁·s₁ …`
//! skipping zero weights, then the width pass likewise — so every value is tract's, bit for
//! bit; but each plane is done row by row with the row kept in L1, and the planes are split
//! over the backbone's threads.

use tract_core::internal::*;
use tract_core::ops::nn::Resize;
use tract_core::ops::nn::resize::AxisPlan;

/// tract-core's `Resize` on a rank-4 `f32` tensor whose first two axes are unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Resize2d {
    /// tract's operator (its interpolation and coordinate modes make the plans).
    pub resize: Resize,
    /// Scale of the height axis as tract uses it (the `scales` input, or output / input).
    pub scale_h: f32,
    /// Scale of the width axis, likewise.
    pub scale_w: f32,
    /// Output height and width.
    pub out_hw: (usize, usize),
}

impl Eq for Resize2d {}

impl std::hash::Hash for Resize2d {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.resize.hash(state);
        self.scale_h.to_bits().hash(state);
        self.scale_w.to_bits().hash(state);
        self.out_hw.hash(state);
    }
}

/// `dst = Σ w · src[i]` over one plan entry's taps, from 0, zero weights skipped, as tract's
/// `resample_axis` sums them; `src` and `dst` rows of `inner` values.
fn taps_into(dst: &mut [f32], src: &[f32], inner: usize, indices: &[usize], weights: &[f32]) {
    dst.fill(0.0);
    for (&i, &w) in indices.iter().zip(weights) {
        if w == 0.0 {
            continue;
        }
        for (d, s) in dst.iter_mut().zip(&src[i * inner..][..inner]) {
            *d += w * s;
        }
    }
}

/// One `[h, w]` plane into `[ho, wo]`: per output row, the height pass into `row` (or the
/// input row itself when the height does not change), then the width pass.
fn resize_plane(
    src: &[f32],
    (h, w): (usize, usize),
    plan_h: Option<&AxisPlan>,
    plan_w: Option<&AxisPlan>,
    row: &mut [f32],
    dst: &mut [f32],
) {
    let wo = dst.len() / plan_h.map_or(h, |p| p.extrapolated.len());
    for (y, out_row) in dst.chunks_exact_mut(wo).enumerate() {
        let row: &[f32] = match plan_h {
            Some(p) => {
                let k = p.window;
                taps_into(
                    row,
                    src,
                    w,
                    &p.indices[y * k..][..k],
                    &p.weights[y * k..][..k],
                );
                row
            }
            None => &src[y * w..][..w],
        };
        match plan_w {
            Some(p) => {
                let k = p.window;
                for (x, out) in out_row.iter_mut().enumerate() {
                    let (idx, wt) = (&p.indices[x * k..][..k], &p.weights[x * k..][..k]);
                    let mut acc = 0.0f32;
                    for (&i, &wv) in idx.iter().zip(wt) {
                        if wv != 0.0 {
                            acc += wv * row[i];
                        }
                    }
                    *out = acc;
                }
            }
            None => out_row.copy_from_slice(row),
        }
    }
}

impl Op for Resize2d {
    fn name(&self) -> StaticName {
        "DinoedgeResize2d".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} {:?}, to {}x{}",
            self.resize.interpolator, self.resize.coord_transformer, self.out_hw.0, self.out_hw.1
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Resize2d {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let [n, c, h, w] = *input.shape() else {
            bail!("Resize2d takes [N, C, H, W], got {:?}", input.shape());
        };
        let (ho, wo) = self.out_hw;
        // tract skips an axis whose length and scale do not change
        let plan = |scale: f32, len_in: usize, len_out: usize| {
            (len_in != len_out || scale != 1.0)
                .then(|| self.resize.plan_axis(scale, len_in, len_out))
        };
        let (plan_h, plan_w) = (plan(self.scale_h, h, ho), plan(self.scale_w, w, wo));
        let plain = input.try_as_plain_ram()?;
        let xs = plain.as_slice::<f32>()?;
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[n, c, ho, wo])? };
        {
            let mut o = out.try_as_plain_ram_mut()?;
            let ys = o.as_slice_mut::<f32>()?;
            crate::ops::par_rows(ys, ho * wo, |first, planes| {
                let mut row = vec![0f32; w];
                for (i, dst) in planes.chunks_exact_mut(ho * wo).enumerate() {
                    let src = &xs[(first + i) * h * w..][..h * w];
                    resize_plane(src, (h, w), plan_h.as_ref(), plan_w.as_ref(), &mut row, dst);
                }
                Ok(())
            })?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Resize2d {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let s = &inputs[0].shape;
        ensure!(s.rank() == 4, "Resize2d takes [N, C, H, W]");
        let (ho, wo) = self.out_hw;
        Ok(tvec!(f32::fact([
            s[0].clone(),
            s[1].clone(),
            ho.to_dim(),
            wo.to_dim()
        ])))
    }

    as_op!();
}

/// The scales tract uses for `node`'s resize: its constant `scales` input when it has one
/// per axis, else output / input.
fn scales(
    model: &TypedModel,
    node: &TypedNode,
    op: &Resize,
    i: &[usize],
    o: &[usize],
) -> Option<Vec<f32>> {
    let given = op
        .optional_scales_input
        .and_then(|ix| node.inputs.get(ix))
        .and_then(|outlet| model.outlet_fact(*outlet).ok()?.konst.clone())
        .and_then(|t| {
            Some(
                t.cast_to::<f32>()
                    .ok()?
                    .try_as_plain_ram()
                    .ok()?
                    .as_slice::<f32>()
                    .ok()?
                    .to_vec(),
            )
        })
        .filter(|s| s.len() == i.len());
    Some(given.unwrap_or_else(|| {
        o.iter()
            .zip(i)
            .map(|(o, i)| *o as f32 / *i as f32)
            .collect()
    }))
}

/// Swap tract-core's `Resize` for [`Resize2d`] where it resizes the last two axes of a rank-4
/// `f32` tensor of known shape. Returns how many were swapped.
pub fn swap_resizes(model: &mut TypedModel) -> usize {
    let mut swaps = vec![];
    for node in model.nodes() {
        let Some(op) = node.op_as::<Resize>() else {
            continue;
        };
        let facts = (
            model.outlet_fact(node.inputs[0]),
            model.outlet_fact(node.id.into()),
        );
        let (Ok(i), Ok(o)) = facts else { continue };
        let (Some(is), Some(os)) = (i.shape.as_concrete(), o.shape.as_concrete()) else {
            continue;
        };
        if i.datum_type != f32::datum_type() || is.len() != 4 || os.len() != 4 {
            continue;
        }
        let Some(sc) = scales(model, node, op, is, os) else {
            continue;
        };
        // the batch and channel axes must be left alone, as tract would leave them
        if is[..2] != os[..2] || sc[0] != 1.0 || sc[1] != 1.0 {
            continue;
        }
        swaps.push((
            node.id,
            Resize2d {
                resize: op.clone(),
                scale_h: sc[2],
                scale_w: sc[3],
                out_hw: (os[2], os[3]),
            },
        ));
    }
    let n = swaps.len();
    for (id, op) in swaps {
        model.node_mut(id).op = Box::new(op);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::nn::{CoordTransformer, Interpolator, Nearest};

    fn values(t: &Tensor) -> Vec<f32> {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn tract_resize(op: &Resize, x: &Tensor, scales: &[f32]) -> Tensor {
        let out = op
            .eval_out_of_plan(tvec!(
                x.clone().into_tvalue(),
                tensor1(scales).into_tvalue()
            ))
            .unwrap()
            .unwrap();
        out[0].clone().into_tensor()
    }

    #[test]
    fn equals_tracts_resize_bit_for_bit() {
        let x = Tensor::from_shape(
            &[2, 3, 5, 7],
            &(0..210)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.3)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for interpolator in [
            Interpolator::Linear,
            Interpolator::Cubic,
            Interpolator::Nearest,
        ] {
            for coord in [CoordTransformer::AlignCorners, CoordTransformer::HalfPixel] {
                for scales in [
                    [1.0, 1.0, 2.0, 2.0],
                    [1.0, 1.0, 1.0, 3.0],
                    [1.0, 1.0, 0.6, 1.0],
                ] {
                    let op = Resize {
                        coord_transformer: coord.clone(),
                        interpolator: interpolator.clone(),
                        nearest: Nearest::Floor,
                        optional_scales_input: Some(1),
                        optional_sizes_input: None,
                    };
                    let want = tract_resize(&op, &x, &scales);
                    let (ho, wo) = (want.shape()[2], want.shape()[3]);
                    let ours = Resize2d {
                        resize: op,
                        scale_h: scales[2],
                        scale_w: scales[3],
                        out_hw: (ho, wo),
                    };
                    let got = ours
                        .eval_out_of_plan(tvec!(x.clone().into_tvalue()))
                        .unwrap()
                        .unwrap();
                    let (g, w) = (values(&got[0]), values(&want));
                    assert_eq!(got[0].shape(), want.shape());
                    let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{interpolator:?} {coord:?} {scales:?}");
                }
            }
        }
    }
}
