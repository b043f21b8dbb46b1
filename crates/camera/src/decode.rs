//! Pixel decoding: JPEG (including webcam MJPEG frames without Huffman tables), packed
//! YUYV and planar YUV to RGB8. Image files are `dinoedge-imagefile`'s.

use yuvutils_rs::{
    YuvGrayImage, YuvPackedImage, YuvPlanarImage, YuvRange, YuvStandardMatrix, yuv400_to_rgb,
    yuv420_to_rgb, yuv422_to_rgb, yuv444_to_rgb, yuyv422_to_rgb,
};
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::error::{CameraError, Result};

/// Decode one JPEG (a file or an MJPEG frame) to packed RGB8, into `out` (resized as
/// needed, so a caller can reuse one buffer). Frames from webcams usually carry no Huffman
/// tables (the "AVI1" MJPEG convention, often without the APP0 segment that says so); every
/// table no DHT segment defines is then the standard one (JPEG Annex K.3).
/// Returns width and height.
pub fn jpeg_to_rgb(data: &[u8], out: &mut Vec<u8>) -> Result<(u32, u32)> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 15)
        .set_max_height(1 << 15);
    let marked;
    let data = if needs_standard_tables(data) {
        marked = with_avi1_marker(data);
        &marked[..]
    } else {
        data
    };
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder
        .decode_headers()
        .map_err(|e| CameraError::decode("JPEG frame", e))?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| CameraError::decode("JPEG frame", "no frame header"))?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| CameraError::decode("JPEG frame", "no frame header"))?;
    if size != w * h * 3 {
        return Err(CameraError::decode(
            "JPEG frame",
            format!("decoder produces {size} bytes for {w}x{h}, expected RGB"),
        ));
    }
    out.resize(size, 0);
    decoder
        .decode_into(out)
        .map_err(|e| CameraError::decode("JPEG frame", e))?;
    Ok((w as u32, h as u32))
}

/// The APP0 segment of the AVI1 MJPEG convention ("the Huffman tables are the standard
/// ones"): zune-jpeg then fills in each standard table that no DHT segment defined.
const AVI1_APP0: [u8; 18] = [
    0xFF, 0xE0, 0x00, 0x10, b'A', b'V', b'I', b'1', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Whether a JPEG's segments before its first scan leave one of the four baseline Huffman
/// tables (DC and AC, 0 and 1) undefined without an AVI1 APP0 that says to use the standard
/// ones. A malformed stream answers no: the decoder reports what is wrong with it.
fn needs_standard_tables(data: &[u8]) -> bool {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return false;
    }
    let mut defined = [false; 4]; // DC0, DC1, AC0, AC1
    let mut at = 2;
    while at + 4 <= data.len() {
        if data[at] != 0xFF {
            return false;
        }
        let marker = data[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // SOS (or EOI): the tables must be known by now
        }
        let len = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        let Some(body) = data.get(at + 4..at + 2 + len).filter(|_| len >= 2) else {
            return false;
        };
        match marker {
            0xE0 if body.starts_with(b"AVI1") => return false,
            0xC4 => {
                // one or more tables: class/id byte, 16 counts, the values
                let mut t = body;
                while t.len() >= 17 {
                    let (class, id) = (t[0] >> 4, t[0] & 15);
                    if class < 2 && id < 2 {
                        defined[(class * 2 + id) as usize] = true;
                    }
                    let n: usize = t[1..17].iter().map(|c| *c as usize).sum();
                    t = t.get(17 + n..).unwrap_or(&[]);
                }
            }
            _ => {}
        }
        at += 2 + len;
    }
    !defined.iter().all(|d| *d)
}

/// `data` with [`AVI1_APP0`] after its SOI marker.
fn with_avi1_marker(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + AVI1_APP0.len());
    v.extend_from_slice(&data[..2]);
    v.extend_from_slice(&AVI1_APP0);
    v.extend_from_slice(&data[2..]);
    v
}

/// How YUV values map to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvColor {
    /// Full range (0–255, as JPEG) rather than limited "TV" range (16–235).
    pub full_range: bool,
    /// BT.709 (HD) rather than BT.601 (SD, and what webcams' YUYV uses).
    pub bt709: bool,
}

