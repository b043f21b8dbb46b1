//! `dinoedge capture`: read frames from any source, print what arrives, optionally save them.
//! The quickest check that a camera, file or stream works before running a model on it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dinoedge_camera::{FrameSource, SourceSpec};

/// Arguments of `dinoedge capture`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source: v4l2:///dev/video0, csi://0, a file, folder or glob, clip.y4m, clip.mp4,
    /// rtsp://…, - (MJPEG on stdin), synthetic:// (see `dinoedge capture --help`).
    #[arg(long_help = SOURCE_HELP)]
    source: String,
    /// Stop after this many frames (default: until the source ends).
    #[arg(long, short = 'n')]
    frames: Option<u64>,
    /// Save the frames here as frame_NNNNNN.<ext>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Image format for --out: png or jpg.
    #[arg(long, default_value = "png", value_parser = ["png", "jpg"])]
    ext: String,
    /// One JSON line per frame on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// The source URI forms, for `--help`.
pub const SOURCE_HELP: &str = "The frame source, as a URI:
  v4l2:///dev/video0?width=1280&height=720&fps=30&format=mjpeg   USB/V4L2 camera (or v4l2://0, /dev/v4l/by-id/...)
  csi://0?width=1280&height=720&fps=30                           Raspberry Pi CSI camera (runs rpicam-vid)
  photo.jpg | frames/ | 'frames/*.png'                          images: one, a folder, a glob (natural order)
  clip.mjpeg | clip.y4m                                         MJPEG stream file, YUV4MPEG2 video
  clip.mp4 | rtsp://host/stream | http://…                      anything ffmpeg reads (needs ffmpeg)
  -                                                             MJPEG on standard input
  synthetic://?width=640&height=480&fps=30                      a moving test pattern
Files take ?loop, ?fps=F (deliver at F fps), ?pace=realtime (at the file's own rate; the
default is as fast as possible) and ?frames=N; cameras take ?reconnect=false.";

/// Read frames.
pub fn run(args: Args) -> Result<()> {
    let spec = SourceSpec::parse(&args.source)?;
    let mut source = spec
        .open()
        .with_context(|| format!("opening {}", args.source))?;
    let info = source.info();
    eprintln!(
        "{} source: {}{}{}",
        info.kind,
        info.description,
        info.size
            .map(|(w, h)| format!(", {w}x{h}"))
            .unwrap_or_default(),
        info.fps
            .map(|f| format!(", {f:.3} fps"))
            .unwrap_or_default()
    );
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let start = Instant::now();
    let (mut count, mut dropped, mut errors) = (0u64, 0u64, 0u64);
    while args.frames.is_none_or(|n| count < n) {
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                errors += 1;
                eprintln!("warning: {e}");
                continue;
            }
        };
        count += 1;
        dropped += frame.dropped_before;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "seq": frame.seq,
                    "width": frame.width,
                    "height": frame.height,
                    "wall_ns": frame.wall_nanos(),
                    "media_time_s": frame.media_time.map(|t| t.as_secs_f64()),
                    "dropped_before": frame.dropped_before,
                })
            );
        } else {
            println!(
                "frame {:>6}  {}x{}  t={:.3}s{}{}",
                frame.seq,
                frame.width,
                frame.height,
                frame.captured.duration_since(start).as_secs_f64(),
                frame
                    .media_time
                    .map(|t| format!("  media {:.3}s", t.as_secs_f64()))
                    .unwrap_or_default(),
                if frame.dropped_before > 0 {
                    format!("  ({} dropped before)", frame.dropped_before)
                } else {
                    String::new()
                }
            );
        }
        if let Some(dir) = &args.out {
            let path = dir.join(format!("frame_{:06}.{}", frame.seq, args.ext));
            frame
                .into_image()
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{count} frames in {secs:.2} s ({:.1} fps), {dropped} dropped, {errors} errors",
        count as f64 / secs.max(1e-9)
    );
    if errors > 0 {
        bail!("the source reported {errors} error(s); the frames before and after them were kept");
    }
    Ok(())
}
