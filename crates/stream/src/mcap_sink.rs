//! MCAP recordings with Foxglove's well-known schemas, so a run opens in Foxglove (and in
//! any MCAP tool) and can be read back as a source (`dinoedge run --source run.mcap`).
//!
//! | topic | schema | when |
//! |---|---|---|
//! | `/camera/image` | `foxglove.CompressedImage` (JPEG) | every frame |
//! | `/dinoedge/result` | `foxglove.CompressedImage` (JPEG of the result view) | each new result |
//! | `/dinoedge/depth` | `foxglove.RawImage`, `32FC1`, metres | each new depth result |
//! | `/dinoedge/depth_relative` | `foxglove.RawImage`, `32FC1`, relative inverse depth (no unit) | each new result of a relative depth model |
//! | `/dinoedge/classes` | `foxglove.RawImage`, `mono8`, class ids | each new segmentation |
//! | `/dinoedge/stats` | `dinoedge.Stats` (JSON) | each new result |
//! | `/camera/calibration` | `foxglove.CameraCalibration` | every frame, when the intrinsics are known (`--intrinsics`, or the source's calibration) |
//! | `/dinoedge/points` | `foxglove.PointCloud` (x, y, z, red, green, blue, alpha; metres, camera optical frame) | each new metric depth result, when the intrinsics are known (`?points=stride:N`, default 4; `?points=off`) |
//!
//! Messages are logged at the frame's capture time (its own timestamp when it came from a
//! recording), so a recording of a recording keeps the original times.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dinoedge_camera::mcap::unix_nanos;
use dinoedge_camera::{Intrinsics, Pinhole};
use foxglove::Encode;
use foxglove::bytes::Bytes;
use foxglove::schemas::{CameraCalibration, CompressedImage, RawImage, Timestamp};
use mcap::records::MessageHeader;

use crate::points::{Points, point_cloud};
use crate::render::{View, jpeg, render};
use crate::result::{Analysed, Output};
use crate::sink::{Sink, chain, sink_err};
use crate::{Result, StreamError};

/// The JSON schema of `/dinoedge/stats`.
const STATS_SCHEMA: &str = r#"{"title":"dinoedge.Stats","type":"object","properties":{"seq":{"type":"integer"},"result_seq":{"type":"integer"},"backbone_ms":{"type":"number"},"head_ms":{"type":"number"},"latency_ms":{"type":"number"},"dropped_before":{"type":"integer"}}}"#;

/// Writes a run to an MCAP file; the file is complete and indexed once [`Sink::finish`] ran
/// (Ctrl-C included). A file cut short by SIGKILL or a power cut reads up to its last second:
/// every second the chunk is closed and the file flushed and synced (`mcap recover` rewrites
/// such a file whole).
pub struct McapSink {
    path: PathBuf,
    writer: Option<mcap::Writer<BufWriter<File>>>,
    /// topic → (channel id, messages so far)
    channels: HashMap<&'static str, (u16, u32)>,
    schemas: HashMap<&'static str, u16>,
    quality: u8,
    alpha: f32,
    /// The same file, to sync it to the disk after each flush (and to close it at its last
    /// whole chunk when a write fails).
    file: File,
    /// When the last chunk was closed and flushed.
    flushed: Instant,
    /// How often the chunk is closed, flushed and synced.
    flush_every: Duration,
    /// The file's length at the last successful flush: everything before it is whole records.
    whole_len: u64,
    /// How point clouds are decimated (when there are intrinsics and metric depth).
    points: Points,
    /// The camera's intrinsics as the user gave them (over what the frames carry).
    intrinsics: Option<Intrinsics>,
}

/// How often a recording's chunk is closed, flushed and synced, by default.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The end of an MCAP file with no summary section: a Data End record (opcode 0x0F, length 4,
/// no data CRC), a Footer (opcode 0x02, length 20: no summary, no summary offsets, no CRC) and
/// the closing magic. Readers then read the messages in order (the MCAP specification).
const MCAP_END_WITHOUT_SUMMARY: [u8; 50] = [
    0x0F, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // Data End
    0x02, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, // Footer
    0x89, b'M', b'C', b'A', b'P', b'0', b'\r', b'\n', // magic
];

