//! MCAP recordings as a source: the image topic of a recorded run (a robot's, or one
//! `dinoedge run` wrote), read front to back as fast as the consumer takes frames.
//!
//! Understood messages: Foxglove's `foxglove.CompressedImage` and `foxglove.RawImage`
//! (protobuf, as Foxglove and `dinoedge` write them) and ROS 2's
//! `sensor_msgs/msg/CompressedImage` and `sensor_msgs/msg/Image` (CDR, as `ros2 bag record`
//! writes them). Frames carry the message's own timestamp as their wall-clock time (so a
//! recording made from this one keeps the original times) and the time since the first
//! message as their media time. A calibration topic (`sensor_msgs/msg/CameraInfo`,
//! `foxglove.CameraCalibration`) gives the frames after it their camera's intrinsics.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foxglove::Decode;
use foxglove::schemas::{CompressedImage, RawImage};
use mcap::records::Record;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};

/// The largest record or chunk (compressed or decompressed) a recording may declare: 256 MiB
/// (dinoedge writes chunks of ~1 MiB; a camera frame is a few MiB at most).
const MAX_RECORD: usize = 256 << 20;

use crate::decode::{YuvColor, jpeg_to_rgb, yuyv_to_rgb};
use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};
use crate::intrinsics::{Intrinsics, Pinhole};

/// The message types this source turns into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    FoxgloveCompressed,
    FoxgloveRaw,
    RosCompressed,
    RosRaw,
}

impl Kind {
    fn of(schema: &str, message_encoding: &str) -> Option<Kind> {
        match (schema, message_encoding) {
            ("foxglove.CompressedImage", "protobuf") => Some(Kind::FoxgloveCompressed),
            ("foxglove.RawImage", "protobuf") => Some(Kind::FoxgloveRaw),
            ("sensor_msgs/msg/CompressedImage", "cdr") => Some(Kind::RosCompressed),
            ("sensor_msgs/msg/Image", "cdr") => Some(Kind::RosRaw),
            _ => None,
        }
    }
}

/// Frames from an image topic of an MCAP file.
pub struct McapSource {
    path: PathBuf,
    file: BufReader<File>,
    reader: LinearReader,
    /// `topic=` asked for, if any.
    topic: Option<String>,
    schemas: HashMap<u16, String>,
    /// Every channel seen: id → (topic, schema name, message encoding).
    channels: HashMap<u16, (String, String, String)>,
    chosen: Option<(u16, Kind)>,
    seq: u64,
    first_log_time: Option<u64>,
    ended: bool,
    rgb: Vec<u8>,
    /// The newest calibration read, given to every frame after it.
    intrinsics: Option<Intrinsics>,
}

