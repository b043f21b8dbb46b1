//! From an RGB8 image to the normalised NCHW float tensor the backbone takes.
//!
//! A [`Preprocessor`] owns its resize buffers and writes into a slice the caller owns, so a
//! live stream runs with no allocation per frame once the frame size is stable.

use std::path::Path;
use std::str::FromStr;

use dinoedge_resize::Rgb8Resizer;
use image::RgbImage;

use crate::config::PreprocessorConfig;
use crate::error::{ModelError, Result};
use crate::resolution::Resolution;

/// ImageNet mean, the normalisation every DINOv2 checkpoint was trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Crop fraction of the Hugging Face DINOv2 processor (shortest edge 256, crop 224).
pub const HF_CROP_FRACTION: f32 = 224.0 / 256.0;

/// How an image of any size is brought to the model's resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeMode {
    /// Scale each axis independently to the target: the whole frame is seen, shapes are
    /// distorted when the aspect ratios differ. The default for dense features of a frame.
    Stretch,
    /// Scale (keeping the aspect ratio) so the target covers `1/crop_fraction` of the
    /// scaled image's shorter extent, then cut the centre: `crop_fraction` 0.875 is the
    /// Hugging Face processor (shortest edge 256, centre crop 224); 1.0 just fills the target.
    CenterCrop {
        /// Fraction of the scaled image the crop keeps (0 < f ≤ 1).
        crop_fraction: f32,
    },
    /// Scale to fit inside the target keeping the aspect ratio; pad the rest with the mean
    /// colour (zero after normalisation).
    Letterbox,
}

impl FromStr for ResizeMode {
    type Err = ModelError;
    /// `stretch`, `crop` (the Hugging Face processor's 224/256 centre crop), `fill`
    /// (centre crop with nothing cut beyond the aspect-ratio difference) or `letterbox`.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "stretch" => Ok(ResizeMode::Stretch),
            "crop" | "center-crop" => Ok(ResizeMode::CenterCrop {
                crop_fraction: HF_CROP_FRACTION,
            }),
            "fill" | "cover" => Ok(ResizeMode::CenterCrop { crop_fraction: 1.0 }),
            "letterbox" | "pad" => Ok(ResizeMode::Letterbox),
            other => Err(ModelError::InvalidOption(format!(
                "unknown resize mode {other:?}: use stretch, crop, fill or letterbox"
            ))),
        }
    }
}

/// Where the source image landed in the model input: `src` (x, y, width, height in source
/// pixels, fractional) was resampled onto `dst` (in model-input pixels). Use it to map
/// patch-grid results back onto the original frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Source rectangle (x, y, w, h), in source pixels.
    pub src: [f64; 4],
    /// Destination rectangle (x, y, w, h), in model-input pixels.
    pub dst: [u32; 4],
}

/// Mean and standard deviation per channel, on the 0..1 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// Resizes and normalises RGB8 images into NCHW planes, reusing its buffers.
pub struct Preprocessor {
    resolution: Resolution,
    mode: ResizeMode,
    norm: Normalization,
    lut: Box<[[f32; 256]; 3]>,
    resizer: Rgb8Resizer,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("resolution", &self.resolution)
            .field("mode", &self.mode)
            .field("norm", &self.norm)
            .finish()
    }
}

impl Preprocessor {
    /// Another preprocessor with the same settings and buffers of its own (one per worker).
    pub fn fresh(&self) -> Result<Self> {
        Self::new(self.resolution, self.mode, self.norm)
    }

