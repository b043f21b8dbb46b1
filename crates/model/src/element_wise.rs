//! Two of tract-core's element-wise operators that a DINOv2 run spends time in, as dinoedge
//! operators: the exact GELU of every block's MLP (`x/2 · (1 + erf(x/√2))`, tract's `GeluExact`,
//! into which the ONNX files' `Erf` chains declutter) and the u8 → i8 offset in front of tract's
//! int8 products (`OffsetU8asI8`, where dinoedge's own products do not run: ARM). Each gives
//! tract's result bit for bit (the same arithmetic in the same order, the same erf kernel:
//! tract-linalg's), split over the backbone's threads where the tensor is large.
//!
//! Why: a loop of tract-core runs at tract-core's opt-level, and the board packages' `dist`
//! profile builds tract-core at `z` for size (Cargo.toml), where LLVM vectorises no loop: there
//! these two took 8–15 ms a ViT-S run on x86 against 3–4 at opt-level 3. Here they run at
//! dinoedge-model's opt-level (3 in every profile).

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_linalg::routines::Func;

use crate::ops::{map_rows_as, par_rows, row_len};

/// `1/√2`, as tract-core computes it for its GELU.
fn inv_sqrt2() -> f32 {
    (2.0f32).sqrt().recip()
}

/// The exact GELU on f32, in place: `x·c` into a scratch row, tract-linalg's erf over it, then
/// `(x·0.5)·(erf + 1)` — tract-core's `GeluExact`, bit for bit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gelu;

/// Elements per erf call (tract's own chunk).
const CHUNK: usize = 1024;

/// The loop of [`Gelu`] over one part of a tensor.
pub fn gelu_in_place(xs: &mut [f32]) -> TractResult<()> {
    let erf = Func::Erf.ew_f32()?;
    let c = inv_sqrt2();
    let mut scratch = vec![0f32; xs.len().min(CHUNK)];
    for chunk in xs.chunks_mut(CHUNK) {
        let scaled = &mut scratch[..chunk.len()];
        scaled
            .iter_mut()
            .zip(chunk.iter())
            .for_each(|(s, x)| *s = *x * c);
        erf.run(scaled)?;
        chunk
            .iter_mut()
            .zip(scaled.iter())
            .for_each(|(x, e)| *x = (*x * 0.5) * (*e + 1.0));
    }
    Ok(())
}

impl Op for Gelu {
    fn name(&self) -> StaticName {
        "DinoedgeGelu".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Gelu {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = inputs.remove(0).into_tensor();
        let n = row_len(t.shape());
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            let xs = plain.as_slice_mut::<f32>()?;
            par_rows(xs, n, |_, part| gelu_in_place(part))?;
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for Gelu {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == f32::datum_type(),
            "DinoedgeGelu takes f32"
        );
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

/// u8 (or QU8) → i8 (or QI8, its zero point 128 lower): `x - 128` wrapped, as tract-core's
/// `OffsetU8asI8` (the flip of the top bit).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OffsetU8AsI8 {
    /// The output's type, as tract computed it for the node this replaces.
    pub output: DatumType,
}

/// The loop of [`OffsetU8AsI8`].
pub fn offset_u8_as_i8(xs: &[u8], ys: &mut [i8]) {
    for (y, x) in ys.iter_mut().zip(xs) {
        *y = (*x ^ 0x80) as i8;
    }
}

impl Op for OffsetU8AsI8 {
    fn name(&self) -> StaticName {
        "DinoedgeOffsetU8asI8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for OffsetU8AsI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        ensure!(
            input.datum_type().unquantized() == u8::datum_type(),
            "DinoedgeOffsetU8asI8 takes u8, not {:?}",
            input.datum_type()
        );
        let dst = map_rows_as(input, self.output, offset_u8_as_i8)?;
        Ok(tvec!(dst.into_tvalue()))
    }
}

impl TypedOp for OffsetU8AsI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut y = inputs[0].without_value();
        y.datum_type = self.output;
        Ok(tvec!(y))
    }

    as_op!();
}

