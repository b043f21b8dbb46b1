//! The attention picture: one panel per head of the last block's CLS attention.

use image::RgbImage;
use ndarray::ArrayView3;

use crate::colormap::{Colormap, min_max};
use crate::overlay::{blend, tile, upsample};
use crate::{RenderError, Result};

/// A grid of panels: the image, the mean over heads, then each head, each map scaled to its
/// own range, coloured with `cmap` and laid over the image at `alpha`.
///
/// `attention` is `[heads, h, w]` as `dinoedge_model::Features::attention` gives it.
pub fn attention_grid(
    image: &RgbImage,
    attention: ArrayView3<f32>,
    cmap: Colormap,
    alpha: f32,
) -> Result<RgbImage> {
    let (heads, h, w) = attention.dim();
    if heads == 0 || h == 0 || w == 0 {
        return Err(RenderError::Empty(format!(
            "attention map of shape {:?}",
            attention.dim()
        )));
    }
    let (iw, ih) = image.dimensions();
    if iw == 0 || ih == 0 {
        return Err(RenderError::Empty("the image is empty".into()));
    }
    let panel = |values: Vec<f32>| {
        let mut v = values;
        min_max(&mut v);
        let small = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            image::Rgb(cmap.rgb(v[y as usize * w + x as usize]))
        });
        blend(image, &upsample(&small, iw, ih), alpha)
    };
    let mut tiles = vec![image.clone()];
    let mean: Vec<f32> = (0..h * w)
        .map(|i| {
            (0..heads)
                .map(|k| attention[[k, i / w, i % w]])
                .sum::<f32>()
                / heads as f32
        })
        .collect();
    tiles.push(panel(mean));
    for k in 0..heads {
        tiles.push(panel(
            attention
                .index_axis(ndarray::Axis(0), k)
                .iter()
                .copied()
                .collect(),
        ));
    }
    let cols = if tiles.len() <= 4 {
        tiles.len()
    } else {
        tiles.len().div_ceil(2).min(4)
    };
    Ok(tile(&tiles, cols, 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn one_panel_per_head_plus_image_and_mean() {
        let img = RgbImage::from_pixel(28, 14, image::Rgb([10, 20, 30]));
        let attn = Array3::from_shape_fn((6, 1, 2), |(k, _, x)| (k + x) as f32);
        let grid = attention_grid(&img, attn.view(), Colormap::Inferno, 0.6).unwrap();
        // 8 tiles in 4 columns, 2 rows, 4-pixel gaps.
        assert_eq!(grid.dimensions(), (4 * 32 + 4, 2 * 18 + 4));
        assert!(
            attention_grid(
                &img,
                Array3::zeros((0, 1, 1)).view(),
                Colormap::Inferno,
                0.5
            )
            .is_err()
        );
    }
}