impl McapSource {
    /// Open `path`; frames come from `topic`, or when `None` from the first image topic
    /// (one whose name mentions `camera` or `image` first).
    pub fn open(path: &Path, topic: Option<String>) -> Result<McapSource> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CameraError::NotFound(path.to_owned()),
            _ => CameraError::io(path.display().to_string(), e),
        })?;
        Ok(McapSource {
            path: path.to_owned(),
            file: BufReader::with_capacity(1 << 20, file),
            // a record or chunk that declares more than MAX_RECORD (compressed or not) is an
            // error, not an allocation: a damaged length must not take the memory
            reader: LinearReader::new_with_options(
                LinearReaderOptions::default()
                    .with_prevalidate_chunk_crcs(true)
                    .with_record_length_limit(MAX_RECORD),
            ),
            topic,
            schemas: HashMap::new(),
            channels: HashMap::new(),
            chosen: None,
            seq: 0,
            first_log_time: None,
            ended: false,
            rgb: Vec::new(),
            intrinsics: None,
        })
    }

    fn what(&self) -> String {
        self.path.display().to_string()
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> CameraError {
        CameraError::Decode {
            what: format!("MCAP recording {}", self.what()),
            reason: reason.to_string(),
        }
    }

    /// What the file holds, for the error when no image topic is found.
    fn topics(&self) -> String {
        let mut t: Vec<String> = self
            .channels
            .values()
            .map(|(topic, schema, enc)| format!("{topic} ({schema}, {enc})"))
            .collect();
        t.sort();
        if t.is_empty() {
            "no channels".into()
        } else {
            t.join(", ")
        }
    }

    /// Consider a new channel as the one to read.
    fn consider(&mut self, id: u16) {
        if self.chosen.is_some() {
            return;
        }
        let Some((topic, schema, enc)) = self.channels.get(&id) else {
            return;
        };
        let kind = Kind::of(schema, enc);
        match (&self.topic, kind) {
            (Some(want), Some(k)) if want == topic => self.chosen = Some((id, k)),
            (None, Some(k)) => {
                // the first image topic; one named like a camera wins if it comes in the
                // same breath (channels are usually all written up front)
                self.chosen = Some((id, k));
                let camera_like = |t: &str| t.contains("camera") || t.contains("image");
                if !camera_like(topic)
                    && let Some((&other, _)) = self
                        .channels
                        .iter()
                        .find(|(_, (t, s, e))| camera_like(t) && Kind::of(s, e).is_some())
                {
                    let (_, s, e) = &self.channels[&other];
                    self.chosen = Kind::of(s, e).map(|k| (other, k));
                }
            }
            _ => {}
        }
    }

    fn decode(&mut self, kind: Kind, data: &[u8]) -> Result<(u32, u32, Option<u64>)> {
        let what = format!("{} message {}", self.what(), self.seq);
        let bad = |reason: String| CameraError::Decode {
            what: what.clone(),
            reason,
        };
        let (w, h, stamp) = match kind {
            Kind::FoxgloveCompressed => {
                let m = CompressedImage::decode(data).map_err(|e| bad(e.to_string()))?;
                let (w, h) = decode_compressed(&m.data, &mut self.rgb).map_err(bad)?;
                (w, h, m.timestamp.map(|t| t.total_nanos()))
            }
            Kind::FoxgloveRaw => {
                let m = RawImage::decode(data).map_err(|e| bad(e.to_string()))?;
                raw_to_rgb(
                    &m.encoding,
                    m.width,
                    m.height,
                    m.step,
                    &m.data,
                    &mut self.rgb,
                )
                .map_err(bad)?;
                (m.width, m.height, m.timestamp.map(|t| t.total_nanos()))
            }
            Kind::RosCompressed => {
                let mut c = Cdr::new(data).map_err(bad)?;
                let stamp = c.header().map_err(bad)?;
                let _format = c.string().map_err(bad)?;
                let bytes = c.bytes().map_err(bad)?;
                let (w, h) = decode_compressed(bytes, &mut self.rgb).map_err(bad)?;
                (w, h, Some(stamp))
            }
            Kind::RosRaw => {
                let mut c = Cdr::new(data).map_err(bad)?;
                let stamp = c.header().map_err(bad)?;
                let height = c.u32().map_err(bad)?;
                let width = c.u32().map_err(bad)?;
                let encoding = c.string().map_err(bad)?;
                let _big_endian = c.u8().map_err(bad)?;
                let step = c.u32().map_err(bad)?;
                let bytes = c.bytes().map_err(bad)?;
                raw_to_rgb(&encoding, width, height, step, bytes, &mut self.rgb).map_err(bad)?;
                (width, height, Some(stamp))
            }
        };
        Ok((w, h, stamp))
    }
}

/// A calibration message (ROS 2 `CameraInfo`, Foxglove `CameraCalibration`) on a channel
/// `(topic, schema, encoding)` read into intrinsics; `None` for other messages. One that
/// cannot be read is an error the caller warns about (the images are still good).
fn calibration(
    (_, schema, enc): &(String, String, String),
    data: &[u8],
) -> Option<std::result::Result<Intrinsics, String>> {
    Some(match (schema.as_str(), enc.as_str()) {
        ("sensor_msgs/msg/CameraInfo", "cdr") => ros_camera_info(data),
        ("foxglove.CameraCalibration", "protobuf") => {
            foxglove::schemas::CameraCalibration::decode(data)
                .map_err(|e| e.to_string())
                .and_then(|m| pinhole_of(&m.k, m.width, m.height))
        }
        _ => return None,
    })
}

/// Intrinsics from a row-major 3x3 camera matrix `k` for `width`×`height` pictures.
fn pinhole_of(k: &[f64], width: u32, height: u32) -> std::result::Result<Intrinsics, String> {
    let [fx, _, cx, _, fy, cy, ..] = k[..] else {
        return Err(format!("a camera matrix of {} values, not 9", k.len()));
    };
    if !(fx > 0.0
        && fy > 0.0
        && fx.is_finite()
        && fy.is_finite()
        && cx.is_finite()
        && cy.is_finite())
    {
        return Err(format!(
            "no usable camera matrix (fx {fx}, fy {fy}): an uncalibrated camera?"
        ));
    }
    Ok(Intrinsics::Pinhole {
        k: Pinhole { fx, fy, cx, cy },
        size: (width > 0 && height > 0).then_some((width, height)),
    })
}

