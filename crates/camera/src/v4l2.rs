//! USB/UVC and other V4L2 cameras through `nokhwa` (cargo feature `v4l2`).
//!
//! nokhwa opens the device and hands over the camera's own buffers; dinoedge decodes them
//! (MJPEG with zune-jpeg, YUYV with yuvutils-rs), so a build has one JPEG decoder.

use std::str::FromStr;

use crate::error::{CameraError, Result};

/// The pixel format asked of a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Motion JPEG: what USB cameras send at high resolutions and frame rates.
    Mjpeg,
    /// Packed YUV 4:2:2: uncompressed, limited by USB bandwidth.
    Yuyv,
}

impl FromStr for PixelFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" | "jpeg" => Ok(PixelFormat::Mjpeg),
            "yuyv" | "yuy2" | "yuv" => Ok(PixelFormat::Yuyv),
            _ => Err(format!("unknown pixel format `{s}` (mjpeg or yuyv)")),
        }
    }
}

/// What to open and how.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct V4l2Options {
    /// `/dev/videoN` or `N`.
    pub device: String,
    /// Requested width (the closest the camera offers is used).
    pub width: Option<u32>,
    /// Requested height.
    pub height: Option<u32>,
    /// Requested frame rate.
    pub fps: Option<u32>,
    /// Requested pixel format (default: MJPEG when the camera has it).
    pub format: Option<PixelFormat>,
}

/// The device number in `/dev/videoN` or `N`.
pub fn device_index(device: &str) -> Result<u32> {
    let digits = device.strip_prefix("/dev/video").unwrap_or(device);
    digits.parse().map_err(|_| {
        CameraError::bad_uri(
            &format!("v4l2://{device}"),
            "the device is /dev/videoN or N (see `dinoedge cameras`)",
        )
    })
}

/// One mode a camera offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraMode {
    /// `MJPEG`, `YUYV`, `NV12`, …
    pub format: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
}

/// A camera found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraDescription {
    /// The URI that opens it (`v4l2:///dev/video0`).
    pub uri: String,
    /// The name the driver gives.
    pub name: String,
    /// Its modes; empty when the device could not be queried (then `error` says why).
    pub modes: Vec<CameraMode>,
    /// Why the modes could not be read (busy, permission denied), if so.
    pub error: Option<String>,
}

#[cfg(feature = "v4l2")]
mod imp {
    use std::time::{Duration, Instant, SystemTime};

