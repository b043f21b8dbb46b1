//! Frames and the trait every source implements.

use std::time::{Duration, Instant, SystemTime};

use crate::error::Result;

/// One RGB8 frame with when it was captured and what was lost before it.
#[derive(Clone)]
pub struct Frame {
    /// Packed RGB8 pixels, row-major, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Sequence number from the source: 0, 1, 2, … in delivery order (gaps are not left
    /// for dropped frames; see [`Frame::dropped_before`]).
    pub seq: u64,
    /// Monotonic capture time (for latency and rates).
    pub captured: Instant,
    /// Wall-clock capture time (for recordings and logs).
    pub wall: SystemTime,
    /// Position in the media for file sources (frame index / frame rate), if known.
    pub media_time: Option<Duration>,
    /// Frames the source lost between the previous delivered frame and this one (corrupt
    /// frames skipped, frames overwritten in a newest-frame hand-over, gaps a camera reported).
    pub dropped_before: u64,
    /// The camera's intrinsics when the source knows them (a recording's calibration topic).
    pub intrinsics: Option<crate::Intrinsics>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("seq", &self.seq)
            .field("media_time", &self.media_time)
            .field("dropped_before", &self.dropped_before)
            .finish_non_exhaustive()
    }
}

impl Frame {
    /// A frame stamped now. `rgb` must hold `width * height * 3` bytes.
    pub fn new(rgb: Vec<u8>, width: u32, height: u32, seq: u64) -> Frame {
        debug_assert_eq!(rgb.len(), width as usize * height as usize * 3);
        Frame {
            rgb,
            width,
            height,
            seq,
            captured: Instant::now(),
            wall: SystemTime::now(),
            media_time: None,
            dropped_before: 0,
            intrinsics: None,
        }
    }

    /// The pixels as an `image` buffer (moves them; no copy).
    pub fn into_image(self) -> image::RgbImage {
        let (w, h) = (self.width, self.height);
        image::RgbImage::from_raw(w, h, self.rgb).expect("frame size matches its pixel buffer")
    }

    /// A copy of the pixels as an `image` buffer.
    pub fn to_image(&self) -> image::RgbImage {
        self.clone().into_image()
    }

    /// Wall-clock capture time as nanoseconds since the Unix epoch.
    pub fn wall_nanos(&self) -> u64 {
        self.wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// What a source says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// The kind of source (`v4l2`, `csi`, `images`, `mjpeg`, `y4m`, `ffmpeg`, `stdin`, `synthetic`).
    pub kind: &'static str,
    /// A human description: the path, device or command.
    pub description: String,
    /// Nominal frame size, when known before the first frame.
    pub size: Option<(u32, u32)>,
    /// Nominal frame rate, when known.
    pub fps: Option<f64>,
    /// Whether the source is live (a camera or a pipe), as opposed to a file that can be re-read.
    pub live: bool,
}

/// A source of frames: a camera, a file, a pipe.
///
/// The contract the runner relies on:
/// - `Ok(Some(frame))`: the next frame.
/// - `Ok(None)`: the source ended cleanly (end of file); it stays ended.
/// - `Err(e)`: something went wrong for this call (a truncated file, a vanished camera,
///   an undecodable image in a folder). The caller may call again: a source that can go
///   on does (the next image, a reopened camera); one that cannot returns `Ok(None)`.
pub trait FrameSource: Send {
    /// The next frame, blocking until it is there.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// What this source is.
    fn info(&self) -> SourceInfo;
}

impl FrameSource for Box<dyn FrameSource> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        (**self).next_frame()
    }
    fn info(&self) -> SourceInfo {
        (**self).info()
    }
}
