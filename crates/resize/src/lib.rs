//! RGB8 images resized with a Catmull-Rom filter, from a crop of the source, into a buffer
//! that is kept from call to call: what the model's preprocessing asks of `fast_image_resize`.
//!
//! A crate of its own for the build's sake. `fast_image_resize`'s resizer is generic over
//! image types and instantiates its convolutions for every pixel format and SIMD level where it
//! is called: three quarters of the LLVM code of `dinoedge-model` were these instantiations (`rustc
//! --emit=llvm-ir`), compiled after tract, once for the library and again for its unit tests.
//! Behind the one non-generic [`Rgb8Resizer::resize`] they are compiled here, once, beside
//! tract (this crate does not depend on it).

use fast_image_resize as fir;

/// Why an image could not be resized.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The source buffer does not hold `width * height` RGB8 pixels, or a size is zero.
    #[error("image buffer: {0}")]
    Buffer(String),
    /// The resizer refused the crop or the sizes.
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Resizes RGB8 images, keeping its destination buffer and the resizer's own between calls.
pub struct Rgb8Resizer {
    resizer: fir::Resizer,
    scratch: fir::images::Image<'static>,
}

impl std::fmt::Debug for Rgb8Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rgb8Resizer")
            .field("width", &self.scratch.width())
            .field("height", &self.scratch.height())
            .finish()
    }
}

impl Default for Rgb8Resizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Rgb8Resizer {
    /// A resizer with an empty destination buffer (sized on the first call).
    pub fn new() -> Self {
        Rgb8Resizer {
            resizer: fir::Resizer::new(),
            scratch: fir::images::Image::new(0, 0, fir::PixelType::U8x3),
        }
    }

    /// Resizes the rectangle `crop` (x, y, width, height, in source pixels; fractions allowed)
    /// of the `width` x `height` RGB8 image `src` (rows packed, 3 bytes a pixel) to `dst_width`
    /// x `dst_height` with a Catmull-Rom filter. Returns the resized pixels, packed the same
    /// way; they live in a buffer this resizer reuses on the next call.
    pub fn resize(
        &mut self,
        src: &[u8],
        (width, height): (u32, u32),
        crop: [f64; 4],
        (dst_width, dst_height): (u32, u32),
    ) -> Result<&[u8], ResizeError> {
        if dst_width == 0 || dst_height == 0 {
            return Err(ResizeError::Buffer(format!(
                "the destination {dst_width}x{dst_height} is empty"
            )));
        }
        if self.scratch.width() != dst_width || self.scratch.height() != dst_height {
            self.scratch = fir::images::Image::new(dst_width, dst_height, fir::PixelType::U8x3);
        }
        let src = fir::images::ImageRef::new(width, height, src, fir::PixelType::U8x3)
            .map_err(|e| ResizeError::Buffer(e.to_string()))?;
        let [x, y, w, h] = crop;
        let options = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom))
            .crop(x, y, w, h);
        self.resizer
            .resize(&src, &mut self.scratch, &options)
            .map_err(|e| ResizeError::Resize(e.to_string()))?;
        Ok(self.scratch.buffer())
    }
}
