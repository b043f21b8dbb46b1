//! MJPEG streams: concatenated JPEG frames from a file, a pipe (`rpicam-vid --codec mjpeg -o -`,
//! stdin) or a camera, split by walking JPEG markers rather than by searching for the
//! end-of-image bytes, so thumbnails, padding and garbage between frames are handled and a
//! frame cut short is detected.

use std::io::Read;

use crate::decode::jpeg_to_rgb;
use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// A frame larger than this is treated as corrupt (no real camera sends 64 MiB JPEGs).
const MAX_FRAME_BYTES: usize = 64 << 20;
const READ_CHUNK: usize = 64 << 10;

/// Counts kept by a [`MjpegSplitter`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplitStats {
    /// Complete frames returned.
    pub frames: u64,
    /// Frames that started but were cut short or corrupt, and were discarded.
    pub cut: u64,
    /// Bytes outside any frame (garbage, multipart headers, padding) skipped.
    pub skipped_bytes: u64,
}

/// Splits a byte stream into whole JPEG frames.
pub struct MjpegSplitter<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out or skipped, removed on the next call.
    consumed: usize,
    eof: bool,
    truncated: bool,
    stats: SplitStats,
}

enum Scan {
    /// A whole frame at `start..end`.
    Frame(usize, usize),
    /// Need more bytes; nothing before `keep_from` is needed any more.
    More(usize),
    /// The frame starting at `start` is broken; resume searching after it.
    Broken(usize),
}

impl<R: Read> MjpegSplitter<R> {
    /// Split frames out of `reader`.
    pub fn new(reader: R) -> Self {
        MjpegSplitter {
            reader,
            buf: Vec::with_capacity(READ_CHUNK * 4),
            consumed: 0,
            eof: false,
            truncated: false,
            stats: SplitStats::default(),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> SplitStats {
        self.stats
    }

    /// Whether the stream ended inside a frame.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The next whole JPEG frame (from SOI to EOI), or `None` at the end of the stream.
    pub fn next_frame(&mut self) -> std::io::Result<Option<&[u8]>> {
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        loop {
            match scan(&self.buf) {
                Scan::Frame(start, end) => {
                    self.stats.skipped_bytes += start as u64;
                    self.stats.frames += 1;
                    self.consumed = end;
                    return Ok(Some(&self.buf[start..end]));
                }
                Scan::Broken(resume) => {
                    self.stats.cut += 1;
                    self.buf.drain(..resume);
                }
                Scan::More(keep_from) => {
                    self.stats.skipped_bytes += keep_from as u64;
                    self.buf.drain(..keep_from);
                    if self.buf.len() > MAX_FRAME_BYTES {
                        self.stats.cut += 1;
                        self.buf.drain(..2);
                        continue;
                    }
                    if self.eof || !self.fill()? {
                        if starts_frame(&self.buf) {
                            self.truncated = true;
                            self.stats.cut += 1;
                        } else {
                            self.stats.skipped_bytes += self.buf.len() as u64;
                        }
                        self.buf.clear();
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Read more bytes; false at end of stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let n = loop {
            match self.reader.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }
}

fn starts_frame(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] == 0xFF && buf[1] == 0xD8
}

/// Find the first SOI (FF D8 FF, or FF D8 at the very end) at or after `from`.
fn find_soi(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        let j = i + buf[i..].iter().position(|&b| b == 0xFF)?;
        if j + 1 >= buf.len() {
            return None;
        }
        if buf[j + 1] == 0xD8 && (j + 2 >= buf.len() || buf[j + 2] == 0xFF) {
            return Some(j);
        }
        i = j + 1;
    }
    None
}

/// Walk the markers of the first frame in `buf`.
fn scan(buf: &[u8]) -> Scan {
    let Some(start) = find_soi(buf, 0) else {
        // Keep a trailing 0xFF: it may be the first half of the next SOI.
        let keep = if buf.last() == Some(&0xFF) {
            buf.len() - 1
        } else {
            buf.len()
        };
        return Scan::More(keep);
    };
    let mut p = start + 2;
    loop {
        // At a marker: 0xFF, optional fill 0xFFs, then the marker code.
        if p >= buf.len() {
            return Scan::More(start);
        }
        if buf[p] != 0xFF {
            return Scan::Broken(start + 2);
        }
        while p < buf.len() && buf[p] == 0xFF {
            p += 1;
        }
        if p >= buf.len() {
            return Scan::More(start);
        }
        let marker = buf[p];
        p += 1;
        match marker {
            0xD9 => return Scan::Frame(start, p),
            // A new frame begins inside this one: this one was cut short.
            0xD8 => return Scan::Broken(p - 2),
            0xD0..=0xD7 | 0x01 => continue,
            0x00 => return Scan::Broken(start + 2),
            _ => {}
        }
        if p + 2 > buf.len() {
            return Scan::More(start);
        }
        let len = u16::from_be_bytes([buf[p], buf[p + 1]]) as usize;
        if len < 2 {
            return Scan::Broken(start + 2);
        }
        p += len;
        if marker != 0xDA {
            continue;
        }
        // Entropy-coded data after SOS: runs until a 0xFF that is not stuffing (FF 00),
        // a restart marker (FF D0–D7) or fill (FF FF).
        loop {
            let Some(off) = buf.get(p..).and_then(|s| s.iter().position(|&b| b == 0xFF)) else {
                return Scan::More(start);
            };
            p += off;
            if p + 1 >= buf.len() {
                return Scan::More(start);
            }
            match buf[p + 1] {
                0x00 | 0xD0..=0xD7 => p += 2,
                0xFF => p += 1,
                _ => break,
            }
        }
    }
}

/// Frames decoded from an MJPEG byte stream (a file, stdin, a child process's output).
pub struct MjpegSource<R> {
    splitter: MjpegSplitter<R>,
    what: String,
    kind: &'static str,
    live: bool,
    seq: u64,
    undecodable: u64,
    reported_end: bool,
    /// Called at the end of the stream; may turn it into an error (a child that failed).
    on_end: Option<Box<dyn FnMut() -> Result<()> + Send>>,
}

impl<R: Read + Send> MjpegSource<R> {
    /// Frames from `reader`, described as `what` in errors.
    pub fn new(reader: R, what: impl Into<String>, kind: &'static str, live: bool) -> Self {
        MjpegSource {
            splitter: MjpegSplitter::new(reader),
            what: what.into(),
            kind,
            live,
            seq: 0,
            undecodable: 0,
            reported_end: false,
            on_end: None,
        }
    }

    /// Run `check` when the stream ends (before reporting a truncated stream); an error
    /// from it is what the caller sees.
    pub(crate) fn on_end(mut self, check: impl FnMut() -> Result<()> + Send + 'static) -> Self {
        self.on_end = Some(Box::new(check));
        self
    }

    /// The splitter's counts.
    pub fn stats(&self) -> SplitStats {
        self.splitter.stats()
    }
}

impl<R: Read + Send> FrameSource for MjpegSource<R> {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.reported_end {
            return Ok(None);
        }
        loop {
            let cut_before = self.splitter.stats().cut;
            let jpeg = match self.splitter.next_frame() {
                Ok(j) => j,
                Err(e) => {
                    self.reported_end = true;
                    return Err(CameraError::io(self.what.clone(), e));
                }
            };
            let Some(jpeg) = jpeg else {
                self.reported_end = true;
                if let Some(check) = self.on_end.as_mut() {
                    check()?;
                }
                let stats = self.splitter.stats();
                if self.splitter.truncated() {
                    return Err(CameraError::Truncated {
                        what: self.what.clone(),
                        reason: format!(
                            "the stream ends inside a JPEG frame ({} whole frames read)",
                            stats.frames
                        ),
                    });
                }
                if stats.frames == 0 && !self.live {
                    return Err(CameraError::decode(
                        self.what.clone(),
                        format!("no JPEG frame found in {} bytes", stats.skipped_bytes),
                    ));
                }
                return Ok(None);
            };
            let mut rgb = Vec::new();
            match jpeg_to_rgb(jpeg, &mut rgb) {
                Ok((w, h)) => {
                    let mut frame = Frame::new(rgb, w, h, self.seq);
                    frame.dropped_before = self.splitter.stats().cut - cut_before
                        + std::mem::take(&mut self.undecodable);
                    self.seq += 1;
                    return Ok(Some(frame));
                }
                Err(e) => {
                    tracing::warn!("{}: skipping a frame: {e}", self.what);
                    self.undecodable += self.splitter.stats().cut - cut_before + 1;
                }
            }
        }
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: self.kind,
            description: self.what.clone(),
            size: None,
            fps: None,
            live: self.live,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny "JPEG": SOI, an APP0 segment, SOS with entropy data holding stuffing and a
    /// restart marker, EOI. Enough for the splitter, which does not decode.
    fn fake_jpeg(tag: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, tag, 0xD9];
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x03, 0x01]);
        v.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF, 0xD9]);
        v
    }