/// `sensor_msgs/msg/CameraInfo` (CDR): its size and camera matrix `k`.
fn ros_camera_info(data: &[u8]) -> std::result::Result<Intrinsics, String> {
    let mut c = Cdr::new(data)?;
    c.header()?;
    let height = c.u32()?;
    let width = c.u32()?;
    let _distortion_model = c.string()?;
    let n = c.u32()? as usize;
    for _ in 0..n {
        c.f64()?;
    }
    let k = (0..9)
        .map(|_| c.f64())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    pinhole_of(&k, width, height)
}

/// JPEG or PNG bytes (told apart by their magic) to RGB8.
fn decode_compressed(data: &[u8], out: &mut Vec<u8>) -> std::result::Result<(u32, u32), String> {
    if data.starts_with(&[0xFF, 0xD8]) {
        jpeg_to_rgb(data, out).map_err(|e| e.to_string())
    } else {
        let img = image::load_from_memory(data)
            .map_err(|e| format!("neither JPEG nor a known image format: {e}"))?
            .into_rgb8();
        let (w, h) = img.dimensions();
        *out = img.into_raw();
        Ok((w, h))
    }
}

/// Raw pixels in a ROS/Foxglove encoding to RGB8.
fn raw_to_rgb(
    encoding: &str,
    w: u32,
    h: u32,
    step: u32,
    data: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let (wu, hu, step) = (w as usize, h as usize, step as usize);
    let bpp = match encoding {
        "rgb8" | "bgr8" | "8UC3" => 3,
        "rgba8" | "bgra8" | "8UC4" => 4,
        "mono8" | "8UC1" => 1,
        "mono16" | "16UC1" => 2,
        "yuyv" | "yuv422_yuy2" => 2,
        other => {
            return Err(format!(
                "raw image encoding `{other}` (rgb8, bgr8, rgba8, bgra8, mono8, mono16, yuyv are read)"
            ));
        }
    };
    if w == 0 || h == 0 || step < wu * bpp || data.len() < step * (hu - 1) + wu * bpp {
        return Err(format!(
            "{w}x{h} {encoding} with step {step} needs {} bytes, the message has {}",
            step * hu,
            data.len()
        ));
    }
    if bpp == 2 && encoding.starts_with('y') {
        return yuyv_to_rgb(data, w, h, step as u32, YuvColor::BT601_LIMITED, out)
            .map_err(|e| e.to_string());
    }
    out.clear();
    out.reserve(wu * hu * 3);
    for y in 0..hu {
        let row = &data[y * step..y * step + wu * bpp];
        for px in row.chunks_exact(bpp) {
            let rgb = match encoding {
                "rgb8" | "8UC3" | "rgba8" | "8UC4" => [px[0], px[1], px[2]],
                "bgr8" | "bgra8" => [px[2], px[1], px[0]],
                "mono8" | "8UC1" => [px[0]; 3],
                // 16-bit grey: the high byte (little-endian data)
                _ => [px[1]; 3],
            };
            out.extend_from_slice(&rgb);
        }
    }
    Ok(())
}

/// A reader of ROS 2 CDR (XCDR1) messages: a 4-byte encapsulation header, then fields
/// aligned to their size from the start of the payload.
struct Cdr<'a> {
    data: &'a [u8],
    pos: usize,
    little: bool,
}

impl<'a> Cdr<'a> {
    fn new(data: &'a [u8]) -> std::result::Result<Self, String> {
        if data.len() < 4 {
            return Err("CDR message shorter than its header".into());
        }
        let little = match data[1] {
            0x00 | 0x02 => false,
            0x01 | 0x03 => true,
            k => return Err(format!("CDR encapsulation kind {k} is not plain CDR")),
        };
        Ok(Cdr {
            data: &data[4..],
            pos: 0,
            little,
        })
    }

    fn take(&mut self, n: usize, align: usize) -> std::result::Result<&'a [u8], String> {
        self.pos = self.pos.div_ceil(align) * align;
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(format!(
                "CDR message ends at byte {} while reading {n} bytes at {}",
                self.data.len(),
                self.pos
            ));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1, 1)?[0])
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b: [u8; 4] = self.take(4, 4)?.try_into().expect("4 bytes");
        Ok(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn f64(&mut self) -> std::result::Result<f64, String> {
        let b: [u8; 8] = self.take(8, 8)?.try_into().expect("8 bytes");
        Ok(if self.little {
            f64::from_le_bytes(b)
        } else {
            f64::from_be_bytes(b)
        })
    }

    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n, 1)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let b = self.bytes()?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// `std_msgs/Header`: the stamp in nanoseconds (the frame id is skipped).
    fn header(&mut self) -> std::result::Result<u64, String> {
        let sec = self.u32()? as i32;
        let nsec = self.u32()?;
        self.string()?;
        Ok((sec.max(0) as u64) * 1_000_000_000 + nsec as u64)
    }
}

