//! A moving test pattern: colour bars, a grey ramp, a square that moves across the frame,
//! and the frame number written as 16 black/white blocks along the bottom edge (readable
//! back with [`read_frame_number`], even after JPEG compression).

use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// Settings for the test pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticOptions {
    /// Frame width (at least 32).
    pub width: u32,
    /// Frame height (at least 32).
    pub height: u32,
    /// Stop after this many frames (`None`: forever).
    pub frames: Option<u64>,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            width: 640,
            height: 480,
            frames: None,
        }
    }
}

/// The test-pattern source.
pub struct Synthetic {
    options: SyntheticOptions,
    seq: u64,
}

const BARS: [[u8; 3]; 7] = [
    [192, 192, 192],
    [192, 192, 0],
    [0, 192, 192],
    [0, 192, 0],
    [192, 0, 192],
    [192, 0, 0],
    [0, 0, 192],
];
const NUMBER_BITS: u32 = 16;

impl Synthetic {
    /// A test pattern of this size.
    pub fn new(options: SyntheticOptions) -> Result<Self> {
        if options.width < 32
            || options.height < 32
            || options.width > 8192
            || options.height > 8192
        {
            return Err(CameraError::bad_uri(
                "synthetic://",
                format!(
                    "size {}x{} is outside 32x32 … 8192x8192",
                    options.width, options.height
                ),
            ));
        }
        Ok(Synthetic { options, seq: 0 })
    }

    /// Draw frame `seq`.
    pub fn render(&self, seq: u64) -> Vec<u8> {
        let (w, h) = (self.options.width as usize, self.options.height as usize);
        let mut rgb = vec![0u8; w * h * 3];
        let bars_h = h * 2 / 3;
        let strip = (h / 12).max(4);
        let box_size = (h.min(w) / 4).max(8);
        let travel = (w - box_size).max(1);
        // bounce: 0 → travel → 0 over 2*travel frames, 4 px per frame
        let phase = (seq as usize * 4) % (2 * travel);
        let bx = if phase < travel {
            phase
        } else {
            2 * travel - phase
        };
        let by = bars_h
            .saturating_sub(box_size / 2)
            .min(h - strip - box_size);
        for y in 0..h {
            let row = &mut rgb[y * w * 3..(y + 1) * w * 3];
            for x in 0..w {
                let px = if y >= h - strip {
                    let bit = (x * NUMBER_BITS as usize / w) as u32;
                    let on = (seq >> (NUMBER_BITS - 1 - bit)) & 1 == 1;
                    if on { [255, 255, 255] } else { [0, 0, 0] }
                } else if (bx..bx + box_size).contains(&x) && (by..by + box_size).contains(&y) {
                    let edge = x < bx + 2
                        || x >= bx + box_size - 2
                        || y < by + 2
                        || y >= by + box_size - 2;
                    if edge { [0, 0, 0] } else { [255, 255, 255] }
                } else if y < bars_h {
                    BARS[x * BARS.len() / w]
                } else {
                    let v = (x * 255 / (w - 1)) as u8;
                    [v, v, v]
                };
                row[x * 3..x * 3 + 3].copy_from_slice(&px);
            }
        }
        rgb
    }
}

/// Read back the frame number written into a test-pattern frame (modulo 2^16); `None`
/// when `rgb` is not a `width` x `height` RGB frame.
pub fn read_frame_number(rgb: &[u8], width: u32, height: u32) -> Option<u64> {
    let (w, h) = (width as usize, height as usize);
    if w < 32 || h < 32 || rgb.len() != w * h * 3 {
        return None;
    }
    let strip = (h / 12).max(4);
    let y = h - strip / 2 - 1;
    let mut n = 0u64;
    for bit in 0..NUMBER_BITS as usize {
        let x = (2 * bit + 1) * w / (2 * NUMBER_BITS as usize);
        let i = (y * w + x) * 3;
        let luma = (rgb[i] as u32 + rgb[i + 1] as u32 + rgb[i + 2] as u32) / 3;
        n = (n << 1) | u64::from(luma > 127);
    }
    Some(n)
}

impl FrameSource for Synthetic {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.options.frames.is_some_and(|n| self.seq >= n) {
            return Ok(None);
        }
        let rgb = self.render(self.seq);
        let frame = Frame::new(rgb, self.options.width, self.options.height, self.seq);
        self.seq += 1;
        Ok(Some(frame))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "synthetic",
            description: "test pattern".into(),
            size: Some((self.options.width, self.options.height)),
            fps: None,
            live: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_numbers_read_back_and_the_square_moves() {
        let mut s = Synthetic::new(SyntheticOptions {
            width: 160,
            height: 120,
            frames: Some(3),
        })
        .unwrap();
        let frames: Vec<_> = std::iter::from_fn(|| s.next_frame().unwrap()).collect();
        assert_eq!(frames.len(), 3);
        for f in &frames {
            assert_eq!(read_frame_number(&f.rgb, f.width, f.height), Some(f.seq));
        }
        assert_ne!(frames[0].rgb, frames[1].rgb);
        assert_eq!(read_frame_number(&s.render(40_000), 160, 120), Some(40_000));
        assert_eq!(read_frame_number(&[0; 10], 160, 120), None);
        assert!(
            Synthetic::new(SyntheticOptions {
                width: 8,
                ..Default::default()
            })
            .is_err()
        );
        // extreme aspect ratios draw without trouble
        for (width, height) in [(32, 8192), (8192, 32)] {
            let s = Synthetic::new(SyntheticOptions {
                width,
                height,
                frames: None,
            })
            .unwrap();
            assert_eq!(read_frame_number(&s.render(77), width, height), Some(77));
        }
    }
}
