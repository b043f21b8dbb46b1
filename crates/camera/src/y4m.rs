//! YUV4MPEG2 (`.y4m`) files, read with the `y4m` crate, converted to RGB.

use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::decode::{Chroma, YuvColor, planar_to_rgb};
use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// Counts the bytes read through it, so a frame cut short can be told from a clean end
/// (the `y4m` crate reports both as end of file).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The largest frame read (bytes of samples): 256 MiB, 4:2:0 at 16 bit up to ~9,400 pixels
/// square. A header declaring more is refused before anything is allocated.
const MAX_FRAME_BYTES: usize = 256 << 20;

/// Frames from a Y4M file (mono, 4:2:0, 4:2:2 or 4:4:4; 8, 10 or 12 bits, scaled to 8).
pub struct Y4mSource {
    decoder: y4m::Decoder<Counting<BufReader<Box<dyn Read + Send>>>>,
    bytes_read: Arc<AtomicU64>,
    what: String,
    width: u32,
    height: u32,
    chroma: Chroma,
    /// Bits per sample (8, 10 or 12; more than 8 are stored in two bytes, little-endian).
    depth: usize,
    /// The planes scaled to 8 bits, for files of more than 8.
    narrow: [Vec<u8>; 3],
    color: YuvColor,
    fps: Option<f64>,
    seq: u64,
    ended: bool,
}

impl Y4mSource {
    /// Open a `.y4m` file. `bt709` chooses the YUV matrix; `None` picks BT.709 for frames
    /// 720 lines or taller and BT.601 below, as players do (Y4M does not say).
    pub fn open(path: &Path, bt709: Option<bool>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CameraError::NotFound(path.to_owned()),
            _ => CameraError::io(path.display().to_string(), e),
        })?;
        Self::from_reader(Box::new(file), path.display().to_string(), bt709)
    }

    /// Read Y4M from any stream (a pipe from ffmpeg, say).
    pub fn from_reader(
        reader: Box<dyn Read + Send>,
        what: String,
        bt709: Option<bool>,
    ) -> Result<Self> {
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut buffered = BufReader::with_capacity(1 << 20, reader);
        // the header line as far as the first read has it, to name the field that is wrong
        let header = match std::io::BufRead::fill_buf(&mut buffered) {
            Ok(b) => b.split(|c| *c == b'\n').next().unwrap_or_default().to_vec(),
            Err(e) => return Err(CameraError::io(what, e)),
        };
        let counting = Counting {
            inner: buffered,
            count: Arc::clone(&bytes_read),
        };
        let limits = y4m::Limits {
            bytes: MAX_FRAME_BYTES,
        };
        let decoder = y4m::Decoder::new_with_limits(counting, limits).map_err(|e| match e {
            y4m::Error::EOF => CameraError::Truncated {
                what: what.clone(),
                reason: "the file ends inside the YUV4MPEG2 header".into(),
            },
            y4m::Error::IoError(io) => CameraError::io(what.clone(), io),
            y4m::Error::OutOfMemory => CameraError::decode(
                what.clone(),
                format!(
                    "its header declares frames of more than {} MiB ({})",
                    MAX_FRAME_BYTES >> 20,
                    String::from_utf8_lossy(&header).trim()
                ),
            ),
            other => CameraError::decode(
                what.clone(),
                header_problem(&header).unwrap_or_else(|| format!("not a YUV4MPEG2 file: {other}")),
            ),
        })?;
        let colorspace = decoder.get_colorspace();
        let chroma = match colorspace {
            y4m::Colorspace::Cmono | y4m::Colorspace::Cmono12 => Chroma::Mono,
            y4m::Colorspace::C420
            | y4m::Colorspace::C420p10
            | y4m::Colorspace::C420p12
            | y4m::Colorspace::C420jpeg
            | y4m::Colorspace::C420paldv
            | y4m::Colorspace::C420mpeg2 => Chroma::Yuv420,
            y4m::Colorspace::C422 | y4m::Colorspace::C422p10 | y4m::Colorspace::C422p12 => {
                Chroma::Yuv422
            }
            y4m::Colorspace::C444 | y4m::Colorspace::C444p10 | y4m::Colorspace::C444p12 => {
                Chroma::Yuv444
            }
            other => {
                return Err(CameraError::Unsupported {
                    what,
                    reason: format!(
                        "pixel format {other:?} (mono, 4:2:0, 4:2:2 and 4:4:4 in 8, 10 or 12 \
                         bits are read)"
                    ),
                });
            }
        };
        let (width, height) = (decoder.get_width() as u32, decoder.get_height() as u32);
        let params = String::from_utf8_lossy(decoder.get_raw_params()).into_owned();
        let full_range = params
            .split_ascii_whitespace()
            .any(|p| p.eq_ignore_ascii_case("XCOLORRANGE=FULL"));
        let rate = decoder.get_framerate();
        let fps = (rate.num > 0 && rate.den > 0).then(|| rate.num as f64 / rate.den as f64);
        Ok(Y4mSource {
            decoder,
            bytes_read,
            what,
            width,
            height,
            chroma,
            depth: colorspace.get_bit_depth(),
            narrow: Default::default(),
            color: YuvColor {
                full_range,
                bt709: bt709.unwrap_or(height >= 720),
            },
            fps,
            seq: 0,
            ended: false,
        })
    }

    /// The frame rate in the header.
    pub fn fps(&self) -> Option<f64> {
        self.fps
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.ended {
            return Ok(None);
        }
        let before = self.bytes_read.load(Ordering::Relaxed);
        let raw = match self.decoder.read_frame() {
            Ok(raw) => raw,
            Err(e) => {
                self.ended = true;
                let read = self.bytes_read.load(Ordering::Relaxed) - before;
                return match e {
                    y4m::Error::EOF if read == 0 => Ok(None),
                    y4m::Error::EOF => Err(CameraError::Truncated {
                        what: self.what.clone(),
                        reason: format!(
                            "frame {} is cut short ({read} bytes of it read)",
                            self.seq
                        ),
                    }),
                    y4m::Error::IoError(io) => Err(CameraError::io(self.what.clone(), io)),
                    other => Err(CameraError::decode(
                        format!("{} frame {}", self.what, self.seq),
                        other,
                    )),
                };
            }
        };
        let mut rgb = Vec::new();
        let planes = [raw.get_y_plane(), raw.get_u_plane(), raw.get_v_plane()];
        let planes = if self.depth > 8 {
            for (plane, narrow) in planes.iter().zip(&mut self.narrow) {
                to_8_bits(plane, self.depth, narrow);
            }
            [
                &self.narrow[0][..],
                &self.narrow[1][..],
                &self.narrow[2][..],
            ]
        } else {
            planes
        };
        planar_to_rgb(
            planes,
            self.width,
            self.height,
            self.chroma,
            self.color,
            &mut rgb,
        )?;
        let mut frame = Frame::new(rgb, self.width, self.height, self.seq);
        frame.media_time = self
            .fps
            .map(|fps| Duration::from_secs_f64(self.seq as f64 / fps));
        self.seq += 1;
        Ok(Some(frame))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "y4m",
            description: self.what.clone(),
            size: Some((self.width, self.height)),
            fps: self.fps,
            live: false,
        }
    }
}

