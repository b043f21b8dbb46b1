//! USB/UVC and other V4L2 cameras (cargo feature `v4l2`, on by default).
//!
//! The device is driven with V4L2's own ioctls through `moq-v4l` (the `v4l` crate with the
//! kernel's `videodev2.h` bindings checked in, so a build needs no libclang): memory-mapped
//! buffers, the camera's sequence numbers for dropped frames. dinoedge decodes the buffers
//! itself (MJPEG with zune-jpeg, YUYV with yuvutils-rs), so a build has one JPEG decoder.

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

/// The device node for `/dev/videoN`, `N` or any other path (`/dev/v4l/by-id/…`, which
/// stays the same camera across reboots and ports).
pub fn device_path(device: &str) -> Result<String> {
    if device.is_empty() {
        return Err(CameraError::bad_uri(
            "v4l2://",
            "name the device: v4l2:///dev/video0, v4l2://0 or a /dev/v4l/by-id/ path (see `dinoedge cameras`)",
        ));
    }
    Ok(match device.parse::<u32>() {
        Ok(n) => format!("/dev/video{n}"),
        Err(_) => device.to_owned(),
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

/// The size asked of a camera when the URI names none.
pub const DEFAULT_SIZE: (u32, u32) = (1280, 720);
/// The frame rate asked of a camera when the URI names none.
pub const DEFAULT_FPS: u32 = 30;

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPG",
            PixelFormat::Yuyv => "YUYV",
        }
    }
}

/// The formats dinoedge decodes, in the order it prefers them when the URI names none.
const DECODED: [&str; 6] = ["MJPG", "JPEG", "YUYV", "GREY", "RGB3", "BGR3"];

/// Picks the mode to open from what the camera offers: the requested format (else MJPEG, else
/// the first other format dinoedge decodes), then the size nearest the requested one (else
/// 1280x720), then the frame rate nearest the requested one (else 30). `None` when the camera
/// offers nothing dinoedge can decode, or not the requested format.
pub fn choose_mode(modes: &[CameraMode], options: &V4l2Options) -> Option<CameraMode> {
    let format = match options.format {
        Some(f) => f.fourcc(),
        None => *DECODED
            .iter()
            .find(|f| modes.iter().any(|m| m.format == **f))?,
    };
    let (w, h) = (
        options.width.unwrap_or(DEFAULT_SIZE.0) as i64,
        options.height.unwrap_or(DEFAULT_SIZE.1) as i64,
    );
    let fps = options.fps.unwrap_or(DEFAULT_FPS) as i64;
    modes
        .iter()
        .filter(|m| m.format == format || (format == "MJPG" && m.format == "JPEG"))
        .min_by_key(|m| {
            let size = (m.width as i64 - w).abs() + (m.height as i64 - h).abs();
            (size, (m.fps as i64 - fps).abs(), std::cmp::Reverse(m.fps))
        })
        .cloned()
}

#[cfg(all(feature = "v4l2", target_os = "linux"))]
mod imp {
    use std::io;
    use std::time::Duration;

    use moq_v4l::buffer::Type;
    use moq_v4l::frameinterval::FrameIntervalEnum;
    use moq_v4l::framesize::FrameSizeEnum;
    use moq_v4l::io::traits::CaptureStream;
    use moq_v4l::prelude::{Device, MmapStream};
    use moq_v4l::video::Capture;
    use moq_v4l::video::capture::Parameters;
    use moq_v4l::{Format, FourCC, Fraction};

    use super::*;
    use crate::decode::{YuvColor, jpeg_to_rgb, yuyv_to_rgb};
    use crate::frame::{Frame, FrameSource, SourceInfo};

