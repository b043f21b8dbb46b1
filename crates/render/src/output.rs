//! Head outputs as files: 16-bit depth PNG in millimetres, class-id PNG, colour depth with
//! a legend of its range, coloured class maps.

use image::{ImageBuffer, Luma, Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::colormap::Colormap;

/// Depth in metres as a 16-bit grey image in millimetres (0 … 65.535 m, clamped), the
/// format of NYU/KITTI depth PNGs.
pub fn depth_mm_png(depth: ArrayView2<f32>) -> ImageBuffer<Luma<u16>, Vec<u16>> {
    let (h, w) = depth.dim();
    ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
        let mm = (depth[(y as usize, x as usize)] * 1000.0).round();
        Luma([if mm.is_finite() {
            mm.clamp(0.0, 65535.0) as u16
        } else {
            0
        }])
    })
}

/// Class ids as an 8-bit grey image (the value of a pixel is its class).
pub fn class_png(labels: ArrayView2<u8>) -> ImageBuffer<Luma<u8>, Vec<u8>> {
    let (h, w) = labels.dim();
    ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
        Luma([labels[(y as usize, x as usize)]])
    })
}

/// Depth coloured between `lo` (first colour) and `hi` metres.
///
/// Colours come from the map's table ([`Colormap::table`]: at most one level of 8-bit
/// colour from the continuous map, ~20x faster per pixel; this runs on every frame of a live run).
pub fn depth_color(depth: ArrayView2<f32>, map: Colormap, lo: f32, hi: f32) -> RgbImage {
    let (h, w) = depth.dim();
    let span = (hi - lo).max(1e-6);
    let table = map.table();
    let scale = (table.len() - 1) as f32 / span;
    let mut out = vec![0u8; w * h * 3];
    for (px, &v) in out.chunks_exact_mut(3).zip(depth.iter()) {
        // NaN → 0 (the cast saturates), like Colormap::rgb
        let i = (((v - lo) * scale).clamp(0.0, (table.len() - 1) as f32) + 0.5) as usize;
        px.copy_from_slice(&table[i.min(table.len() - 1)]);
    }
    RgbImage::from_raw(w as u32, h as u32, out).expect("w*h*3 bytes")
}

/// 3x5 glyphs for the legend's numbers: bits of each row, left to right.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'm' => [0, 0, 7, 7, 5],
        ' ' => [0, 0, 0, 0, 0],
        _ => return None,
    })
}

/// Draw `text` (digits, `.`, `-`, `m`, space) at (x, y) with `scale`-pixel dots.
pub fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, color: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = x + i as u32 * 4 * scale;
        for (ry, bits) in rows.iter().enumerate() {
            for rx in 0..3u32 {
                if bits & (4 >> rx) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (gx + rx * scale + dx, y + ry as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(color));
                        }
                    }
                }
            }
        }
    }
}

/// `image` with a colour bar on its right from `lo` (bottom) to `hi` (top), labelled in metres.
pub fn with_depth_legend(image: &RgbImage, map: Colormap, lo: f32, hi: f32) -> RgbImage {
    with_legend(image, map, &format!("{hi:.1}m"), &format!("{lo:.1}m"))
}

/// `image` with a colour bar on its right, the top of the map labelled `top` and its bottom
/// `bottom` (up to five characters each: `near`/`far` for a relative depth with no unit).
pub fn with_legend(
    image: &RgbImage,
    map: Colormap,
    top_label: &str,
    bottom_label: &str,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = (h / 160).clamp(1, 4);
    let bar = 12 * scale;
    let label = 4 * 7 * scale;
    let extra = bar + label + 6 * scale;
    let mut out = RgbImage::from_pixel(w + extra, h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, image, 0, 0);
    let margin = (6 * scale).min(h / 4);
    let top = margin;
    let bottom = h.saturating_sub(margin).max(top);
    for y in top..bottom {
        let t = (bottom - 1 - y) as f32 / (bottom - top).max(2) as f32;
        for x in 0..bar {
            out.put_pixel(w + 2 * scale + x, y, Rgb(map.rgb(t)));
        }
    }
    let tx = w + 3 * scale + bar;
    draw_text(&mut out, top_label, tx, top, scale, [0, 0, 0]);
    draw_text(
        &mut out,
        bottom_label,
        tx,
        bottom.saturating_sub(5 * scale),
        scale,
        [0, 0, 0],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn depth_png_is_millimetres() {
        let d = array![[1.2345f32, 0.0], [70.0, f32::NAN]];
        let png = depth_mm_png(d.view());
        assert_eq!(png.get_pixel(0, 0).0, [1235]);
        assert_eq!(png.get_pixel(0, 1).0, [65535]);
        assert_eq!(png.get_pixel(1, 1).0, [0]);
        let img = depth_color(d.view(), Colormap::Turbo, 0.0, 10.0);
        // the table is the map, to within one 8-bit level
        for (x, y, want) in [(0, 0, 0.12345f32), (1, 0, 0.0), (0, 1, 1.0), (1, 1, 0.0)] {
            let got = img.get_pixel(x, y).0;
            let exact = Colormap::Turbo.rgb(want);
            for c in 0..3 {
                assert!(got[c].abs_diff(exact[c]) <= 1, "{got:?} vs {exact:?}");
            }
        }
        let legend = with_depth_legend(&img, Colormap::Turbo, 0.0, 10.0);
        assert!(legend.width() > img.width());
    }
}
