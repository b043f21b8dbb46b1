//! Drawing patch-grid results over images.

use image::{RgbImage, imageops};

/// Resize a small (patch-grid) image to `width`×`height` with bilinear filtering.
pub fn upsample(grid: &RgbImage, width: u32, height: u32) -> RgbImage {
    imageops::resize(grid, width, height, imageops::FilterType::Triangle)
}

/// `alpha * top + (1 - alpha) * base`, pixel by pixel (sizes must match).
pub fn blend(base: &RgbImage, top: &RgbImage, alpha: f32) -> RgbImage {
    let a = alpha.clamp(0.0, 1.0);
    let mut out = base.clone();
    for (o, t) in out.pixels_mut().zip(top.pixels()) {
        for c in 0..3 {
            o.0[c] = (a * t.0[c] as f32 + (1.0 - a) * o.0[c] as f32).round() as u8;
        }
    }
    out
}

/// Lay tiles of equal size out in a grid with `cols` columns and a `gap`-pixel white border.
pub fn tile(tiles: &[RgbImage], cols: usize, gap: u32) -> RgbImage {
    let Some(first) = tiles.first() else {
        return RgbImage::new(0, 0);
    };
    let (tw, th) = first.dimensions();
    let cols = cols.clamp(1, tiles.len());
    let rows = tiles.len().div_ceil(cols);
    let w = cols as u32 * (tw + gap) + gap;
    let h = rows as u32 * (th + gap) + gap;
    let mut out = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, t) in tiles.iter().enumerate() {
        let (r, c) = ((i / cols) as u32, (i % cols) as u32);
        imageops::replace(
            &mut out,
            t,
            (gap + c * (tw + gap)) as i64,
            (gap + r * (th + gap)) as i64,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_and_blend() {
        let a = RgbImage::from_pixel(4, 3, image::Rgb([0, 0, 0]));
        let b = RgbImage::from_pixel(4, 3, image::Rgb([200, 100, 50]));
        let m = blend(&a, &b, 0.5);
        assert_eq!(m.get_pixel(0, 0).0, [100, 50, 25]);
        let t = tile(&[a.clone(), b.clone(), a], 2, 1);
        assert_eq!(t.dimensions(), (2 * 5 + 1, 2 * 4 + 1));
        assert_eq!(t.get_pixel(6, 1).0, [200, 100, 50]);
        assert_eq!(upsample(&b, 8, 6).dimensions(), (8, 6));
    }
}