impl YuvColor {
    /// Limited-range BT.601: USB webcams' YUYV and SD video.
    pub const BT601_LIMITED: YuvColor = YuvColor {
        full_range: false,
        bt709: false,
    };

    fn range(self) -> YuvRange {
        if self.full_range {
            YuvRange::Full
        } else {
            YuvRange::Limited
        }
    }

    fn matrix(self) -> YuvStandardMatrix {
        if self.bt709 {
            YuvStandardMatrix::Bt709
        } else {
            YuvStandardMatrix::Bt601
        }
    }
}

fn size_error(what: &str, got: usize, want: usize, w: u32, h: u32) -> CameraError {
    CameraError::decode(
        what,
        format!("{got} bytes where a {w}x{h} frame needs {want}"),
    )
}

/// Convert packed YUYV 4:2:2 (V4L2 `YUYV`) to RGB8. `stride` is bytes per input row
/// (`2 * width` when rows are not padded). `out` is resized to `width * height * 3`.
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: u32,
    color: YuvColor,
    out: &mut Vec<u8>,
) -> Result<()> {
    if !width.is_multiple_of(2) || stride < width * 2 {
        return Err(CameraError::decode(
            "YUYV frame",
            format!(
                "width {width} must be even and the stride {stride} at least {}",
                width * 2
            ),
        ));
    }
    let need = stride as usize * height as usize;
    if data.len() < need {
        return Err(size_error("YUYV frame", data.len(), need, width, height));
    }
    out.resize(width as usize * height as usize * 3, 0);
    let packed = YuvPackedImage {
        yuy: &data[..need],
        yuy_stride: stride,
        width,
        height,
    };
    yuyv422_to_rgb(&packed, out, width * 3, color.range(), color.matrix())
        .map_err(|e| CameraError::decode("YUYV frame", e))
}

/// Chroma subsampling of a planar YUV frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// Luma only.
    Mono,
    /// Chroma at half width and half height.
    Yuv420,
    /// Chroma at half width.
    Yuv422,
    /// Chroma at full size.
    Yuv444,
}

impl Chroma {
    /// Width and height of each chroma plane for a `width` x `height` frame.
    pub fn plane_size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Chroma::Mono => (0, 0),
            Chroma::Yuv420 => (width.div_ceil(2), height.div_ceil(2)),
            Chroma::Yuv422 => (width.div_ceil(2), height),
            Chroma::Yuv444 => (width, height),
        }
    }
}