    /// How long a read waits for a frame before it calls the camera gone.
    const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// What an ioctl's failure means to the user.
    fn explain(e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(libc::EBUSY) => format!("{e}: another program is using the camera"),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                format!("{e}: add yourself to the `video` group (`sudo usermod -aG video $USER`)")
            }
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                format!("{e}: not a V4L2 video capture device")
            }
            Some(libc::ENODEV) | Some(libc::ENXIO) => format!("{e}: the camera was unplugged"),
            _ => e.to_string(),
        }
    }

    fn fps_of(interval: Fraction) -> u32 {
        if interval.numerator == 0 {
            0
        } else {
            (interval.denominator as f64 / interval.numerator as f64).round() as u32
        }
    }

    /// Every (format, size, rate) the device offers; sizes and rates given as ranges count
    /// their two ends.
    fn modes_of(dev: &Device) -> io::Result<Vec<CameraMode>> {
        let mut modes = Vec::new();
        for desc in dev.enum_formats()? {
            let format = desc.fourcc.str().unwrap_or("????").to_owned();
            let sizes: Vec<(u32, u32)> = match dev.enum_framesizes(desc.fourcc) {
                Ok(sizes) => sizes
                    .into_iter()
                    .flat_map(|s| match s.size {
                        FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
                        FrameSizeEnum::Stepwise(s) => {
                            vec![(s.min_width, s.min_height), (s.max_width, s.max_height)]
                        }
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            for (width, height) in sizes {
                let rates: Vec<u32> = match dev.enum_frameintervals(desc.fourcc, width, height) {
                    Ok(list) => list
                        .into_iter()
                        .flat_map(|i| match i.interval {
                            FrameIntervalEnum::Discrete(f) => vec![fps_of(f)],
                            FrameIntervalEnum::Stepwise(s) => vec![fps_of(s.min), fps_of(s.max)],
                        })
                        .collect(),
                    Err(_) => vec![0],
                };
                for fps in rates {
                    modes.push(CameraMode {
                        format: format.clone(),
                        width,
                        height,
                        fps,
                    });
                }
            }
        }
        Ok(modes)
    }

    /// The `/dev/videoN` nodes, in number order.
    fn video_nodes() -> Vec<String> {
        let mut nodes: Vec<u32> = std::fs::read_dir("/dev")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("video")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort_unstable();
        nodes
            .into_iter()
            .map(|n| format!("/dev/video{n}"))
            .collect()
    }

    /// The V4L2 capture devices on this machine, with their modes. Nodes that capture no
    /// frames (a UVC camera's metadata node) are left out; one that cannot be opened (busy,
    /// no permission) is listed with the reason.
    pub fn list_cameras() -> Result<Vec<CameraDescription>> {
        let mut out = Vec::new();
        for path in video_nodes() {
            let uri = format!("v4l2://{path}");
            let dev = match Device::with_path(&path) {
                Ok(dev) => dev,
                Err(e) => {
                    out.push(CameraDescription {
                        uri,
                        name: String::new(),
                        modes: Vec::new(),
                        error: Some(explain(&e)),
                    });
                    continue;
                }
            };
            let name = dev.query_caps().map(|c| c.card).unwrap_or_default();
            match modes_of(&dev) {
                Ok(modes) if modes.is_empty() => {}
                // a node that captures no video (a UVC camera's metadata node)
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY)) => {}
                Ok(modes) => out.push(CameraDescription {
                    uri,
                    name,
                    modes,
                    error: None,
                }),
                Err(e) => out.push(CameraDescription {
                    uri,
                    name,
                    modes: Vec::new(),
                    error: Some(explain(&e)),
                }),
            }
        }
        Ok(out)
    }

    /// An open V4L2 camera, streaming through memory-mapped buffers.
    pub struct V4l2Source {
        stream: MmapStream<'static>,
        device: String,
        name: String,
        format: Format,
        fps: u32,
        seq: u64,
        last_sequence: Option<u32>,
    }

    impl V4l2Source {
        /// Open and start the camera. A device that does not exist (or cannot be opened)
        /// gives an error that lists the cameras that were found.
        pub fn open(options: &V4l2Options) -> Result<Self> {
            let device = device_path(&options.device)?;
            let fail = |reason: String| CameraError::Device {
                device: device.clone(),
                reason,
            };
            if !std::path::Path::new(&device).exists() {
                return Err(fail(format!("no such device; {}", found_list())));
            }
            let dev = Device::with_path(&device).map_err(|e| {
                fail(format!(
                    "cannot open it ({}); {}",
                    explain(&e),
                    found_list()
                ))
            })?;
            let name = dev.query_caps().map(|c| c.card).unwrap_or_default();
            let modes = modes_of(&dev).map_err(|e| {
                fail(format!(
                    "cannot read its formats ({}); {}",
                    explain(&e),
                    found_list()
                ))
            })?;
            if modes.is_empty() {
                return Err(fail(format!(
                    "it offers no video formats: not a V4L2 video capture device; {}",
                    found_list()
                )));
            }
            let mode = choose_mode(&modes, options).ok_or_else(|| {
                let offered: Vec<&str> = modes.iter().map(|m| m.format.as_str()).collect();
                let mut offered = offered;
                offered.dedup();
                fail(match options.format {
                    Some(f) => format!(
                        "it does not offer {} (it offers {})",
                        f.fourcc(),
                        offered.join(", ")
                    ),
                    None => format!(
                        "it offers no format dinoedge decodes (it offers {}; dinoedge reads {})",
                        offered.join(", "),
                        DECODED.join(", ")
                    ),
                })
            })?;
            let fourcc = FourCC::new(&pad4(&mode.format));
            let format = dev
                .set_format(&Format::new(mode.width, mode.height, fourcc))
                .map_err(|e| {
                    fail(format!(
                        "setting {} {}x{} at {} fps failed ({})",
                        mode.format,
                        mode.width,
                        mode.height,
                        mode.fps,
                        explain(&e)
                    ))
                })?;
            let fps = if mode.fps > 0 {
                match dev.set_params(&Parameters::with_fps(mode.fps)) {
                    Ok(p) => fps_of(p.interval),
                    Err(e) => {
                        tracing::warn!("{device}: cannot set {} fps ({e})", mode.fps);
                        mode.fps
                    }
                }
            } else {
                0
            };
            let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, 4)
                .map_err(|e| fail(format!("cannot start streaming ({})", explain(&e))))?;
            stream.set_timeout(FRAME_TIMEOUT);
            tracing::info!(
                "{device}: {} {}x{} at {fps} fps",
                format.fourcc,
                format.width,
                format.height
            );
            Ok(V4l2Source {
                stream,
                device,
                name,
                format,
                fps,
                seq: 0,
                last_sequence: None,
            })
        }
    }

    /// One buffer as RGB, by the format the camera was set to.
    fn decode(format: &Format, device: &str, data: &[u8]) -> Result<(Vec<u8>, u32, u32)> {
        {
            let (w, h) = (format.width, format.height);
            let pixels = w as usize * h as usize;
            let short = |need: usize| {
                CameraError::decode(
                    device.to_owned(),
                    format!(
                        "a {w}x{h} frame arrived with {} bytes (needs {need})",
                        data.len()
                    ),
                )
            };
            let mut rgb = Vec::new();
            match &format.fourcc.repr {
                b"MJPG" | b"JPEG" => {
                    let (w, h) = jpeg_to_rgb(data, &mut rgb)?;
                    return Ok((rgb, w, h));
                }
                b"YUYV" => {
                    let stride = format.stride.max(w * 2);
                    yuyv_to_rgb(data, w, h, stride, YuvColor::BT601_LIMITED, &mut rgb)?;
                }
                b"GREY" => {
                    let g = data.get(..pixels).ok_or_else(|| short(pixels))?;
                    rgb = g.iter().flat_map(|&g| [g, g, g]).collect();
                }
                b"RGB3" => {
                    rgb = data
                        .get(..pixels * 3)
                        .ok_or_else(|| short(pixels * 3))?
                        .to_vec()
                }
                b"BGR3" => {
                    let bgr = data.get(..pixels * 3).ok_or_else(|| short(pixels * 3))?;
                    rgb = bgr
                        .chunks_exact(3)
                        .flat_map(|p| [p[2], p[1], p[0]])
                        .collect();
                }
                _ => {
                    return Err(CameraError::Unsupported {
                        what: device.to_owned(),
                        reason: format!(
                            "pixel format {} (ask for format=mjpeg or yuyv)",
                            format.fourcc
                        ),
                    });
                }
            }
            Ok((rgb, w, h))
        }
    }

    /// A format name as the four bytes V4L2 wants (padded with spaces).
    fn pad4(name: &str) -> [u8; 4] {
        let mut code = *b"    ";
        for (c, b) in code.iter_mut().zip(name.bytes()) {
            *c = b;
        }
        code
    }

    impl FrameSource for V4l2Source {
        fn next_frame(&mut self) -> Result<Option<Frame>> {
            let (buffer, meta) = self.stream.next().map_err(|e| CameraError::Device {
                device: self.device.clone(),
                reason: if e.kind() == io::ErrorKind::TimedOut {
                    format!("no frame for {} s", FRAME_TIMEOUT.as_secs())
                } else {
                    format!("reading a frame failed ({})", explain(&e))
                },
            })?;
            // Some drivers leave `bytesused` at 0: then the whole buffer is the frame.
            let used = match meta.bytesused as usize {
                0 => buffer.len(),
                n => n.min(buffer.len()),
            };
            let data = &buffer[..used];
            let sequence = meta.sequence;
            let (rgb, w, h) = decode(&self.format, &self.device, data)?;
            if rgb.len() != w as usize * h as usize * 3 {
                return Err(CameraError::decode(
                    self.device.clone(),
                    format!("a {w}x{h} frame arrived with {} bytes", data.len()),
                ));
            }
            let mut frame = Frame::new(rgb, w, h, self.seq);
            // V4L2 numbers the frames it captured: a gap is frames the driver dropped.
            if let Some(last) = self.last_sequence {
                frame.dropped_before = sequence.wrapping_sub(last).saturating_sub(1) as u64;
            }
            self.last_sequence = Some(sequence);
            self.seq += 1;
            Ok(Some(frame))
        }

        fn info(&self) -> SourceInfo {
            SourceInfo {
                kind: "v4l2",
                description: format!("{} ({})", self.device, self.name),
                size: Some((self.format.width, self.format.height)),
                fps: (self.fps > 0).then_some(self.fps as f64),
                live: true,
            }
        }
    }
}