impl FrameSource for McapSource {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let event = match self.reader.next_event() {
                None => break,
                Some(Err(e)) => {
                    self.ended = true;
                    let reason = match e {
                        mcap::McapError::UnexpectedEof => {
                            "the file ends in the middle of a record (a recording that was cut off); the frames before were delivered".to_string()
                        }
                        e => e.to_string(),
                    };
                    return Err(CameraError::Truncated {
                        what: format!("MCAP recording {}", self.what()),
                        reason,
                    });
                }
                Some(Ok(ev)) => ev,
            };
            let message = match event {
                LinearReadEvent::ReadRequest(need) => {
                    let buf = self.reader.insert(need);
                    let n = match self.file.read(buf) {
                        Ok(n) => n,
                        Err(e) => {
                            self.ended = true;
                            return Err(CameraError::io(self.path.display().to_string(), e));
                        }
                    };
                    self.reader.notify_read(n);
                    continue;
                }
                LinearReadEvent::Record { opcode, data } => {
                    match mcap::parse_record(opcode, data) {
                        Ok(Record::Schema { header, .. }) => {
                            self.schemas.insert(header.id, header.name);
                            None
                        }
                        Ok(Record::Channel(c)) => {
                            let schema =
                                self.schemas.get(&c.schema_id).cloned().unwrap_or_default();
                            self.channels
                                .insert(c.id, (c.topic, schema, c.message_encoding));
                            self.consider(c.id);
                            None
                        }
                        Ok(Record::Message { header, data }) => match self.chosen {
                            Some((id, kind)) if id == header.channel_id => {
                                Some((kind, header.log_time, data.into_owned()))
                            }
                            _ => {
                                let channel = self.channels.get(&header.channel_id);
                                match channel.and_then(|c| calibration(c, &data)) {
                                    Some(Ok(i)) => self.intrinsics = Some(i),
                                    Some(Err(e)) => tracing::warn!(
                                        "{}: calibration on {} skipped: {e}",
                                        self.path.display(),
                                        channel.map(|c| c.0.as_str()).unwrap_or_default()
                                    ),
                                    None => {}
                                }
                                None
                            }
                        },
                        Ok(_) => None,
                        Err(e) => {
                            self.ended = true;
                            return Err(self.corrupt(e));
                        }
                    }
                }
            };
            let Some((kind, log_time, data)) = message else {
                continue;
            };
            let (w, h, stamp) = match self.decode(kind, &data) {
                Ok(x) => x,
                Err(e) => {
                    // one bad message: report it, the next call goes on
                    self.seq += 1;
                    return Err(e);
                }
            };
            let first = *self.first_log_time.get_or_insert(log_time);
            let nanos = stamp.filter(|&s| s > 0).unwrap_or(log_time);
            let frame = Frame {
                rgb: std::mem::take(&mut self.rgb),
                width: w,
                height: h,
                seq: self.seq,
                captured: Instant::now(),
                wall: UNIX_EPOCH + Duration::from_nanos(nanos),
                media_time: Some(Duration::from_nanos(log_time.saturating_sub(first))),
                dropped_before: 0,
                intrinsics: self.intrinsics,
            };
            self.seq += 1;
            return Ok(Some(frame));
        }
        self.ended = true;
        if self.seq == 0 {
            return Err(match &self.topic {
                Some(t) => CameraError::Unsupported {
                    what: format!("MCAP recording {}", self.what()),
                    reason: format!(
                        "topic: no messages on `{t}` that are images; the file has {}",
                        self.topics()
                    ),
                },
                None => CameraError::Unsupported {
                    what: format!("MCAP recording {}", self.what()),
                    reason: format!(
                        "content: no image topic (foxglove.CompressedImage/RawImage, sensor_msgs/msg/CompressedImage/Image); the file has {}",
                        self.topics()
                    ),
                },
            });
        }
        Ok(None)
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "mcap",
            description: match &self.topic {
                Some(t) => format!("{} topic {t}", self.what()),
                None => self.what(),
            },
            size: None,
            fps: None,
            live: false,
        }
    }
}