/// Convert 8-bit planar YUV (tightly packed planes) to RGB8 into `out`.
pub fn planar_to_rgb(
    planes: [&[u8]; 3],
    width: u32,
    height: u32,
    chroma: Chroma,
    color: YuvColor,
    out: &mut Vec<u8>,
) -> Result<()> {
    let luma = width as usize * height as usize;
    if planes[0].len() < luma {
        return Err(size_error(
            "YUV frame",
            planes[0].len(),
            luma,
            width,
            height,
        ));
    }
    let (cw, ch) = chroma.plane_size(width, height);
    let chroma_len = cw as usize * ch as usize;
    if chroma != Chroma::Mono && (planes[1].len() < chroma_len || planes[2].len() < chroma_len) {
        return Err(size_error(
            "YUV chroma plane",
            planes[1].len().min(planes[2].len()),
            chroma_len,
            cw,
            ch,
        ));
    }
    out.resize(luma * 3, 0);
    let (range, matrix) = (color.range(), color.matrix());
    let result = if chroma == Chroma::Mono {
        let gray = YuvGrayImage {
            y_plane: &planes[0][..luma],
            y_stride: width,
            width,
            height,
        };
        yuv400_to_rgb(&gray, out, width * 3, range, matrix)
    } else {
        let image = YuvPlanarImage {
            y_plane: &planes[0][..luma],
            y_stride: width,
            u_plane: &planes[1][..chroma_len],
            u_stride: cw,
            v_plane: &planes[2][..chroma_len],
            v_stride: cw,
            width,
            height,
        };
        match chroma {
            Chroma::Yuv420 => yuv420_to_rgb(&image, out, width * 3, range, matrix),
            Chroma::Yuv422 => yuv422_to_rgb(&image, out, width * 3, range, matrix),
            _ => yuv444_to_rgb(&image, out, width * 3, range, matrix),
        }
    };
    result.map_err(|e| CameraError::decode("YUV frame", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `jpeg` without its APP0 and DHT segments, as many USB cameras send MJPEG frames.
    fn strip_tables(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut at = 2;
        loop {
            let marker = jpeg[at + 1];
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[at..]);
                return out;
            }
            let len = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
            if marker != 0xE0 && marker != 0xC4 {
                out.extend_from_slice(&jpeg[at..at + 2 + len]);
            }
            at += 2 + len;
        }
    }

    #[test]
    fn frames_without_huffman_tables_or_app0_get_the_standard_ones() {
        // a real photo, encoded with the standard tables (jpeg-encoder's default) at 4:2:0 and
        // 4:2:2, with and without restart intervals, then stripped of APP0 and DHT
        let photo = image::open(dinoedge_testkit::media(
            "photo_paris_exif_orientation_5.jpg",
        ))
        .unwrap()
        .to_rgb8();
        let (w, h) = (photo.width() as u16, photo.height() as u16);
        for sampling in [
            jpeg_encoder::SamplingFactor::F_2_2,
            jpeg_encoder::SamplingFactor::F_2_1,
        ] {
            for restart in [0, 4] {
                let mut jpeg = Vec::new();
                let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, 85);
                enc.set_sampling_factor(sampling);
                enc.set_restart_interval(restart);
                enc.encode(photo.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
                    .unwrap();
                let bare = strip_tables(&jpeg);
                assert!(
                    bare.len() < jpeg.len() - 400,
                    "{sampling:?}: tables stripped"
                );
                assert!(!needs_standard_tables(&jpeg));
                assert!(needs_standard_tables(&bare));
                let (mut want, mut got) = (Vec::new(), Vec::new());
                assert_eq!(jpeg_to_rgb(&jpeg, &mut want).unwrap(), (w as u32, h as u32));
                let size = jpeg_to_rgb(&bare, &mut got)
                    .unwrap_or_else(|e| panic!("{sampling:?} restart {restart}: {e}"));
                assert_eq!(size, (w as u32, h as u32));
                assert!(want == got, "{sampling:?} restart {restart}: pixels differ");
            }
        }
        // what is not a JPEG is left to the decoder's error
        assert!(!needs_standard_tables(b"not a jpeg"));
        assert!(!needs_standard_tables(&[
            0xFF, 0xD8, 0xFF, 0xC4, 0xFF, 0xFF
        ]));
        assert!(jpeg_to_rgb(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2], &mut Vec::new()).is_err());
    }

    #[test]
    fn yuyv_grey_and_colours() {
        // Y=126 U=V=128 is mid grey in limited range; Y=81 U=90 V=240 is BT.601 red.
        let data = [126u8, 128, 126, 128, 81, 90, 81, 240];
        let mut out = Vec::new();
        yuyv_to_rgb(&data, 2, 2, 4, YuvColor::BT601_LIMITED, &mut out).unwrap();
        assert_eq!(out.len(), 12);
        for px in out[..6].chunks(3) {
            assert!(px.iter().all(|&c| (c as i32 - 128).abs() <= 2), "{px:?}");
        }
        for px in out[6..].chunks(3) {
            assert!(px[0] > 240 && px[1] < 15 && px[2] < 15, "{px:?}");
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut out = Vec::new();
        assert!(yuyv_to_rgb(&[0; 7], 2, 2, 4, YuvColor::BT601_LIMITED, &mut out).is_err());
        assert!(yuyv_to_rgb(&[0; 8], 3, 1, 6, YuvColor::BT601_LIMITED, &mut out).is_err());
        let y = [0u8; 16];
        let c = [0u8; 3];
        let err = planar_to_rgb(
            [&y, &c, &c],
            4,
            4,
            Chroma::Yuv420,
            YuvColor::BT601_LIMITED,
            &mut out,
        );
        assert!(matches!(err, Err(CameraError::Decode { .. })));
        assert!(jpeg_to_rgb(b"not a jpeg", &mut out).is_err());
    }
}