    /// A preprocessor for one target resolution.
    pub fn new(resolution: Resolution, mode: ResizeMode, norm: Normalization) -> Result<Self> {
        if resolution.height == 0 || resolution.width == 0 {
            return Err(ModelError::InvalidOption(format!(
                "target size {resolution} is empty"
            )));
        }
        if let ResizeMode::CenterCrop { crop_fraction } = mode
            && !(crop_fraction > 0.0 && crop_fraction <= 1.0)
        {
            return Err(ModelError::InvalidOption(format!(
                "crop fraction {crop_fraction} must be in (0, 1]"
            )));
        }
        if norm.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(ModelError::InvalidOption(format!(
                "std {:?} must be positive",
                norm.std
            )));
        }
        // The same float32 arithmetic as the reference (u8 / 255 - mean) / std, once per value.
        let mut lut = Box::new([[0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
        Ok(Preprocessor {
            resolution,
            mode,
            norm,
            lut,
            resizer: Rgb8Resizer::new(),
        })
    }

    /// Normalisation taken from a Hugging Face `preprocessor_config.json` (ImageNet values
    /// where it says nothing).
    pub fn normalization_from(config: Option<&PreprocessorConfig>) -> Normalization {
        match config {
            Some(c) if c.do_normalize != Some(false) => Normalization {
                mean: c.image_mean.unwrap_or(IMAGENET_MEAN),
                std: c.image_std.unwrap_or(IMAGENET_STD),
            },
            Some(_) => Normalization {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
            None => Normalization::default(),
        }
    }

    /// The target resolution.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The resize mode.
    pub fn mode(&self) -> ResizeMode {
        self.mode
    }

    /// Number of floats [`Preprocessor::run`] writes: `3 * H * W`.
    pub fn output_len(&self) -> usize {
        3 * self.resolution.pixels()
    }

    /// Where an image of `src_w`×`src_h` lands in the model input.
    pub fn placement(&self, src_w: u32, src_h: u32) -> Placement {
        let (tw, th) = (self.resolution.width, self.resolution.height);
        let (sw, sh) = (src_w as f64, src_h as f64);
        match self.mode {
            ResizeMode::Stretch => Placement {
                src: [0.0, 0.0, sw, sh],
                dst: [0, 0, tw, th],
            },
            ResizeMode::CenterCrop { crop_fraction } => {
                // Integer intermediate size and floor-halved offsets, as the Hugging Face
                // processor does (resize, then crop with `(h - crop_h) // 2`).
                let f = crop_fraction as f64;
                let scale = (th as f64 / (f * sh)).max(tw as f64 / (f * sw));
                let iw = ((sw * scale).round() as u32).max(tw);
                let ih = ((sh * scale).round() as u32).max(th);
                let (left, top) = ((iw - tw) / 2, (ih - th) / 2);
                let (kx, ky) = (sw / iw as f64, sh / ih as f64);
                Placement {
                    src: [
                        left as f64 * kx,
                        top as f64 * ky,
                        tw as f64 * kx,
                        th as f64 * ky,
                    ],
                    dst: [0, 0, tw, th],
                }
            }
            ResizeMode::Letterbox => {
                let scale = (th as f64 / sh).min(tw as f64 / sw);
                let fw = ((sw * scale).round() as u32).clamp(1, tw);
                let fh = ((sh * scale).round() as u32).clamp(1, th);
                Placement {
                    src: [0.0, 0.0, sw, sh],
                    dst: [(tw - fw) / 2, (th - fh) / 2, fw, fh],
                }
            }
        }
    }

    /// Resize and normalise `image` into `out` (NCHW planes, `3*H*W` floats). Returns where
    /// the image landed.
    pub fn run(&mut self, image: &RgbImage, out: &mut [f32]) -> Result<Placement> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(ModelError::Input("the image is empty (0 pixels)".into()));
        }
        if out.len() != self.output_len() {
            return Err(ModelError::Input(format!(
                "output buffer holds {} floats, the model input needs {} (3x{})",
                out.len(),
                self.output_len(),
                self.resolution
            )));
        }
        let placement = self.placement(w, h);
        let [dx, dy, dw, dh] = placement.dst;
        let px = self
            .resizer
            .resize(image.as_raw(), (w, h), placement.src, (dw, dh))
            .map_err(|e| ModelError::Input(e.to_string()))?;

        let (tw, th) = (
            self.resolution.width as usize,
            self.resolution.height as usize,
        );
        let plane = tw * th;
        if (dw as usize, dh as usize) != (tw, th) {
            out.fill(0.0);
        }
        for (c, table) in self.lut.iter().enumerate() {
            let dst = &mut out[c * plane..(c + 1) * plane];
            for y in 0..dh as usize {
                let row_in = &px[y * dw as usize * 3..(y + 1) * dw as usize * 3];
                let start = (y + dy as usize) * tw + dx as usize;
                let row_out = &mut dst[start..start + dw as usize];
                for (o, p) in row_out.iter_mut().zip(row_in.chunks_exact(3)) {
                    *o = table[p[c] as usize];
                }
            }
        }
        Ok(placement)
    }
}

/// Decode an image file to upright RGB8 (JPEG, PNG, BMP, WebP, TIFF; see
/// [`dinoedge_imagefile`]), with a typed error. A file that decodes only in part (a JPEG cut
/// short) is logged as a warning; [`dinoedge_imagefile::load`] returns what is missing.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let loaded = dinoedge_imagefile::load(path).map_err(|e| ModelError::Image {
        path: path.to_owned(),
        reason: match e {
            dinoedge_imagefile::ImageFileError::NotFound(_) => "no such file".into(),
            dinoedge_imagefile::ImageFileError::Io { error, .. } => error.to_string(),
            dinoedge_imagefile::ImageFileError::Decode { reason, .. } => reason,
        },
    })?;
    if let Some(damage) = &loaded.damage {
        tracing::warn!("{}: {damage}", path.display());
    }
    Ok(loaded.image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    #[test]
    fn hf_crop_geometry_matches_processor() {
        let p = Preprocessor::new(
            Resolution::square(224),
            "crop".parse().unwrap(),
            Normalization::default(),
        )
        .unwrap();
        // 513x513 -> 256x256, crop offset 16: source offset 16*513/256.
        let pl = p.placement(513, 513);
        assert!(
            (pl.src[0] - 32.0625).abs() < 1e-9 && (pl.src[2] - 448.875).abs() < 1e-9,
            "{pl:?}"
        );
    }

    #[test]
    fn letterbox_pads_with_zero_after_normalisation() {
        let mut p = Preprocessor::new(
            Resolution::new(28, 56),
            ResizeMode::Letterbox,
            Normalization::default(),
        )
        .unwrap();
        let mut out = vec![f32::NAN; p.output_len()];
        let pl = p.run(&gradient(20, 20), &mut out).unwrap();
        assert_eq!(pl.dst, [14, 0, 28, 28]);
        assert_eq!(out[0], 0.0); // top-left lies in the padding
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn stretch_of_uniform_image_is_exact() {
        let mut p = Preprocessor::new(
            Resolution::new(14, 28),
            ResizeMode::Stretch,
            Normalization::default(),
        )
        .unwrap();
        let img = RgbImage::from_pixel(37, 23, image::Rgb([255, 0, 10]));
        let mut out = vec![0.0; p.output_len()];
        p.run(&img, &mut out).unwrap();
        let r = (1.0f32 - 0.485) / 0.229;
        assert!(out[..14 * 28].iter().all(|v| (*v - r).abs() < 1e-6));
    }

    #[test]
    fn wrong_buffer_and_empty_image_are_errors() {
        let mut p = Preprocessor::new(
            Resolution::square(14),
            ResizeMode::Stretch,
            Normalization::default(),
        )
        .unwrap();
        let mut small = vec![0.0; 10];
        assert!(matches!(
            p.run(&gradient(4, 4), &mut small),
            Err(ModelError::Input(_))
        ));
        let mut out = vec![0.0; p.output_len()];
        assert!(matches!(
            p.run(&RgbImage::new(0, 0), &mut out),
            Err(ModelError::Input(_))
        ));
    }

    #[test]
    fn unknown_mode_is_an_error() {
        assert!("zoom".parse::<ResizeMode>().is_err());
        assert!(
            Preprocessor::new(
                Resolution::square(14),
                ResizeMode::CenterCrop { crop_fraction: 0.0 },
                Normalization::default()
            )
            .is_err()
        );
    }
}