/// Wall-clock time as nanoseconds since the Unix epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sensor_msgs/msg/Image` in little-endian CDR, laid out by hand from the IDL.
    fn ros_image(w: u32, h: u32, encoding: &str, data: &[u8]) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0x00, 0x00];
        let mut body = Vec::new();
        let pad = |b: &mut Vec<u8>, a: usize| {
            while !b.len().is_multiple_of(a) {
                b.push(0);
            }
        };
        let string = |b: &mut Vec<u8>, s: &str| {
            pad(b, 4);
            b.extend((s.len() as u32 + 1).to_le_bytes());
            b.extend(s.as_bytes());
            b.push(0);
        };
        body.extend(7i32.to_le_bytes()); // stamp.sec
        body.extend(500u32.to_le_bytes()); // stamp.nanosec
        string(&mut body, "cam"); // frame_id
        pad(&mut body, 4);
        body.extend(h.to_le_bytes());
        body.extend(w.to_le_bytes());
        string(&mut body, encoding);
        body.push(0); // is_bigendian
        pad(&mut body, 4);
        body.extend((w * 3).to_le_bytes()); // step
        body.extend((data.len() as u32).to_le_bytes());
        body.extend(data);
        m.extend(body);
        m
    }

    /// A `sensor_msgs/msg/CameraInfo` in little-endian CDR up to its camera matrix.
    fn ros_camera_info_msg(w: u32, h: u32, k: [f64; 9]) -> Vec<u8> {
        let mut b = vec![0x00, 0x01, 0x00, 0x00];
        let pad = |b: &mut Vec<u8>, a: usize| {
            while !(b.len() - 4).is_multiple_of(a) {
                b.push(0);
            }
        };
        b.extend(7i32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(b"cam\0");
        b.extend(h.to_le_bytes());
        b.extend(w.to_le_bytes());
        b.extend(10u32.to_le_bytes());
        b.extend(b"plumb_bob\0");
        pad(&mut b, 4);
        b.extend(5u32.to_le_bytes());
        for d in [0.1f64, -0.2, 0.0, 0.0, 0.0] {
            pad(&mut b, 8);
            b.extend(d.to_le_bytes());
        }
        for v in k {
            pad(&mut b, 8);
            b.extend(v.to_le_bytes());
        }
        b
    }

    #[test]
    fn ros2_camera_info_gives_intrinsics() {
        let k = [600.0, 0.0, 319.5, 0.0, 610.0, 239.5, 0.0, 0.0, 1.0];
        let msg = ros_camera_info_msg(640, 480, k);
        let i = ros_camera_info(&msg).unwrap();
        let p = i.at(640, 480);
        assert_eq!((p.fx, p.fy, p.cx, p.cy), (600.0, 610.0, 319.5, 239.5));
        assert_eq!(i.at(320, 240).fx, 300.0);
        // cut short, and a camera that was never calibrated (all zeros): errors, not panics
        let e = ros_camera_info(&msg[..msg.len() - 20]).unwrap_err();
        assert!(e.contains("CDR message ends"), "{e}");
        let e = ros_camera_info(&ros_camera_info_msg(640, 480, [0.0; 9])).unwrap_err();
        assert!(e.contains("uncalibrated"), "{e}");
    }

    #[test]
    fn ros2_raw_images_decode() {
        let px = [10u8, 20, 30, 40, 50, 60];
        let msg = ros_image(2, 1, "bgr8", &px);
        let mut c = Cdr::new(&msg).unwrap();
        assert_eq!(c.header().unwrap(), 7_000_000_500);
        assert_eq!((c.u32().unwrap(), c.u32().unwrap()), (1, 2));
        assert_eq!(c.string().unwrap(), "bgr8");
        c.u8().unwrap();
        let step = c.u32().unwrap();
        let data = c.bytes().unwrap();
        let mut out = Vec::new();
        raw_to_rgb("bgr8", 2, 1, step, data, &mut out).unwrap();
        assert_eq!(out, [30, 20, 10, 60, 50, 40]);
        // cut short: an error naming where, not a panic
        let mut c = Cdr::new(&msg[..msg.len() - 3]).unwrap();
        c.header().unwrap();
        for _ in 0..2 {
            c.u32().unwrap();
        }
        c.string().unwrap();
        c.u8().unwrap();
        c.u32().unwrap();
        assert!(c.bytes().unwrap_err().contains("ends at byte"));
        assert!(raw_to_rgb("rgb8", 4, 4, 12, &px, &mut out).is_err());
        assert!(raw_to_rgb("bayer_rggb8", 2, 1, 6, &px, &mut out).is_err());
    }
}
