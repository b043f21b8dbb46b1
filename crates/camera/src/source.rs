//! Source URIs: what a user types to name a camera, a file or a stream, and opening them.
//!
//! | URI | source |
//! |---|---|
//! | `v4l2:///dev/video0?width=1280&height=720&fps=30&format=mjpeg` (or `v4l2://0`) | USB/V4L2 camera (feature `v4l2`) |
//! | `csi://0?width=1280&height=720&fps=30` | Raspberry Pi CSI camera through `rpicam-vid` |
//! | `photo.jpg`, `frames/`, `'frames/*.png'`, `file:///abs/path` | images: one, a folder, a glob |
//! | `clip.mjpeg`, `clip.y4m` | MJPEG stream file, YUV4MPEG2 video |
//! | `run.mcap?topic=/camera/image` | an image topic of an MCAP recording (default: the first) |
//! | `clip.mp4` (any other file), `rtsp://…`, `http://…` | video through `ffmpeg` |
//! | `-` or `stdin://` | MJPEG on standard input |
//! | `synthetic://?width=640&height=480&fps=30` | a moving test pattern |
//!
//! Options for files and the test pattern: `loop`, `fps=F` (deliver at F frames per
//! second), `pace=realtime|fast` (real time at the file's rate, or as fast as possible:
//! the default for files), `frames=N` (stop after N). Cameras take `reconnect=false` to
//! end instead of reopening when they vanish.

use std::path::{Path, PathBuf};

use crate::csi::{CsiOptions, open_csi};
use crate::error::{CameraError, Result};
use crate::ffmpeg::{FfmpegOptions, FfmpegSource};
use crate::frame::FrameSource;
use crate::images::{ImageFiles, is_image_path};
use crate::mcap::McapSource;
use crate::mjpeg::MjpegSource;
use crate::synthetic::{Synthetic, SyntheticOptions};
use crate::v4l2::{PixelFormat, V4l2Options, V4l2Source};
use crate::wrap::{Backoff, Limited, Looping, Opener, Paced, Reconnecting};
use crate::y4m::Y4mSource;

/// Frame rate used for real-time pacing when neither the file nor the URI gives one.
pub const DEFAULT_FPS: f64 = 30.0;

/// What kind of source a URI names.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// A V4L2 camera.
    V4l2(V4l2Options),
    /// A Raspberry Pi CSI camera.
    Csi(CsiOptions),
    /// One image file.
    Image(PathBuf),
    /// The images in a directory.
    Dir(PathBuf),
    /// The images matching a glob pattern.
    Glob(String),
    /// An MJPEG stream file.
    Mjpeg(PathBuf),
    /// A YUV4MPEG2 file; `bt709` overrides the matrix choice.
    Y4m {
        /// The file.
        path: PathBuf,
        /// `Some(true)` for BT.709, `Some(false)` for BT.601, `None` by frame size.
        bt709: Option<bool>,
    },
    /// A video file or network stream read by ffmpeg.
    Video {
        /// Path or URL.
        input: String,
        /// A network stream (reconnects, no clean end).
        live: bool,
    },
    /// An image topic of an MCAP recording.
    Mcap {
        /// The file.
        path: PathBuf,
        /// The topic (`None`: the first image topic).
        topic: Option<String>,
    },
    /// MJPEG on standard input.
    Stdin,
    /// The test pattern.
    Synthetic(SyntheticOptions),
}

/// How fast a file source delivers frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as they can be decoded.
    Fast,
    /// In real time at the file's own frame rate ([`DEFAULT_FPS`] when it has none).
    Native,
    /// In real time at this rate.
    Fps(f64),
}

/// A parsed source URI.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The URI as typed.
    pub uri: String,
    /// What it names.
    pub kind: SourceKind,
    /// Pacing (files and the test pattern).
    pub pace: Pace,
    /// Start again at the end (files).
    pub looping: bool,
    /// Stop after this many frames.
    pub limit: Option<u64>,
    /// Reopen a live source that fails (cameras, network streams).
    pub reconnect: bool,
    /// Backoff for reopening.
    pub backoff: Backoff,
}

