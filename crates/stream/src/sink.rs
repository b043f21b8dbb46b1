//! Where results go. Each sink runs on its own thread; a sink that fails is reported and
//! closed while the others go on.

use std::io::Write;
use std::path::{Path, PathBuf};

use dinoedge_render::output::{class_png, depth_mm_png};

use crate::region::Region;
use crate::render::{View, jpeg, render};
use crate::result::{Analysed, Output};
use crate::{Result, StreamError};

/// A consumer of results.
pub trait Sink: Send {
    /// A short name for messages (`files:out/`, `jsonl`).
    fn name(&self) -> String;
    /// Take one output.
    fn write(&mut self, out: &Output) -> Result<()>;
    /// Flush and close; called once after the last output.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A [`StreamError::Sink`] for sink `name`.
pub fn sink_err(name: &str, reason: impl std::fmt::Display) -> StreamError {
    StreamError::Sink {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Picture format of a [`FileSink`]'s overlays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PictureFormat {
    /// Lossless PNG.
    #[default]
    Png,
    /// JPEG at quality 90 (a tenth of the size, for long runs).
    Jpeg,
}

/// Files per result, numbered by the frame it was computed on: `frame_000042_overlay.png`
/// and `_classes.png` (class ids) for segmentation; `_depth_mm.png` (16-bit, mm),
/// `_depth.npy` (f32 metres) and `_depth.png` (colour) for depth; `_pca.png` for the PCA
/// view; `_patches.npy` (`[h, w, C]`) and `_cls.npy` for features. Only fresh results are
/// written: in the low-rate modes one set per backbone run.
pub struct FileSink {
    dir: PathBuf,
    format: PictureFormat,
    alpha: f32,
}

impl FileSink {
    /// Files under `dir` (created), overlays in `format`, segmentation blended at `alpha`.
    pub fn new(dir: PathBuf, format: PictureFormat, alpha: f32) -> Result<FileSink> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| sink_err(&format!("files:{}", dir.display()), e))?;
        Ok(FileSink { dir, format, alpha })
    }
}

impl Sink for FileSink {
    fn name(&self) -> String {
        format!("files:{}", self.dir.display())
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let Some(a) = out.result.as_deref().filter(|_| out.fresh) else {
            return Ok(());
        };
        let name = self.name();
        let p = |s: &str| self.dir.join(format!("frame_{:06}_{s}", a.seq));
        let err = |e: &dyn std::fmt::Display| sink_err(&name, e);
        let ext = match self.format {
            PictureFormat::Png => "png",
            PictureFormat::Jpeg => "jpg",
        };
        let picture = |stem: &str| -> Result<()> {
            let img = render(out, View::Result, self.alpha);
            let path = p(&format!("{stem}.{ext}"));
            match self.format {
                PictureFormat::Png => save_png(&img, &path).map_err(|e| err(&e)),
                PictureFormat::Jpeg => {
                    let bytes = jpeg(&img, 90).map_err(|e| err(&e))?;
                    std::fs::write(&path, bytes).map_err(|e| err(&e))
                }
            }
        };
        match &a.analysed {
            Analysed::Seg(seg, _) => {
                save_png(&class_png(seg.labels.view()), &p("classes.png")).map_err(|e| err(&e))?;
                picture("overlay")
            }
            Analysed::Depth(d) => {
                save_png(&depth_mm_png(d.view()), &p("depth_mm.png")).map_err(|e| err(&e))?;
                ndarray_npy::write_npy(p("depth.npy"), d).map_err(|e| err(&e))?;
                picture("depth")
            }
            Analysed::Pca(_) => picture("pca"),
            Analysed::Features(f) => {
                ndarray_npy::write_npy(p("patches.npy"), f.patches()).map_err(|e| err(&e))?;
                ndarray_npy::write_npy(p("cls.npy"), f.cls()).map_err(|e| err(&e))
            }
        }
    }
}

/// `img` as a PNG at `path` with fast compression (one filter, fast deflate): several times
/// faster than the default for somewhat larger files, which matters when a run writes every frame.
fn save_png<P>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> image::ImageResult<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    img.write_with_encoder(PngEncoder::new_with_quality(
        file,
        CompressionType::Fast,
        FilterType::Sub,
    ))
}

/// One JSON object per output (timestamps, times, and summaries of the result over each
/// region) on a writer, flushed per line.
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
    label: String,
    regions: Vec<Region>,
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// JSON lines to `out`, named `label` in messages, summarising the whole frame and
    /// `regions`.
    pub fn new(out: W, label: &str, regions: Vec<Region>) -> Self {
        let mut all = vec![Region::frame()];
        all.extend(regions);
        JsonLinesSink {
            out,
            label: label.to_string(),
            regions: all,
        }
    }
}

impl<W: Write + Send> Sink for JsonLinesSink<W> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let mut v = serde_json::json!({
            "seq": out.frame.seq,
            "wall_time": secs(out.frame.wall),
            "media_time": out.frame.media_time.map(|t| t.as_secs_f64()),
            "width": out.frame.width,
            "height": out.frame.height,
            "dropped_before": out.dropped_before,
            "latency_ms": out.frame.captured.elapsed().as_secs_f64() * 1e3,
        });
        if let Some(a) = out.result.as_deref() {
            v["result_seq"] = a.seq.into();
            v["fresh"] = out.fresh.into();
            v["backbone_ms"] = (a.backbone.as_secs_f64() * 1e3).into();
            v["head_ms"] = (a.head.as_secs_f64() * 1e3).into();
            match &a.analysed {
                m @ (Analysed::Depth(_) | Analysed::Seg(..)) => {
                    v["regions"] = self.regions.iter().map(|r| r.summarise(m)).collect();
                }
                Analysed::Features(f) => {
                    let (h, w, c) = f.patches().dim();
                    v["patch_grid"] = serde_json::json!([h, w, c]);
                }
                Analysed::Pca(_) => {}
            }
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