/// Swap tract-core's `GeluExact` on f32 and `OffsetU8asI8` in an optimised model for the
/// operators above. Returns how many were swapped.
pub fn swap_element_wise(model: &mut TypedModel) -> TractResult<usize> {
    use tract_core::ops::nn::GeluExact;
    use tract_core::ops::quant::OffsetU8asI8;
    let mut swaps: Vec<(usize, Box<dyn TypedOp>)> = vec![];
    for n in model.nodes() {
        let Some(op) = n.op_as::<ElementWiseOp>() else {
            continue;
        };
        let input = model.outlet_fact(n.inputs[0])?.datum_type;
        let output = model.outlet_fact(OutletId::new(n.id, 0))?.datum_type;
        if op.0.downcast_ref::<GeluExact>().is_some() && input == f32::datum_type() {
            swaps.push((n.id, Box::new(Gelu)));
        } else if op.0.downcast_ref::<OffsetU8asI8>().is_some()
            && input.unquantized() == u8::datum_type()
            && output.unquantized() == i8::datum_type()
        {
            swaps.push((n.id, Box::new(OffsetU8AsI8 { output })));
        }
    }
    let swapped = swaps.len();
    for (id, op) in swaps {
        model.node_mut(id).op = op;
    }
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::element_wise::ElementWiseMiniOp;

    fn values<T: Datum + Clone>(t: &Tensor) -> Vec<T> {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<T>()
            .unwrap()
            .to_vec()
    }

    /// Values GELU meets (noise of several spreads, both tails, zeros, the erf kernel's
    /// saturation) and lengths that are not multiples of the kernel's vector or chunk.
    fn inputs(len: usize) -> Vec<f32> {
        let noise = dinoedge_testkit::noise(len, 7);
        noise
            .iter()
            .enumerate()
            .map(|(i, x)| match i % 5 {
                0 => x * 0.3,
                1 => x * 3.0,
                2 => x * 12.0,
                3 => 0.0,
                _ => *x,
            })
            .collect()
    }

    #[test]
    fn gelu_is_tract_s_gelu_exact_bit_for_bit() {
        for len in [1, 7, 1023, 1024, 1025, 5000] {
            let xs = inputs(len);
            let mut want = Tensor::from_shape(&[len], &xs).unwrap();
            tract_core::ops::nn::GeluExact {}
                .eval_in_place(&mut want, None)
                .unwrap();
            let got = Gelu
                .eval_out_of_plan(tvec!(
                    Tensor::from_shape(&[len], &xs).unwrap().into_tvalue()
                ))
                .unwrap()
                .unwrap()
                .remove(0);
            let (got, want) = (values::<f32>(&got), values::<f32>(&want));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "len {len}, element {i}: {} ({g} against {w})",
                    xs[i]
                );
            }
            // a GELU, not merely tract's output: 0 at 0, x far right, 0 far left
            let mut tails = 0;
            for (g, x) in got.iter().zip(&xs) {
                if *x == 0.0 || *x < -8.0 {
                    assert_eq!(*g, 0.0, "gelu({x})");
                    tails += 1;
                } else if *x > 8.0 {
                    assert_eq!(g, x, "gelu({x})");
                    tails += 1;
                } else {
                    assert!(*g >= -0.17 && *g <= x.max(0.0), "gelu({x}) = {g}");
                }
            }
            assert!(len < 1000 || tails > 100, "{tails} inputs at 0 or far out");
        }
    }

    #[test]
    fn offset_is_tract_s_offset_u8_as_i8() {
        let xs: Vec<u8> = (0..=255).chain([0, 128, 255, 1]).collect();
        let qu8 = DatumType::QU8(QParams::ZpScale {
            zero_point: 131,
            scale: 0.25,
        });
        let mut input = Tensor::from_shape(&[xs.len()], &xs).unwrap();
        unsafe { input.set_datum_type(qu8) };
        let tract = tract_core::ops::quant::OffsetU8asI8;
        let output = tract.output_type(qu8).unwrap();
        assert_eq!(
            output,
            DatumType::QI8(QParams::ZpScale {
                zero_point: 3,
                scale: 0.25
            })
        );
        let want = tract.eval_out_of_place(&input, None).unwrap();
        let got = OffsetU8AsI8 { output }
            .eval_out_of_plan(tvec!(input.into_tvalue()))
            .unwrap()
            .unwrap()
            .remove(0);
        assert_eq!(got.datum_type(), output);
        let got = values::<i8>(&got);
        assert_eq!(got, values::<i8>(&want));
        assert_eq!(got[..3], [-128, -127, -126]);
        assert_eq!(got[255], 127);
    }
}
