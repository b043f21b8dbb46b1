//! Image files in, for every part of dinoedge that reads them (the model's `load_rgb`, the
//! camera crate's image-folder source): JPEG (baseline, progressive, CMYK), PNG, BMP, WebP and
//! TIFF to packed RGB8, turned upright by their EXIF orientation.
//!
//! Two things a decoder alone does not do:
//! - a header that declares more than [`MAX_IMAGE_PIXELS`] is refused before any pixel is
//!   allocated (a 100 000 x 100 000 PNG header would otherwise ask for 30 GB and abort);
//! - a JPEG cut short (no end-of-image marker after its scan) still decodes, the missing part
//!   grey, so it is reported in [`Loaded::damage`] for the caller to warn about and count.

use std::path::{Path, PathBuf};

use image::ImageDecoder;

/// The most pixels an image file may declare (64 megapixels, 8000x8000): a header that says
/// more is refused before its pixels are allocated.
pub const MAX_IMAGE_PIXELS: u64 = 64_000_000;

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// The path does not exist.
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),
    /// The file could not be read.
    /// (The cause is in the message, and not also given as `source()`.)
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The file is not an image dinoedge decodes, or is corrupt, or too large.
    #[error("cannot decode image {}: {reason}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A decoded image and what was wrong with the file, if it decoded only in part.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pixels, upright.
    pub image: image::RgbImage,
    /// Set when the file is damaged but decoded: what is missing (the image holds grey or
    /// repeated pixels there).
    pub damage: Option<String>,
}

/// Decode an image file to upright RGB8 (see the crate's documentation).
pub fn load(path: &Path) -> Result<Loaded, ImageFileError> {
    let bytes = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ImageFileError::NotFound(path.to_owned()),
        _ => ImageFileError::Io {
            path: path.to_owned(),
            error,
        },
    })?;
    decode(&bytes, path)
}

/// Decode an image held in memory; `path` names it in messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Loaded, ImageFileError> {
    let err = |reason: String| ImageFileError::Decode {
        path: path.to_owned(),
        reason: reason.trim().to_string(),
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(err(format!(
            "it declares {w}x{h} pixels, more than the {} megapixels dinoedge decodes",
            MAX_IMAGE_PIXELS / 1_000_000
        )));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(Loaded {
        image: img.into_rgb8(),
        damage: jpeg_damage(bytes),
    })
}

/// For a JPEG: what is missing when it has no end-of-image marker after its first scan
/// header (the file was cut short; decoders fill the rest in). Inside a scan every 0xFF byte
/// of data is followed by 0x00 or a restart marker, so an 0xFF 0xD9 after the scan header is
/// the end marker.
pub fn jpeg_damage(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let scan = find_marker(bytes, 2, 0xDA)?;
    let header_len = bytes
        .get(scan + 2..scan + 4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .unwrap_or(0);
    let data = scan + 2 + header_len;
    if find_marker(bytes, data.min(bytes.len()), 0xD9).is_some() {
        return None;
    }
    let scan_bytes = bytes.len().saturating_sub(data);
    Some(if scan_bytes == 0 {
        "the JPEG ends before its scan data (cut short?): the image decodes as flat grey".into()
    } else {
        format!(
            "the JPEG ends inside its scan data, {scan_bytes} bytes in, with no end-of-image \
             marker (cut short?): the rest of the image decodes as grey"
        )
    })
}

/// The offset of the first `0xFF marker` pair at or after `from`.
fn find_marker(bytes: &[u8], from: usize, marker: u8) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(2)
        .position(|w| w == [0xFF, marker])
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real JPEG, encoded here (the image crate's encoder): 64x48, a gradient.
    fn jpeg() -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_whole_jpeg_has_no_damage() {
        let j = jpeg();
        let got = decode(&j, Path::new("a.jpg")).unwrap();
        assert_eq!(got.image.dimensions(), (64, 48));
        assert_eq!(got.damage, None);
        // bytes after the end marker (some cameras pad frames) are not damage
        let mut padded = j.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(decode(&padded, Path::new("a.jpg")).unwrap().damage, None);
    }

    #[test]
    fn a_jpeg_cut_before_or_inside_its_scan_decodes_and_says_so() {
        let j = jpeg();
        let sos = find_marker(&j, 2, 0xDA).unwrap();
        let header = u16::from_be_bytes([j[sos + 2], j[sos + 3]]) as usize;
        let before_data = &j[..sos + 2 + header];
        let got = decode(before_data, Path::new("cut.jpg")).unwrap();
        assert_eq!(got.image.dimensions(), (64, 48));
        assert!(got.damage.unwrap().contains("before its scan data"));

        let inside = &j[..sos + 2 + header + 40];
        let got = decode(inside, Path::new("cut.jpg")).unwrap();
        assert!(
            got.damage.unwrap().contains("40 bytes in"),
            "inside the scan"
        );

        // cut before the scan header: the decoder refuses it, with the path
        let e = decode(&j[..sos], Path::new("cut.jpg")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot decode image cut.jpg"),
            "{e}"
        );
    }

    #[test]
    fn a_header_declaring_a_huge_image_is_refused_before_allocating() {
        // a PNG whose IHDR says 100000x100000 RGB: 30 GB if decoded
        let png = dinoedge_testkit::png_declaring(100_000, 100_000);
        let e = decode(&png, Path::new("bomb.png")).unwrap_err();
        assert!(e.to_string().contains("100000x100000 pixels"), "{e}");
    }

    #[test]
    fn a_missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("none.png")).unwrap_err();
        assert!(matches!(e, ImageFileError::NotFound(_)), "{e}");
    }
}