#[cfg(not(all(feature = "v4l2", target_os = "linux")))]
mod imp {
    use super::*;
    use crate::frame::{Frame, FrameSource, SourceInfo};

    fn not_built() -> CameraError {
        CameraError::NotBuilt(
            "this dinoedge was built without V4L2 camera support (`--no-default-features`, or \
             not Linux); rebuild with `cargo build --release --features camera`, \
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
pub const V4L2_BUILT: bool = cfg!(all(feature = "v4l2", target_os = "linux"));

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(format: &str, width: u32, height: u32, fps: u32) -> CameraMode {
        CameraMode {
            format: format.into(),
            width,
            height,
            fps,
        }
    }

    fn webcam() -> Vec<CameraMode> {
        vec![
            mode("YUYV", 640, 480, 30),
            mode("YUYV", 1280, 720, 10),
            mode("MJPG", 640, 480, 30),
            mode("MJPG", 1280, 720, 30),
            mode("MJPG", 1280, 720, 15),
            mode("MJPG", 1920, 1080, 30),
        ]
    }

    #[test]
    fn without_a_request_mjpeg_at_720p_30() {
        let chosen = choose_mode(&webcam(), &V4l2Options::default()).unwrap();
        assert_eq!(chosen, mode("MJPG", 1280, 720, 30));
    }

    #[test]
    fn the_nearest_size_and_rate_of_the_asked_format() {
        let ask = V4l2Options {
            width: Some(800),
            height: Some(600),
            fps: Some(60),
            format: Some(PixelFormat::Yuyv),
            ..Default::default()
        };
        assert_eq!(
            choose_mode(&webcam(), &ask),
            Some(mode("YUYV", 640, 480, 30))
        );
        let ask = V4l2Options {
            fps: Some(15),
            ..Default::default()
        };
        assert_eq!(
            choose_mode(&webcam(), &ask),
            Some(mode("MJPG", 1280, 720, 15))
        );
    }

    #[test]
    fn a_format_the_camera_lacks_is_none() {
        let yuyv_only = vec![mode("YUYV", 640, 480, 30)];
        let ask = V4l2Options {
            format: Some(PixelFormat::Mjpeg),
            ..Default::default()
        };
        assert_eq!(choose_mode(&yuyv_only, &ask), None);
        // with no request, what it has that dinoedge decodes
        assert_eq!(
            choose_mode(&yuyv_only, &V4l2Options::default()),
            Some(mode("YUYV", 640, 480, 30))
        );
        // nothing dinoedge decodes
        let nv12 = vec![mode("NV12", 640, 480, 30), mode("H264", 640, 480, 30)];
        assert_eq!(choose_mode(&nv12, &V4l2Options::default()), None);
    }

    #[test]
    fn device_paths() {
        assert_eq!(device_path("2").unwrap(), "/dev/video2");
        assert_eq!(device_path("/dev/video0").unwrap(), "/dev/video0");
        let by_id = "/dev/v4l/by-id/usb-046d_C920-video-index0";
        assert_eq!(device_path(by_id).unwrap(), by_id);
        assert!(device_path("").is_err());
    }
}
