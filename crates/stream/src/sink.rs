//! Where results go. Each sink runs on its own thread; a sink that fails is reported and
//! closed while the others go on.

use std::fs::File;
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

/// An error with its causes, for messages: the MCAP writer's "I/O error from writing, or
/// reading a compression stream" says nothing until its cause follows ("No space left on
/// device").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
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
/// `_depth.npy` (f32 metres) and `_depth.png` (colour) for depth; `_depth_relative.npy` and
/// `_depth_relative.png` for a relative depth model (no unit) — both sets when a segmentation
/// head runs beside a depth model's own depth; `_pca.png` for the PCA
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
        let npy = |path: PathBuf, write: &dyn Fn(&mut Buffered) -> std::io::Result<()>| {
            write_whole(&path, write).map_err(|e| err(&e))
        };
        let picture = |stem: &str, view: View| -> Result<()> {
            let img = render(out, view, self.alpha);
            let path = p(&format!("{stem}.{ext}"));
            match self.format {
                PictureFormat::Png => save_png(&img, &path).map_err(|e| err(&e)),
                PictureFormat::Jpeg => {
                    let bytes = jpeg(&img, 90).map_err(|e| err(&e))?;
                    write_whole(&path, &|f| f.write_all(&bytes)).map_err(|e| err(&e))
                }
            }
        };
        use ndarray_npy::WriteNpyExt;
        for part in a.parts() {
            match part {
                Analysed::Seg(seg, _) => {
                    save_png(&class_png(seg.labels.view()), &p("classes.png"))
                        .map_err(|e| err(&e))?;
                    picture("overlay", View::Result)?
                }
                Analysed::Depth(d) => {
                    save_png(&depth_mm_png(d.view()), &p("depth_mm.png")).map_err(|e| err(&e))?;
                    npy(p("depth.npy"), &|f| d.write_npy(f).map_err(npy_io))?;
                    picture("depth", View::Depth)?
                }
                Analysed::RelativeDepth(d) => {
                    npy(p("depth_relative.npy"), &|f| d.write_npy(f).map_err(npy_io))?;
                    picture("depth_relative", View::Depth)?
                }
                Analysed::Pca(_) => picture("pca", View::Result)?,
                Analysed::Features(f) => {
                    npy(p("patches.npy"), &|w| {
                        f.patches().write_npy(w).map_err(npy_io)
                    })?;
                    npy(p("cls.npy"), &|w| f.cls().write_npy(w).map_err(npy_io))?
                }
            }
        }
        Ok(())
    }
}

/// A file being written by [`write_whole`].
type Buffered = std::io::BufWriter<File>;

/// An `.npy` writer's error as the I/O error it is (its cause kept: "No space left on device").
fn npy_io(e: ndarray_npy::WriteNpyError) -> std::io::Error {
    match e {
        ndarray_npy::WriteNpyError::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Write `path` whole or not at all: `write` fills a hidden temporary file beside it
/// (`.NAME.part`), renamed to `path` once complete and flushed. On an error (a full disk)
/// the temporary file is removed: nothing half-written is left under the final name, and the
/// error is the operating system's ("No space left on device").
fn write_whole(
    path: &Path,
    write: &dyn Fn(&mut Buffered) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let part = path.with_file_name(format!(".{name}.part"));
    let written = File::create(&part).and_then(|f| {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        write(&mut w)?;
        w.flush()
    });
    let done = written.and_then(|()| std::fs::rename(&part, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    done
}

/// `img` as a PNG at `path` with fast compression (one filter, fast deflate): several times
/// faster than the default for somewhat larger files, which matters when a run writes every
/// frame. Written whole or not at all ([`write_whole`]).
fn save_png<P>(img: &image::ImageBuffer<P, Vec<P::Subpixel>>, path: &Path) -> std::io::Result<()>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    write_whole(path, &|f| {
        let encoder = PngEncoder::new_with_quality(f, CompressionType::Fast, FilterType::Sub);
        img.write_with_encoder(encoder).map_err(|e| match e {
            image::ImageError::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

/// One JSON object per output (timestamps, times, and summaries of the result over each
/// region) on a writer, flushed per line.
pub struct JsonLinesSink {
    out: Box<dyn Write + Send>,
    label: String,
    regions: Vec<Region>,
    /// For a file: the file (the same open file as `out`) and the length of its whole lines,
    /// to cut a half-written line off when a write fails (a full disk).
    file: Option<(std::fs::File, u64)>,
}

impl JsonLinesSink {
    /// JSON lines to `out`, named `label` in messages, summarising the whole frame and
    /// `regions`.
    pub fn new(out: impl Write + Send + 'static, label: &str, regions: Vec<Region>) -> Self {
        let mut all = vec![Region::frame()];
        all.extend(regions);
        JsonLinesSink {
            out: Box::new(out),
            label: label.to_string(),
            regions: all,
            file: None,
        }
    }

    /// JSON lines to a new file at `path` (replaced if it exists). A line that cannot be
    /// written whole (a full disk) is cut off again: the file holds whole lines only.
    pub fn create(path: &Path, regions: Vec<Region>) -> Result<Self> {
        let name = format!("jsonl:{}", path.display());
        let file = std::fs::File::create(path)
            .map_err(|e| sink_err(&name, format!("creating {}: {e}", path.display())))?;
        let undo = file.try_clone().map_err(|e| sink_err(&name, e))?;
        let mut sink = JsonLinesSink::new(file, &name, regions);
        sink.file = Some((undo, 0));
        Ok(sink)
    }

    /// Write one line whole, or leave a file as it was before it.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let written = self.out.write_all(line).and_then(|()| self.out.flush());
        match (&written, self.file.as_mut()) {
            (Ok(()), Some((_, whole))) => *whole += line.len() as u64,
            (Err(_), Some((file, whole))) => {
                // `file` shares `out`'s offset: truncate, then write on from the cut
                use std::io::Seek;
                let _ = file
                    .set_len(*whole)
                    .and_then(|()| file.seek(std::io::SeekFrom::Start(*whole)));
            }
            _ => {}
        }
        written
    }
}

impl Sink for JsonLinesSink {
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
                Analysed::Depth(_) | Analysed::RelativeDepth(_) | Analysed::Seg(..) => {
                    v["regions"] = self.regions.iter().map(|r| r.summarise_all(a)).collect();
                }
                Analysed::Features(f) => {
                    let (h, w, c) = f.patches().dim();
                    v["patch_grid"] = serde_json::json!([h, w, c]);
                }
                Analysed::Pca(_) => {}
            }
        }
        let mut line = v.to_string();
        line.push('\n');
        self.write_line(line.as_bytes())
            .map_err(|e| sink_err(&self.name(), e))
    }

    fn finish(&mut self) -> Result<()> {
        let name = self.name();
        self.out.flush().map_err(|e| sink_err(&name, e))
    }
}
