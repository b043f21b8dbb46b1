//! Bilinear resizing with PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`
//! conventions (no antialias), which the released heads were evaluated with.

use ndarray::{Array3, ArrayView3};

/// For each output index: the two source indices and the weight of the second.
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Visit every pixel of the bilinear upsampling of channels-last `[h, w, K]` values to
/// `out_h` x `out_w`, with that pixel's K interpolated values: the same arithmetic as
/// [`resize_bilinear`], without materialising the `[K, out_h, out_w]` tensor.
pub fn for_each_upsampled(
    src: ArrayView3<f32>,
    out_h: usize,
    out_w: usize,
    mut visit: impl FnMut(usize, usize, &[f32]),
) {
    let (h, w, k) = src.dim();
    if h == 0 || w == 0 || k == 0 {
        return;
    }
    let src = src.as_standard_layout();
    let data = src.as_slice().expect("standard layout");
    let ys = taps(h, out_h);
    let xs = taps(w, out_w);
    let mut row = vec![0f32; w * k];
    let mut px = vec![0f32; k];
    for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
        let (r0, r1) = (
            &data[y0 * w * k..(y0 + 1) * w * k],
            &data[y1 * w * k..(y1 + 1) * w * k],
        );
        for ((o, a), b) in row.iter_mut().zip(r0).zip(r1) {
            *o = a + (b - a) * ly;
        }
        for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
            let (a, b) = (&row[x0 * k..(x0 + 1) * k], &row[x1 * k..(x1 + 1) * k]);
            for ((o, a), b) in px.iter_mut().zip(a).zip(b) {
                *o = a + (b - a) * lx;
            }
            visit(oy, ox, &px);
        }
    }
}

/// Resize every channel of `[C, h, w]` to `[C, out_h, out_w]`.
pub fn resize_bilinear(src: ArrayView3<f32>, out_h: usize, out_w: usize) -> Array3<f32> {
    let (c, h, w) = src.dim();
    let mut out = Array3::<f32>::zeros((c, out_h, out_w));
    if h == 0 || w == 0 {
        return out;
    }
    let ys = taps(h, out_h);
    let xs = taps(w, out_w);
    let src = src.as_standard_layout();
    let mut row = vec![0f32; w];
    for ch in 0..c {
        let plane = src.index_axis(ndarray::Axis(0), ch);
        let plane = plane.as_slice().expect("standard layout");
        let mut dst = out.index_axis_mut(ndarray::Axis(0), ch);
        for (oy, &(y0, y1, ly)) in ys.iter().enumerate() {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for x in 0..w {
                row[x] = r0[x] + (r1[x] - r0[x]) * ly;
            }
            for (ox, &(x0, x1, lx)) in xs.iter().enumerate() {
                dst[(oy, ox)] = row[x0] + (row[x1] - row[x0]) * lx;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4),
        //     mode="bilinear", align_corners=False)
        let src = array![[[0f32, 1.], [2., 3.]]];
        let out = resize_bilinear(src.view(), 4, 4);
        let want = array![
            [0.0f32, 0.25, 0.75, 1.0],
            [0.5, 0.75, 1.25, 1.5],
            [1.5, 1.75, 2.25, 2.5],
            [2.0, 2.25, 2.75, 3.0]
        ];
        assert!(
            out.index_axis(ndarray::Axis(0), 0)
                .iter()
                .zip(want.iter())
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
        // identity size
        assert_eq!(resize_bilinear(src.view(), 2, 2), src);
    }
}