    use nokhwa::Camera;
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
        Resolution,
    };

    use super::*;
    use crate::decode::{YuvColor, jpeg_to_rgb, yuyv_to_rgb};
    use crate::frame::{Frame, FrameSource, SourceInfo};

    fn found_list() -> String {
        match list_cameras() {
            Ok(cams) if cams.is_empty() => "no V4L2 cameras were found on this machine".into(),
            Ok(cams) => format!(
                "cameras found: {}",
                cams.iter()
                    .map(|c| format!("{} ({})", c.uri, c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!("listing cameras failed too: {e}"),
        }
    }

    /// The V4L2 cameras on this machine, with their modes.
    pub fn list_cameras() -> Result<Vec<CameraDescription>> {
        let infos = nokhwa::query(ApiBackend::Video4Linux).map_err(|e| CameraError::Device {
            device: "V4L2".into(),
            reason: format!("cannot list cameras: {e}"),
        })?;
        let mut out = Vec::new();
        for info in infos {
            let index = info.index().clone();
            let uri = match index.as_index() {
                Ok(i) => format!("v4l2:///dev/video{i}"),
                Err(_) => format!("v4l2://{}", index.as_string()),
            };
            let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::None);
            let (modes, error) =
                match Camera::with_backend(index, requested, ApiBackend::Video4Linux) {
                    Ok(mut cam) => match cam.compatible_camera_formats() {
                        Ok(formats) => (
                            formats
                                .iter()
                                .map(|f| CameraMode {
                                    format: f.format().to_string(),
                                    width: f.width(),
                                    height: f.height(),
                                    fps: f.frame_rate(),
                                })
                                .collect(),
                            None,
                        ),
                        Err(e) => (Vec::new(), Some(e.to_string())),
                    },
                    Err(e) => (Vec::new(), Some(e.to_string())),
                };
            out.push(CameraDescription {
                uri,
                name: info.human_name(),
                modes,
                error,
            });
        }
        Ok(out)
    }

    /// An open V4L2 camera.
    pub struct V4l2Source {
        camera: Camera,
        device: String,
        format: CameraFormat,
        seq: u64,
        last: Option<Instant>,
    }

    impl V4l2Source {
        /// Open and start the camera. A device that does not exist (or cannot be opened)
        /// gives an error that lists the cameras that were found.
        pub fn open(options: &V4l2Options) -> Result<Self> {
            let index = device_index(&options.device)?;
            let device = format!("/dev/video{index}");
            let frame_format = match options.format {
                Some(PixelFormat::Yuyv) => FrameFormat::YUYV,
                _ => FrameFormat::MJPEG,
            };
            let request = match (options.width, options.height, options.fps) {
                (None, None, None) if options.format.is_none() => {
                    RequestedFormatType::AbsoluteHighestFrameRate
                }
                (w, h, fps) => RequestedFormatType::Closest(CameraFormat::new(
                    Resolution::new(w.unwrap_or(1280), h.unwrap_or(720)),
                    frame_format,
                    fps.unwrap_or(30),
                )),
            };
            let requested = RequestedFormat::new::<RgbFormat>(request);
            let open_error = |e: nokhwa::NokhwaError| CameraError::Device {
                device: device.clone(),
                reason: format!("cannot open it ({e}); {}", found_list()),
            };
            if !std::path::Path::new(&device).exists() {
                return Err(CameraError::Device {
                    device: device.clone(),
                    reason: format!("no such device; {}", found_list()),
                });
            }
            let mut camera = Camera::with_backend(
                CameraIndex::Index(index),
                requested,
                ApiBackend::Video4Linux,
            )
            .map_err(open_error)?;
            camera.open_stream().map_err(open_error)?;
            let format = camera.camera_format();
            tracing::info!(
                "{device}: {} {}x{} at {} fps",
                format.format(),
                format.width(),
                format.height(),
                format.frame_rate()
            );
            Ok(V4l2Source {
                camera,
                device,
                format,
                seq: 0,
                last: None,
            })
        }
    }

    impl FrameSource for V4l2Source {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            let buffer = self.camera.frame().map_err(|e| CameraError::Device {
                device: self.device.clone(),
                reason: format!("reading a frame failed: {e}"),
            })?;
            let now = Instant::now();
            let (w, h) = (buffer.resolution().width(), buffer.resolution().height());
            let data = buffer.buffer();
            let mut rgb = Vec::new();
            let (w, h) = match buffer.source_frame_format() {
                FrameFormat::MJPEG => jpeg_to_rgb(data, &mut rgb)?,
                FrameFormat::YUYV => {
                    yuyv_to_rgb(data, w, h, w * 2, YuvColor::BT601_LIMITED, &mut rgb)?;
                    (w, h)
                }
                FrameFormat::GRAY => {
                    rgb = data.iter().flat_map(|&g| [g, g, g]).collect();
                    (w, h)
                }
                FrameFormat::RAWRGB => {
                    rgb = data.to_vec();
                    (w, h)
                }
                FrameFormat::RAWBGR => {
                    rgb = data
                        .chunks_exact(3)
                        .flat_map(|p| [p[2], p[1], p[0]])
                        .collect();
                    (w, h)
                }
                other => {
                    return Err(CameraError::Unsupported {
                        what: self.device.clone(),
                        reason: format!("pixel format {other} (ask for format=mjpeg or yuyv)"),
                    });
                }
            };
            if rgb.len() != w as usize * h as usize * 3 {
                return Err(CameraError::decode(
                    self.device.clone(),
                    format!("a {w}x{h} frame arrived with {} bytes", data.len()),
                ));
            }
            let mut frame = Frame::new(rgb, w, h, self.seq);
            if let Some(ts) = buffer.capture_timestamp() {
                frame.wall = SystemTime::UNIX_EPOCH + ts;
            }
            // nokhwa does not pass on V4L2's sequence numbers: estimate drops from gaps.
            let period = Duration::from_secs_f64(1.0 / self.format.frame_rate().max(1) as f64);
            if let Some(last) = self.last {
                let gap = now.duration_since(last).as_secs_f64() / period.as_secs_f64();
                frame.dropped_before = (gap.round() as u64).saturating_sub(1);
            }
            self.last = Some(now);
            self.seq += 1;
            Ok(Some(frame))
        }

        fn info(&self) -> SourceInfo {
            SourceInfo {
                kind: "v4l2",
                description: format!("{} ({})", self.device, self.camera.info().human_name()),
                size: Some((self.format.width(), self.format.height())),
                fps: Some(self.format.frame_rate() as f64),
                live: true,
            }
        }
    }
}

#[cfg(not(feature = "v4l2"))]
mod imp {
    use super::*;
    use crate::frame::{Frame, FrameSource, SourceInfo};

    fn not_built() -> CameraError {
        CameraError::NotBuilt(
            "this dinoedge was built without V4L2 camera support; rebuild with \
             `cargo build --release --features camera` (needs libclang: `apt install libclang-dev`), \
             or use csi://, a file or synthetic://"
                .into(),
        )
    }

    /// The V4L2 cameras on this machine (this build has no V4L2 support: an error).
    pub fn list_cameras() -> Result<Vec<CameraDescription>> {
        Err(not_built())
    }

    /// A V4L2 camera (this build has no V4L2 support).
    pub struct V4l2Source(());

    impl V4l2Source {
        /// Open a camera: in this build, an error saying how to get V4L2 support.
        pub fn open(_options: &V4l2Options) -> Result<Self> {
            Err(not_built())
        }
    }

    impl FrameSource for V4l2Source {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            Err(not_built())
        }
        fn info(&self) -> SourceInfo {
            SourceInfo {
                kind: "v4l2",
                description: "V4L2 (not in this build)".into(),
                size: None,
                fps: None,
                live: true,
            }
        }
    }
}

pub use imp::{V4l2Source, list_cameras};

/// Whether this build can open V4L2 cameras.
pub const V4L2_BUILT: bool = cfg!(feature = "v4l2");
