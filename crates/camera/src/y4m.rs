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

/// Frames from a Y4M file (8-bit mono, 4:2:0, 4:2:2 or 4:4:4).
pub struct Y4mSource {
    decoder: y4m::Decoder<Counting<BufReader<Box<dyn Read + Send>>>>,
    bytes_read: Arc<AtomicU64>,
    what: String,
    width: u32,
    height: u32,
    chroma: Chroma,
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
        let counting = Counting {
            inner: BufReader::with_capacity(1 << 20, reader),
            count: Arc::clone(&bytes_read),
        };
        let decoder = y4m::Decoder::new(counting).map_err(|e| match e {
            y4m::Error::EOF => CameraError::Truncated {
                what: what.clone(),
                reason: "the file ends inside the YUV4MPEG2 header".into(),
            },
            y4m::Error::IoError(io) => CameraError::io(what.clone(), io),
            other => CameraError::decode(what.clone(), format!("not a YUV4MPEG2 file: {other}")),
        })?;
        let chroma = match decoder.get_colorspace() {
            y4m::Colorspace::Cmono => Chroma::Mono,
            y4m::Colorspace::C420
            | y4m::Colorspace::C420jpeg
            | y4m::Colorspace::C420paldv
            | y4m::Colorspace::C420mpeg2 => Chroma::Yuv420,
            y4m::Colorspace::C422 => Chroma::Yuv422,
            y4m::Colorspace::C444 => Chroma::Yuv444,
            other => {
                return Err(CameraError::Unsupported {
                    what,
                    reason: format!(
                        "pixel format {other:?} (8-bit mono, 4:2:0, 4:2:2 and 4:4:4 are read)"
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
        planar_to_rgb(
            [raw.get_y_plane(), raw.get_u_plane(), raw.get_v_plane()],
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
