//! Where results go. Each sink runs on its own thread; a sink that fails is reported and
//! closed while the others go on.

use std::io::Write;
use std::path::PathBuf;

use dinoedge_heads::output::{class_png, depth_color, depth_mm_png};
use dinoedge_heads::overlay::{blend, tile};
use dinoedge_heads::{Colormap, Palette};

use crate::pipeline::Output;
use crate::{Result, StreamError};

/// A consumer of results.
pub trait Sink: Send {
    /// A short name for messages (`files:out/`, `jsonl`).
    fn name(&self) -> String;
    /// Take one result.
    fn write(&mut self, out: &Output) -> Result<()>;
    /// Flush and close; called once after the last result.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

fn sink_err(name: &str, reason: impl std::fmt::Display) -> StreamError {
    StreamError::Sink {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Files per frame, numbered by the source's sequence number: `frame_000042_overlay.png`
/// and `_classes.png` for segmentation, `_depth_mm.png` (16-bit, mm), `_depth.npy` (m) and
/// `_depth.png` for depth, `_patches.npy` for features.
pub struct FileSink {
    dir: PathBuf,
    palette: Option<Palette>,
    written: u64,
}

impl FileSink {
    /// Files under `dir` (created); `palette` colours segmentation overlays.
    pub fn new(dir: PathBuf, palette: Option<Palette>) -> Result<FileSink> {
        std::fs::create_dir_all(&dir).map_err(|e| sink_err(&dir.display().to_string(), e))?;
        Ok(FileSink {
            dir,
            palette,
            written: 0,
        })
    }
}

impl Sink for FileSink {
    fn name(&self) -> String {
        format!("files:{}", self.dir.display())
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let name = self.name();
        let p = |s: &str| self.dir.join(format!("frame_{:06}_{s}", out.frame.seq));
        let img = out.frame.to_image();
        let save = |r: image::ImageResult<()>| r.map_err(|e| sink_err(&name, e));
        if let Some(seg) = &out.seg {
            save(class_png(seg.labels.view()).save(p("classes.png")))?;
            let palette = self
                .palette
                .clone()
                .unwrap_or_else(|| Palette::generic(256));
            let colour = palette.colorize(seg.labels.view());
            save(blend(&img, &colour, 0.5).save(p("overlay.png")))?;
        }
        if let Some(d) = &out.depth {
            save(depth_mm_png(d.view()).save(p("depth_mm.png")))?;
            ndarray_npy::write_npy(p("depth.npy"), d).map_err(|e| sink_err(&name, e))?;
            let (lo, hi) = d
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let colour = depth_color(d.view(), Colormap::Turbo, lo, hi);
            save(tile(&[img.clone(), colour], 2, 0).save(p("depth.png")))?;
        }
        if let Some(f) = &out.features {
            ndarray_npy::write_npy(p("patches.npy"), f.patches())
                .map_err(|e| sink_err(&name, e))?;
        }
        self.written += 1;
        Ok(())
    }
}

/// One JSON object per frame (timestamps, stage times, and a summary of the result) on a
/// writer, flushed per line.
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
    label: String,
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// JSON lines to `out`, named `label` in messages.
    pub fn new(out: W, label: &str) -> Self {
        JsonLinesSink {
            out,
            label: label.to_string(),
        }
    }
}

impl<W: Write + Send> Sink for JsonLinesSink<W> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let wall = out
            .frame
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut v = serde_json::json!({
            "seq": out.frame.seq,
            "wall_time": wall,
            "media_time": out.frame.media_time.map(|t| t.as_secs_f64()),
            "width": out.frame.width,
            "height": out.frame.height,
            "dropped_before": out.dropped_before,
            "backbone_ms": out.stage_times[0].as_secs_f64() * 1e3,
            "head_ms": out.stage_times[1].as_secs_f64() * 1e3,
        });
        if let Some(d) = &out.depth {
            let (lo, hi) = d
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            v["depth"] = serde_json::json!({"min_m": lo, "max_m": hi});
        }
        if let Some(seg) = &out.seg {
            let mut counts = std::collections::BTreeMap::<u8, u64>::new();
            for &l in seg.labels.iter() {
                *counts.entry(l).or_default() += 1;
            }
            let n = seg.labels.len().max(1) as f64;
            v["classes"] = counts
                .into_iter()
                .map(|(k, c)| serde_json::json!({"class": k, "fraction": c as f64 / n}))
                .collect();
        }
        let name = self.name();
        writeln!(self.out, "{v}").map_err(|e| sink_err(&name, e))?;
        self.out.flush().map_err(|e| sink_err(&name, e))
    }

    fn finish(&mut self) -> Result<()> {
        let name = self.name();
        self.out.flush().map_err(|e| sink_err(&name, e))
    }
}