/// `key=value&key&…` after the last `?`, if what follows it looks like options.
fn split_query(s: &str) -> (&str, Vec<(String, String)>) {
    let Some(q) = s.rfind('?') else {
        return (s, Vec::new());
    };
    let (base, query) = (&s[..q], &s[q + 1..]);
    let looks_like_options = !query.is_empty()
        && query.split('&').all(|kv| {
            let key = kv.split('=').next().unwrap_or("");
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
    if !looks_like_options {
        return (s, Vec::new());
    }
    let pairs = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect();
    (base, pairs)
}

struct Options<'a> {
    uri: &'a str,
    pairs: Vec<(String, String)>,
    allowed: Vec<&'static str>,
}

impl Options<'_> {
    fn take(&mut self, key: &'static str) -> Option<String> {
        self.allowed.push(key);
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    fn parse<T: std::str::FromStr>(&mut self, key: &'static str) -> Result<Option<T>> {
        let uri = self.uri;
        self.take(key)
            .map(|v| {
                v.parse::<T>().map_err(|_| {
                    CameraError::bad_uri(uri, format!("`{key}={v}` is not a valid value"))
                })
            })
            .transpose()
    }

    fn flag(&mut self, key: &'static str) -> Result<Option<bool>> {
        let uri = self.uri;
        self.take(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(CameraError::bad_uri(
                    uri,
                    format!("`{key}={v}`: use true or false"),
                )),
            })
            .transpose()
    }

    fn positive(&mut self, key: &'static str) -> Result<Option<f64>> {
        let v: Option<f64> = self.parse(key)?;
        match v {
            Some(f) if !(f.is_finite() && f > 0.0) => Err(CameraError::bad_uri(
                self.uri,
                format!("`{key}` must be a positive number"),
            )),
            _ => Ok(v),
        }
    }

    fn finish(self) -> Result<()> {
        if let Some((key, _)) = self.pairs.first() {
            let mut allowed = self.allowed.clone();
            allowed.sort_unstable();
            allowed.dedup();
            return Err(CameraError::bad_uri(
                self.uri,
                format!(
                    "unknown option `{key}` (this source takes: {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn path_kind(path: &str, uri: &str) -> Result<SourceKind> {
    let p = Path::new(path);
    if p.is_dir() {
        return Ok(SourceKind::Dir(p.to_owned()));
    }
    if !p.exists() {
        if has_glob_chars(path) {
            return Ok(SourceKind::Glob(path.to_owned()));
        }
        return Err(CameraError::NotFound(p.to_owned()));
    }
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    Ok(match ext.as_str() {
        _ if is_image_path(p) => SourceKind::Image(p.to_owned()),
        "mjpeg" | "mjpg" => SourceKind::Mjpeg(p.to_owned()),
        "y4m" => SourceKind::Y4m {
            path: p.to_owned(),
            bt709: None,
        },
        "mcap" => SourceKind::Mcap {
            path: p.to_owned(),
            topic: None,
        },
        "" => {
            return Err(CameraError::bad_uri(
                uri,
                "a file without an extension: name it .jpg/.png, .mjpeg, .y4m or a video extension",
            ));
        }
        _ => SourceKind::Video {
            input: path.to_owned(),
            live: false,
        },
    })
}

impl SourceSpec {
    /// Parse a source URI (see the module documentation for the forms).
    pub fn parse(uri: &str) -> Result<SourceSpec> {
        let trimmed = uri.trim();
        if trimmed.is_empty() {
            return Err(CameraError::bad_uri(uri, "empty source"));
        }
        let network = [
            "rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "srt://",
        ];
        if network.iter().any(|p| trimmed.starts_with(p)) {
            // The whole URL, query and all, belongs to ffmpeg.
            return Ok(SourceSpec {
                uri: uri.to_owned(),
                kind: SourceKind::Video {
                    input: trimmed.to_owned(),
                    live: true,
                },
                pace: Pace::Fast,
                looping: false,
                limit: None,
                reconnect: true,
                backoff: Backoff::default(),
            });
        }
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None if trimmed == "-" => ("stdin".to_owned(), ""),
            None => ("file".to_owned(), trimmed),
        };
        let (base, pairs) = split_query(rest);
        let mut o = Options {
            uri,
            pairs,
            allowed: Vec::new(),
        };
        let limit = o.parse::<u64>("frames")?;
        let mut pace = Pace::Fast;
        let mut looping = false;
        let mut reconnect = false;
        let file_options = |o: &mut Options, pace: &mut Pace, looping: &mut bool| -> Result<()> {
            *looping = o.flag("loop")?.unwrap_or(false);
            match o.take("pace").as_deref() {
                None | Some("fast") => {}
                Some("realtime" | "native" | "real-time") => *pace = Pace::Native,
                Some(other) => {
                    return Err(CameraError::bad_uri(
                        o.uri,
                        format!("`pace={other}`: use realtime or fast"),
                    ));
                }
            }
            if let Some(fps) = o.positive("fps")? {
                *pace = Pace::Fps(fps);
            }
            Ok(())
        };
        let kind = match scheme.as_str() {
            "v4l2" | "v4l" | "usb" => {
                reconnect = o.flag("reconnect")?.unwrap_or(true);
                let device = if base.is_empty() { "/dev/video0" } else { base };
                let format = o
                    .take("format")
                    .map(|f| {
                        f.parse::<PixelFormat>()
                            .map_err(|e| CameraError::bad_uri(uri, e))
                    })
                    .transpose()?;
                SourceKind::V4l2(V4l2Options {
                    device: device.to_owned(),
                    width: o.parse("width")?,
                    height: o.parse("height")?,
                    fps: o.parse("fps")?,
                    format,
                })
            }
            "csi" => {
                reconnect = o.flag("reconnect")?.unwrap_or(true);
                let d = CsiOptions::default();
                let camera = if base.is_empty() {
                    0
                } else {
                    base.parse().map_err(|_| {
                        CameraError::bad_uri(uri, "the CSI camera is a number: csi://0, csi://1")
                    })?
                };
                SourceKind::Csi(CsiOptions {
                    camera,
                    width: o.parse("width")?.unwrap_or(d.width),
                    height: o.parse("height")?.unwrap_or(d.height),
                    fps: o.positive("fps")?.unwrap_or(d.fps),
                    quality: o.parse("quality")?.unwrap_or(d.quality),
                    program: o.take("program"),
                })
            }
            "synthetic" | "test" | "testsrc" => {
                let d = SyntheticOptions::default();
                let fps = o.positive("fps")?.unwrap_or(DEFAULT_FPS);
                looping = false;
                pace = match o.take("pace").as_deref() {
                    Some("fast") => Pace::Fast,
                    None | Some("realtime" | "native") => Pace::Fps(fps),
                    Some(other) => {
                        return Err(CameraError::bad_uri(
                            uri,
                            format!("`pace={other}`: use realtime or fast"),
                        ));
                    }
                };
                SourceKind::Synthetic(SyntheticOptions {
                    width: o.parse("width")?.unwrap_or(d.width),
                    height: o.parse("height")?.unwrap_or(d.height),
                    frames: None,
                })
            }
            "stdin" => SourceKind::Stdin,
            "file" => {
                file_options(&mut o, &mut pace, &mut looping)?;
                let mut kind = path_kind(base, uri)?;
                if let SourceKind::Y4m { bt709, .. } = &mut kind {
                    *bt709 = match o.take("matrix").as_deref() {
                        None => None,
                        Some("709" | "bt709") => Some(true),
                        Some("601" | "bt601") => Some(false),
                        Some(other) => {
                            return Err(CameraError::bad_uri(
                                uri,
                                format!("`matrix={other}`: use 601 or 709"),
                            ));
                        }
                    };
                }
                if let SourceKind::Mcap { topic, .. } = &mut kind {
                    *topic = o.take("topic");
                }
                kind
            }
            other => {
                return Err(CameraError::bad_uri(
                    uri,
                    format!(
                        "unknown scheme `{other}://` (v4l2://, csi://, file://, synthetic://, \
                         stdin:// or -, rtsp://, http://; or a plain path)"
                    ),
                ));
            }
        };
        o.finish()?;
        Ok(SourceSpec {
            uri: uri.to_owned(),
            kind,
            pace,
            looping,
            limit,
            reconnect,
            backoff: Backoff::default(),
        })
    }

    /// Open the source, with pacing, looping, frame limit and reconnection as asked.
    pub fn open(&self) -> Result<Box<dyn FrameSource>> {
        let kind = self.kind.clone();
        let ffmpeg_pace = self.pace == Pace::Native && matches!(kind, SourceKind::Video { .. });
        let opener = move |kind: &SourceKind| -> Result<Box<dyn FrameSource>> {
            Ok(match kind {
                SourceKind::V4l2(o) => Box::new(V4l2Source::open(o)?),
                SourceKind::Csi(o) => Box::new(open_csi(o)?),
                SourceKind::Image(p) => {
                    Box::new(ImageFiles::new(vec![p.clone()], p.display().to_string()))
                }
                SourceKind::Dir(p) => Box::new(ImageFiles::dir(p)?),
                SourceKind::Glob(g) => Box::new(ImageFiles::glob(g)?),
                SourceKind::Mjpeg(p) => {
                    let file = std::fs::File::open(p).map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => CameraError::NotFound(p.clone()),
                        _ => CameraError::io(p.display().to_string(), e),
                    })?;
                    Box::new(MjpegSource::new(
                        file,
                        p.display().to_string(),
                        "mjpeg",
                        false,
                    ))
                }
                SourceKind::Y4m { path, bt709 } => Box::new(Y4mSource::open(path, *bt709)?),
                SourceKind::Mcap { path, topic } => {
                    Box::new(McapSource::open(path, topic.clone())?)
                }
                SourceKind::Video { input, live } => Box::new(FfmpegSource::open(
                    input,
                    FfmpegOptions {
                        native_rate: ffmpeg_pace,
                        live: *live,
                        ..FfmpegOptions::default()
                    },
                )?),
                SourceKind::Stdin => Box::new(MjpegSource::new(
                    std::io::stdin(),
                    "standard input",
                    "stdin",
                    true,
                )),
                SourceKind::Synthetic(o) => Box::new(Synthetic::new(*o)?),
            })
        };
        let live = matches!(
            kind,
            SourceKind::V4l2(_) | SourceKind::Csi(_) | SourceKind::Video { live: true, .. }
        );
        let mut source: Box<dyn FrameSource> = if live && self.reconnect {
            let k = kind.clone();
            let open: Opener = Box::new(move || opener(&k));
            Box::new(Reconnecting::new(open, self.backoff)?)
        } else if self.looping {
            let k = kind.clone();
            let open: Opener = Box::new(move || opener(&k));
            Box::new(Looping::new(open)?)
        } else {
            opener(&kind)?
        };
        let fps = match self.pace {
            Pace::Fast => None,
            // ffmpeg paces itself (-re)
            Pace::Native if matches!(kind, SourceKind::Video { .. }) => None,
            Pace::Native => Some(source.info().fps.unwrap_or(DEFAULT_FPS)),
            Pace::Fps(f) => Some(f),
        };
        if let Some(fps) = fps {
            source = Box::new(Paced::new(source, fps));
        }
        if let Some(n) = self.limit {
            source = Box::new(Limited::new(source, n));
        }
        Ok(source)
    }
}

/// Parse and open a source URI.
pub fn open(uri: &str) -> Result<Box<dyn FrameSource>> {
    SourceSpec::parse(uri)?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let s = SourceSpec::parse("v4l2:///dev/video2?width=640&height=480&fps=15&format=yuyv")
            .unwrap();
        assert_eq!(
            s.kind,
            SourceKind::V4l2(V4l2Options {
                device: "/dev/video2".into(),
                width: Some(640),
                height: Some(480),
                fps: Some(15),
                format: Some(PixelFormat::Yuyv),
            })
        );
        assert!(s.reconnect);
        let s = SourceSpec::parse("csi://1?fps=10&reconnect=false").unwrap();
        assert!(matches!(
            s.kind,
            SourceKind::Csi(CsiOptions {
                camera: 1,
                width: 1280,
                ..
            })
        ));
        assert!(!s.reconnect);
        let s = SourceSpec::parse("synthetic://?width=64&height=48&frames=3").unwrap();
        assert_eq!(s.limit, Some(3));
        assert_eq!(s.pace, Pace::Fps(30.0));
        let s = SourceSpec::parse("rtsp://cam.local/stream?channel=1").unwrap();
        assert_eq!(
            s.kind,
            SourceKind::Video {
                input: "rtsp://cam.local/stream?channel=1".into(),
                live: true
            }
        );
        assert_eq!(SourceSpec::parse("-").unwrap().kind, SourceKind::Stdin);
        let s = SourceSpec::parse("frames/img_*.png?loop&fps=12.5").unwrap();
        assert_eq!(s.kind, SourceKind::Glob("frames/img_*.png".into()));
        assert!(s.looping);
        assert_eq!(s.pace, Pace::Fps(12.5));
        // a `?` that is part of a glob, not options
        let s = SourceSpec::parse("frames/img?.png").unwrap();
        assert_eq!(s.kind, SourceKind::Glob("frames/img?.png".into()));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        let msg = |uri: &str| SourceSpec::parse(uri).unwrap_err().to_string();
        assert!(msg("v4l2://0?widht=640").contains("unknown option `widht`"));
        assert!(msg("v4l2://0?widht=640").contains("width"));
        assert!(msg("csi://front").contains("csi://0"));
        assert!(msg("synthetic://?fps=-3").contains("positive"));
        assert!(msg("gopher://x").contains("unknown scheme"));
        assert!(msg("/no/such/file.jpg").contains("no such file"));
        assert!(msg("v4l2://0?format=h264").contains("mjpeg or yuyv"));
        assert!(msg("").contains("empty"));
    }
}
