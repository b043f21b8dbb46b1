//! Pictures of a result for people: the camera, the result over it, the class map. Shared by
//! the file, HTTP and MCAP sinks so they all show the same thing.

use dinoedge_render::Colormap;
use dinoedge_render::output::depth_color;
use dinoedge_render::overlay::blend;
use image::RgbImage;
use image::imageops::{FilterType, resize};
use ndarray::ArrayView2;

use crate::result::{Analysed, Output};

/// A picture a sink can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// The camera frame as it came.
    Camera,
    /// The result: segmentation blended over the frame, depth in colour, the PCA picture.
    Result,
    /// The depth in colour: with a segmentation beside a depth model's own depth, the depth
    /// (the result view shows the classes); otherwise the same as the result view.
    Depth,
}

impl View {
    /// Every view, in the order a page shows them.
    pub const ALL: [View; 3] = [View::Camera, View::Result, View::Depth];

    /// `camera`, `result` or `depth` (URL paths, topic names).
    pub fn name(self) -> &'static str {
        match self {
            View::Camera => "camera",
            View::Result => "result",
            View::Depth => "depth",
        }
    }

    /// The view called `name`.
    pub fn from_name(name: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The depths that mean something: finite and positive (0 is "no depth" in depth PNGs).
pub(crate) fn valid_depths(d: ArrayView2<f32>) -> Vec<f32> {
    d.iter()
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect()
}

/// The 2nd and 98th percentiles of the finite positive depths (a colour range that one stray
/// pixel does not flatten). Taken from at most ~16k pixels spread evenly over the map: a colour
/// range needs no more, and this runs on every frame of every sink that shows depth.
pub fn depth_range(d: ArrayView2<f32>) -> (f32, f32) {
    let step = (d.len() / 16_384).max(1);
    let mut v: Vec<f32> = d
        .iter()
        .step_by(step)
        .copied()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    // two selections instead of a sort: this runs on every frame
    let at = |v: &mut Vec<f32>, q: f32| {
        let i = ((v.len() - 1) as f32 * q).round() as usize;
        *v.select_nth_unstable_by(i, f32::total_cmp).1
    };
    let (lo, hi) = (at(&mut v, 0.02), at(&mut v, 0.98));
    if hi > lo { (lo, hi) } else { (lo, lo + 1e-3) }
}

/// The result alone as a picture at `w`×`h`, or `None` for features (nothing to show).
pub fn result_picture(a: &Analysed, w: u32, h: u32) -> Option<RgbImage> {
    let pic = match a {
        Analysed::Seg(seg, palette) => palette.colorize(seg.labels.view()),
        Analysed::Depth(d) | Analysed::RelativeDepth(d) => {
            let (lo, hi) = depth_range(d.view());
            depth_color(d.view(), Colormap::Turbo, lo, hi)
        }
        Analysed::Pca(p) => {
            // blocky to 4x, then smooth: patch pictures read best that way
            let (pw, ph) = p.dimensions();
            resize(p, pw * 4, ph * 4, FilterType::Nearest)
        }
        Analysed::Features(_) => return None,
    };
    Some(if pic.dimensions() == (w, h) {
        pic
    } else {
        resize(&pic, w, h, FilterType::Triangle)
    })
}

/// `view` of `out`: the camera frame, or the result (segmentation blended over the frame at
/// `alpha`; depth and PCA pictures as they are), or the depth beside a segmentation. Before
/// the first result the result and depth views are the camera frame.
pub fn render(out: &Output, view: View, alpha: f32) -> RgbImage {
    let frame = out.frame.to_image();
    let Some(a) = out.result.as_deref() else {
        return frame;
    };
    let shown = match (view, &a.beside) {
        (View::Camera, _) => return frame,
        (View::Depth, Some(depth)) => depth,
        (View::Result | View::Depth, _) => &a.analysed,
    };
    let (w, h) = frame.dimensions();
    match result_picture(shown, w, h) {
        Some(pic) if matches!(shown, Analysed::Seg(..)) => blend(&frame, &pic, alpha),
        Some(pic) => pic,
        None => frame,
    }
}

/// JPEG bytes of `img` at `quality` (1–100), 4:2:0 like a camera's MJPEG.
///
/// `jpeg-encoder` with its SIMD paths: 336x252 in ~0.5 ms here against ~6 ms with `image`'s
/// encoder, which matters on two cores where every sink's CPU is taken from the backbone.
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
    let (w, h) = img.dimensions();
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(jpeg_encoder::EncodingError::Write(format!(
                "{w}x{h} is larger than JPEG allows (65535x65535)"
            )));
        }
    };
    let mut buf = Vec::with_capacity(img.len() / 8);
    let mut enc = jpeg_encoder::Encoder::new(&mut buf, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    enc.encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)?;
    Ok(buf)
}