impl McapSink {
    /// A new recording at `path`. An existing file is kept (an error) unless `overwrite`.
    pub fn create(path: &Path, overwrite: bool, alpha: f32) -> Result<McapSink> {
        let name = format!("mcap:{}", path.display());
        if path.exists() && !overwrite {
            return Err(sink_err(
                &name,
                "the file exists; choose another name or add ?overwrite (mcap:run.mcap?overwrite)",
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| sink_err(&name, chain(&e)))?;
        }
        let file = File::create(path).map_err(|e| sink_err(&name, chain(&e)))?;
        let sync = file.try_clone().map_err(|e| sink_err(&name, chain(&e)))?;
        let writer = mcap::WriteOptions::new()
            .compression(Some(mcap::Compression::Lz4))
            .profile("")
            .library(format!("dinoedge {}", env!("CARGO_PKG_VERSION")))
            .create(BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| sink_err(&name, chain(&e)))?;
        let mut sink = McapSink {
            path: path.to_owned(),
            writer: Some(writer),
            channels: HashMap::new(),
            schemas: HashMap::new(),
            quality: 85,
            alpha,
            file: sync,
            flushed: Instant::now(),
            flush_every: FLUSH_EVERY,
            whole_len: 0,
            points: Points::default(),
            intrinsics: None,
        };
        // the header on the disk: from here on the file can always be closed readable
        sink.flush().map_err(|e| sink.salvage(e))?;
        Ok(sink)
    }

    /// Close, flush and sync the chunk every `every` instead of every [`FLUSH_EVERY`] (what a
    /// SIGKILL or a power cut can lose; shorter means smaller chunks).
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every;
        self
    }

    /// Point clouds decimated as `points`, with the camera's `intrinsics` when given (else the
    /// frames' own, from a recording's calibration; without either, no point cloud).
    pub fn with_points(mut self, points: Points, intrinsics: Option<Intrinsics>) -> Self {
        self.points = points;
        self.intrinsics = intrinsics;
        self
    }