    fn split_all(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, SplitStats, bool) {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut s = MjpegSplitter::new(Chunked(data, chunk));
        let mut out = Vec::new();
        while let Some(f) = s.next_frame().unwrap() {
            out.push(f.to_vec());
        }
        (out, s.stats(), s.truncated())
    }

    #[test]
    fn splits_on_markers_in_any_chunking() {
        let mut data = b"--boundary\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
        data.extend(fake_jpeg(1));
        data.extend_from_slice(&[0x00, 0xFF, 0x12, 0xFF]);
        data.extend(fake_jpeg(2));
        data.extend(fake_jpeg(3));
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            let (frames, stats, truncated) = split_all(&data, chunk);
            assert_eq!(frames.len(), 3, "chunk {chunk}");
            assert_eq!(frames[1], fake_jpeg(2));
            assert_eq!(frames[0][6], 1);
            assert_eq!(stats.cut, 0);
            assert!(!truncated);
        }
    }

    #[test]
    fn cut_frames_are_counted_and_skipped() {
        let a = fake_jpeg(1);
        let mut data = a[..a.len() - 5].to_vec(); // cut inside the entropy data
        data.extend(fake_jpeg(2));
        data.extend_from_slice(&fake_jpeg(3)[..9]); // cut at the end of the stream
        let (frames, stats, truncated) = split_all(&data, 5);
        assert_eq!(frames, vec![fake_jpeg(2)]);
        assert_eq!(stats.cut, 2);
        assert!(truncated);
    }
}
