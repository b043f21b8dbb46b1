//! Video files and network streams through an `ffmpeg` child process, which decodes and
//! converts to RGB (with the stream's own colour matrix) and writes binary PPM frames.

use std::io::{BufReader, Read};
use std::process::ChildStdout;

use crate::child::ChildProcess;
use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// How to run ffmpeg for one input.
#[derive(Debug, Clone)]
pub struct FfmpegOptions {
    /// The ffmpeg program (default `ffmpeg`; `$DINOEDGE_FFMPEG` overrides).
    pub program: String,
    /// Let ffmpeg read the input at its native frame rate (`-re`).
    pub native_rate: bool,
    /// Loop the input forever (`-stream_loop -1`).
    pub loop_input: bool,
    /// The input is a live stream (RTSP, HTTP…): its end is an error, not a clean end.
    pub live: bool,
}

impl Default for FfmpegOptions {
    fn default() -> Self {
        FfmpegOptions {
            program: std::env::var("DINOEDGE_FFMPEG").unwrap_or_else(|_| "ffmpeg".into()),
            native_rate: false,
            loop_input: false,
            live: false,
        }
    }
}

/// Frames decoded by ffmpeg.
pub struct FfmpegSource {
    child: ChildProcess,
    reader: BufReader<ChildStdout>,
    input: String,
    options: FfmpegOptions,
    seq: u64,
    ended: bool,
}

const HINT: &str = "install ffmpeg (Debian/Raspberry Pi OS: `sudo apt install ffmpeg`) to read \
video files and streams, or convert the video to a folder of images or a .y4m file";

impl FfmpegSource {
    /// Start ffmpeg on `input` (a path or a URL ffmpeg understands).
    pub fn open(input: &str, options: FfmpegOptions) -> Result<Self> {
        let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "error"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if options.native_rate {
            args.push("-re".into());
        }
        if options.loop_input {
            args.extend(["-stream_loop".into(), "-1".into()]);
        }
        args.extend(["-i".into(), input.to_owned()]);
        args.extend(
            [
                "-an",
                "-sn",
                "-f",
                "image2pipe",
                "-vcodec",
                "ppm",
                "-pix_fmt",
                "rgb24",
                "-",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let (child, stdout) = ChildProcess::spawn(&options.program, &args, HINT)?;
        Ok(FfmpegSource {
            child,
            reader: BufReader::with_capacity(1 << 20, stdout),
            input: input.to_owned(),
            options,
            seq: 0,
            ended: false,
        })
    }

    fn end(&mut self, read_any: bool) -> Result<Option<Frame>> {
        self.ended = true;
        self.child.finish(self.options.live)?;
        if read_any {
            return Err(CameraError::Truncated {
                what: self.input.clone(),
                reason: format!("ffmpeg's output ends inside frame {}", self.seq),
            });
        }
        if self.seq == 0 {
            return Err(CameraError::decode(
                self.input.clone(),
                "ffmpeg decoded no video frames from it",
            ));
        }
        Ok(None)
    }
}

/// Read one binary PPM (`P6`, maxval 255) from `r`. `Ok(None)` at a clean end (no byte of
/// a new frame read); `Err(PpmEnd::Cut)` when the stream ends inside a frame.
fn read_ppm<R: Read>(r: &mut R, what: &str) -> Result<Option<(u32, u32, Vec<u8>)>, PpmEnd> {
    let mut fields = [0u32; 3];
    let mut byte = [0u8; 1];
    let mut read_any = false;
    let mut next = |r: &mut R, read_any: &mut bool| -> Result<Option<u8>, PpmEnd> {
        match r.read(&mut byte) {
            Ok(0) => Ok(None),
            Ok(_) => {
                *read_any = true;
                Ok(Some(byte[0]))
            }
            Err(e) => Err(PpmEnd::Error(CameraError::io(what.to_owned(), e))),
        }
    };
    let magic = (next(r, &mut read_any)?, next(r, &mut read_any)?);
    match magic {
        (None, _) => return Ok(None),
        (Some(b'P'), Some(b'6')) => {}
        (_, None) => return Err(PpmEnd::Cut),
        _ => {
            return Err(PpmEnd::Error(CameraError::decode(
                what.to_owned(),
                "ffmpeg's output is not binary PPM",
            )));
        }
    }
    for field in &mut fields {
        let mut digits = 0;
        loop {
            let Some(b) = next(r, &mut read_any)? else {
                return Err(PpmEnd::Cut);
            };
            match b {
                b'0'..=b'9' => {
                    *field = field.saturating_mul(10).saturating_add((b - b'0') as u32);
                    digits += 1;
                }
                b'#' => loop {
                    match next(r, &mut read_any)? {
                        None => return Err(PpmEnd::Cut),
                        Some(b'\n') => break,
                        Some(_) => {}
                    }
                },
                _ if b.is_ascii_whitespace() && digits == 0 => {}
                _ if b.is_ascii_whitespace() => break,
                _ => {
                    return Err(PpmEnd::Error(CameraError::decode(
                        what.to_owned(),
                        "bad PPM header from ffmpeg",
                    )));
                }
            }
        }
    }
    let [w, h, maxval] = fields;
    if maxval != 255 || w == 0 || h == 0 || (w as u64 * h as u64) > (1 << 28) {
        return Err(PpmEnd::Error(CameraError::Unsupported {
            what: what.to_owned(),
            reason: format!("PPM frame {w}x{h} with maxval {maxval}"),
        }));
    }
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    r.read_exact(&mut rgb).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PpmEnd::Cut,
        _ => PpmEnd::Error(CameraError::io(what.to_owned(), e)),
    })?;
    Ok(Some((w, h, rgb)))
}

enum PpmEnd {
    Cut,
    Error(CameraError),
}

impl FrameSource for FfmpegSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.ended {
            return Ok(None);
        }
        match read_ppm(&mut self.reader, &self.input) {
            Ok(Some((w, h, rgb))) => {
                let frame = Frame::new(rgb, w, h, self.seq);
                self.seq += 1;
                Ok(Some(frame))
            }
            Ok(None) => self.end(false),
            Err(PpmEnd::Cut) => self.end(true),
            Err(PpmEnd::Error(e)) => {
                self.ended = true;
                Err(e)
            }
        }
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "ffmpeg",
            description: self.input.clone(),
            size: None,
            fps: None,
            live: self.options.live,
        }
    }
}

/// Whether `program -version` runs.
pub fn ffmpeg_available(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