    /// Close the chunk, flush the file and sync it to the disk; note its whole length.
    fn flush(&mut self) -> Result<()> {
        let name = self.name();
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(|e| sink_err(&name, chain(&e)))?;
        }
        // on the disk too, so a power cut keeps what a SIGKILL keeps
        self.file
            .sync_data()
            .map_err(|e| sink_err(&name, chain(&e)))?;
        self.whole_len = self
            .file
            .metadata()
            .map_err(|e| sink_err(&name, chain(&e)))?
            .len();
        self.flushed = Instant::now();
        Ok(())
    }

    /// After a failed write (a full disk): drop what was written after the last whole chunk
    /// and end the file there, so it opens in any MCAP reader with every message up to that
    /// chunk. The error returned says so (or why not).
    fn salvage(&mut self, e: StreamError) -> StreamError {
        let Some(writer) = self.writer.take() else {
            return e;
        };
        let reason = match e {
            StreamError::Sink { reason, .. } => reason,
            other => other.to_string(),
        };
        // no summary is written; the buffered rest may or may not reach the file: cut below
        drop(writer.into_inner());
        let closed = (|| -> std::io::Result<()> {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = &self.file;
            f.set_len(self.whole_len)?;
            f.seek(SeekFrom::Start(self.whole_len))?;
            f.write_all(&MCAP_END_WITHOUT_SUMMARY)?;
            f.sync_data()
        })();
        self.err(match closed {
            Ok(()) => format!(
                "{reason}; the recording was closed at its last whole chunk (every message up \
                 to the last {:.0} s before the failure is readable)",
                self.flush_every.as_secs_f64().max(1.0)
            ),
            Err(e) => format!(
                "{reason}; closing the recording failed too ({e}): `mcap recover` reads what \
                 was written"
            ),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StreamError {
        sink_err(&self.name(), e)
    }

    /// Log `data` on `topic` (channel and schema added on first use).
    fn log(
        &mut self,
        topic: &'static str,
        schema: (&'static str, &str, &[u8]),
        encoding: &str,
        time: u64,
        data: &[u8],
    ) -> Result<()> {
        let name = self.name();
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| sink_err(&name, "already finished"))?;
        let (schema_name, schema_encoding, schema_data) = schema;
        let schema_id = match self.schemas.get(schema_name) {
            Some(&id) => id,
            None => {
                let id = writer
                    .add_schema(schema_name, schema_encoding, schema_data)
                    .map_err(|e| sink_err(&name, chain(&e)))?;
                self.schemas.insert(schema_name, id);
                id
            }
        };
        let (channel_id, sequence) = match self.channels.get_mut(topic) {
            Some((id, n)) => {
                *n += 1;
                (*id, *n)
            }
            None => {
                let id = writer
                    .add_channel(schema_id, topic, encoding, &BTreeMap::new())
                    .map_err(|e| sink_err(&name, chain(&e)))?;
                self.channels.insert(topic, (id, 0));
                (id, 0)
            }
        };
        writer
            .write_to_known_channel(
                &MessageHeader {
                    channel_id,
                    sequence,
                    log_time: time,
                    publish_time: time,
                },
                data,
            )
            .map_err(|e| sink_err(&name, chain(&e)))
    }

    fn log_foxglove<T: Encode>(&mut self, topic: &'static str, msg: &T, time: u64) -> Result<()> {
        let schema = T::get_schema().ok_or_else(|| self.err("message without a schema"))?;
        let mut buf = Vec::with_capacity(msg.encoded_len().unwrap_or(1024));
        msg.encode(&mut buf).map_err(|e| self.err(e))?;
        // schema names of the well-known types are static strings
        let schema_name: &'static str = match schema.name.as_str() {
            "foxglove.CompressedImage" => "foxglove.CompressedImage",
            "foxglove.RawImage" => "foxglove.RawImage",
            "foxglove.PointCloud" => "foxglove.PointCloud",
            "foxglove.CameraCalibration" => "foxglove.CameraCalibration",
            other => return Err(self.err(format!("unexpected schema {other}"))),
        };
        let data = schema.data.clone();
        self.log(
            topic,
            (schema_name, &schema.encoding, &data),
            &T::get_message_encoding(),
            time,
            &buf,
        )
    }
}

/// Foxglove's calibration message for a distortion-free pinhole camera `k` of `w`×`h` frames.
fn calibration(k: Pinhole, w: u32, h: u32, timestamp: Option<Timestamp>) -> CameraCalibration {
    CameraCalibration {
        timestamp,
        frame_id: "camera".into(),
        width: w,
        height: h,
        distortion_model: "plumb_bob".into(),
        d: vec![0.0; 5],
        k: vec![k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0],
        r: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p: vec![
            k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0,
        ],
    }
}

fn timestamp(nanos: u64) -> Timestamp {
    Timestamp::new(
        (nanos / 1_000_000_000) as u32,
        (nanos % 1_000_000_000) as u32,
    )
}

impl McapSink {
    /// One output's messages: the camera picture, the result view, depth or classes, stats.
    fn record(&mut self, out: &Output) -> Result<()> {
        let t = unix_nanos(out.frame.wall);
        let stamp = Some(timestamp(t));
        // the calibration before its image: a reader of this recording has it for the first
        // frame already
        let intrinsics = self.intrinsics.or(out.frame.intrinsics);
        let (w, h) = (out.frame.width, out.frame.height);
        let k = intrinsics.map(|i| i.at(w, h));
        if let Some(k) = k {
            self.log_foxglove("/camera/calibration", &calibration(k, w, h, stamp), t)?;
        }
        let camera = jpeg(&out.frame.to_image(), self.quality).map_err(|e| self.err(e))?;
        self.log_foxglove(
            "/camera/image",
            &CompressedImage {
                timestamp: stamp,
                frame_id: "camera".into(),
                data: Bytes::from(camera),
                format: "jpeg".into(),
            },
            t,
        )?;
        let Some(a) = out.result.as_deref().filter(|_| out.fresh) else {
            return Ok(());
        };
        if let (Some(k), Some((depth, false)), Points::Stride(n)) = (k, a.depth(), self.points) {
            let cloud = point_cloud(depth.view(), &out.frame, k, n, stamp);
            self.log_foxglove("/dinoedge/points", &cloud, t)?;
        }
        if !matches!(a.analysed, Analysed::Features(_)) {
            let pic = render(out, View::Result, self.alpha);
            let bytes = jpeg(&pic, self.quality).map_err(|e| self.err(e))?;
            self.log_foxglove(
                "/dinoedge/result",
                &CompressedImage {
                    timestamp: stamp,
                    frame_id: "camera".into(),
                    data: Bytes::from(bytes),
                    format: "jpeg".into(),
                },
                t,
            )?;
        }
        let depth = a.depth().map(|(d, relative)| match relative {
            false => ("/dinoedge/depth", d),
            true => ("/dinoedge/depth_relative", d),
        });
        if let Some((topic, d)) = depth {
            let (h, w) = d.dim();
            let mut data = vec![0u8; d.len() * 4];
            for (b, v) in data.chunks_exact_mut(4).zip(d.iter()) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            self.log_foxglove(
                topic,
                &RawImage {
                    timestamp: stamp,
                    frame_id: "camera".into(),
                    width: w as u32,
                    height: h as u32,
                    encoding: "32FC1".into(),
                    step: (w * 4) as u32,
                    data: Bytes::from(data),
                },
                t,
            )?;
        }
        if let Analysed::Seg(seg, _) = &a.analysed {
            let (h, w) = seg.labels.dim();
            let data: Vec<u8> = seg.labels.iter().copied().collect();
            self.log_foxglove(
                "/dinoedge/classes",
                &RawImage {
                    timestamp: stamp,
                    frame_id: "camera".into(),
                    width: w as u32,
                    height: h as u32,
                    encoding: "mono8".into(),
                    step: w as u32,
                    data: Bytes::from(data),
                },
                t,
            )?;
        }
        let stats = serde_json::json!({
            "seq": out.frame.seq,
            "result_seq": a.seq,
            "backbone_ms": a.backbone.as_secs_f64() * 1e3,
            "head_ms": a.head.as_secs_f64() * 1e3,
            "latency_ms": out.frame.captured.elapsed().as_secs_f64() * 1e3,
            "dropped_before": out.dropped_before,
        });
        let bytes = serde_json::to_vec(&stats).map_err(|e| self.err(e))?;
        self.log(
            "/dinoedge/stats",
            ("dinoedge.Stats", "jsonschema", STATS_SCHEMA.as_bytes()),
            "json",
            t,
            &bytes,
        )
    }
}

impl Sink for McapSink {
    fn name(&self) -> String {
        format!("mcap:{}", self.path.display())
    }

    /// Record `out`; at most every [`FLUSH_EVERY`] the chunk is closed and the file flushed and
    /// synced, so a recording cut by SIGKILL or a power cut loses at most the last second.
    fn write(&mut self, out: &Output) -> Result<()> {
        let written = self.record(out).and_then(|()| {
            if self.flushed.elapsed() >= self.flush_every {
                self.flush()
            } else {
                Ok(())
            }
        });
        written.map_err(|e| self.salvage(e))
    }

    fn finish(&mut self) -> Result<()> {
        // the last chunk on the disk first: if the summary then does not fit, the file is
        // closed after that chunk
        self.flush().map_err(|e| self.salvage(e))?;
        if let Some(w) = self.writer.as_mut() {
            let finished = w.finish().map_err(|e| self.err(chain(&e)));
            if let Err(e) = finished {
                return Err(self.salvage(e));
            }
        }
        if let Some(w) = self.writer.take() {
            use std::io::Write;
            w.into_inner().flush().map_err(|e| self.err(chain(&e)))?;
        }
        Ok(())
    }
}

impl Drop for McapSink {
    fn drop(&mut self) {
        // a sink dropped without finish (a failure elsewhere): still leave a readable file
        if let Some(mut w) = self.writer.take() {
            let _ = w.finish();
        }
    }
}