/// Samples of `depth` bits (two bytes each, little-endian) scaled to 8 bits, rounded.
fn to_8_bits(wide: &[u8], depth: usize, out: &mut Vec<u8>) {
    let shift = depth - 8;
    let half = 1u32 << (shift - 1);
    out.clear();
    out.extend(wide.chunks_exact(2).map(|s| {
        let v = u16::from_le_bytes([s[0], s[1]]) as u32;
        ((v + half) >> shift).min(255) as u8
    }));
}

/// What is wrong with a header line that the `y4m` crate refused, naming the field
/// ("width 0", "unknown colour space C999"); `None` when nothing here can tell.
fn header_problem(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let mut fields = line.split_ascii_whitespace();
    let magic = fields.next().unwrap_or_default();
    if magic != "YUV4MPEG2" {
        let start: String = magic.chars().take(16).collect();
        return Some(format!(
            "not a YUV4MPEG2 file: it starts with \"{start}\", not \"YUV4MPEG2\""
        ));
    }
    let (mut width, mut height) = (false, false);
    for field in fields {
        let (tag, value) =
            field.split_at(field.char_indices().nth(1).map_or(field.len(), |(i, _)| i));
        let positive = || value.parse::<u64>().is_ok_and(|v| v > 0);
        match tag {
            "W" if !positive() => {
                return Some(format!("width {value}: a positive whole number is needed"));
            }
            "H" if !positive() => {
                return Some(format!("height {value}: a positive whole number is needed"));
            }
            "W" => width = true,
            "H" => height = true,
            "F" | "A" => {
                let ratio = value
                    .split_once(':')
                    .is_some_and(|(n, d)| n.parse::<u32>().is_ok() && d.parse::<u32>().is_ok());
                if !ratio {
                    let what = if tag == "F" {
                        "frame rate"
                    } else {
                        "pixel aspect"
                    };
                    return Some(format!(
                        "{what} {tag}{value}: expected two whole numbers, as F30000:1001"
                    ));
                }
            }
            "C" if !matches!(
                value,
                "mono"
                    | "mono12"
                    | "420"
                    | "420p10"
                    | "420p12"
                    | "420jpeg"
                    | "420paldv"
                    | "420mpeg2"
                    | "422"
                    | "422p10"
                    | "422p12"
                    | "444"
                    | "444p10"
                    | "444p12"
            ) =>
            {
                return Some(format!(
                    "unknown colour space C{value} (mono, 420, 420jpeg, 420paldv, 422, 444, and \
                     420p10, 422p10, 444p10, 420p12, 422p12, 444p12 are read)"
                ));
            }
            _ => {}
        }
    }
    match (width, height) {
        (false, _) => Some("no width (W) in the header".into()),
        (_, false) => Some("no height (H) in the header".into()),
        _ => None,
    }
}
