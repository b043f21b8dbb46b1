//! `dinoedge predict MODEL --head HEAD.pth IMAGE... --out DIR`: DINOv2's released linear
//! segmentation or depth heads on images, written as files for people and for machines.

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_heads::LinearHead;
use dinoedge_model::{ResizeMode, load_rgb};
use dinoedge_render::Colormap;
use dinoedge_render::output::{class_png, depth_color, depth_mm_png, with_depth_legend};
use dinoedge_render::overlay::{blend, tile};

use super::{ModelArgs, finish, head_options, out_dir, progress, stem};

/// Arguments of `dinoedge predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A released DINOv2 linear head: dinov2_vits14_{voc2012,ade20k}_linear_head.pth
    /// (segmentation) or dinov2_vits14_{nyu,kitti}_linear{,4}_head.pth (depth); or a head
    /// trained by `dinoedge train-head` (.safetensors).
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: PathBuf,
    /// Images (PNG or JPEG).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Output directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Depth heads: the largest bin depth in metres (default: from the checkpoint's config,
    /// else 80 for KITTI and 10 for NYU files).
    #[arg(long)]
    max_depth: Option<f32>,
    /// Colour map for depth: turbo, viridis, inferno, gray.
    #[arg(long, default_value = "turbo")]
    colormap: Colormap,
    /// Opacity of the result over the image in the overlay (0..1).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
}

/// Run a head over the images.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha must be within 0..1"
    );
    let head = LinearHead::load(&args.head, args.max_depth)
        .with_context(|| format!("loading the head {}", args.head.display()))?;
    // a trained head runs at the resolution it was trained at unless told otherwise
    let info = args.model.read()?;
    let options = head_options(&head, &info, &args.model)?;
    out_dir(&args.out)?;
    let mut bb = args.model.load_info(info, &options)?;
    // heads predict over the whole frame: the image is stretched to the input size
    let mut pre = bb.preprocessor(ResizeMode::Stretch)?;
    let pb = progress(args.images.len(), "predicting");
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for path in &args.images {
        let result = (|| -> Result<serde_json::Value> {
            let img = load_rgb(path)?;
            let (w, h) = (img.width() as usize, img.height() as usize);
            let f = bb.run_image(&mut pre, &img)?;
            let s = stem(path);
            let save = |name: String, r: image::ImageResult<()>| -> Result<String> {
                r.with_context(|| format!("writing {name}"))?;
                Ok(name)
            };
            match &head {
                LinearHead::Seg(seg) => {
                    let out = seg.predict_features(&f, h, w)?;
                    let colour = seg.palette.colorize(out.labels.view());
                    let p = |suffix: &str| args.out.join(format!("{s}_{suffix}"));
                    save(
                        p("classes.png").display().to_string(),
                        class_png(out.labels.view()).save(p("classes.png")),
                    )?;
                    save(
                        p("seg.png").display().to_string(),
                        colour.save(p("seg.png")),
                    )?;
                    let overlay = tile(&[img.clone(), blend(&img, &colour, args.alpha)], 2, 0);
                    save(
                        p("overlay.png").display().to_string(),
                        overlay.save(p("overlay.png")),
                    )?;
                    let mut counts = vec![(0usize, 0f64); seg.classes()];
                    for (l, c) in out.labels.iter().zip(out.confidence.iter()) {
                        counts[*l as usize].0 += 1;
                        counts[*l as usize].1 += *c as f64;
                    }
                    let mut present: Vec<_> = counts
                        .iter()
                        .enumerate()
                        .filter(|(_, (n, _))| *n > 0)
                        .map(|(k, (n, conf))| {
                            serde_json::json!({
                                "class": k,
                                "name": seg.palette.names[k],
                                "fraction": *n as f64 / (w * h) as f64,
                                "mean_confidence": conf / *n as f64,
                            })
                        })
                        .collect();
                    present.sort_by(|a, b| {
                        b["fraction"]
                            .as_f64()
                            .partial_cmp(&a["fraction"].as_f64())
                            .unwrap_or(std::cmp::Ordering::Equal)
                    });
                    Ok(
                        serde_json::json!({"image": path, "task": "segmentation", "classes": present}),
                    )
                }
                LinearHead::Depth(d) => {
                    let depth = d.predict_features(&f, h, w)?;
                    let p = |suffix: &str| args.out.join(format!("{s}_{suffix}"));
                    save(
                        p("depth_mm.png").display().to_string(),
                        depth_mm_png(depth.view()).save(p("depth_mm.png")),
                    )?;
                    ndarray_npy::write_npy(p("depth.npy"), &depth)
                        .with_context(|| format!("writing {}", p("depth.npy").display()))?;
                    let mut sorted: Vec<f32> = depth.iter().copied().collect();
                    sorted.sort_by(f32::total_cmp);
                    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
                    let median = sorted[sorted.len() / 2];
                    let colour = depth_color(depth.view(), args.colormap, lo, hi);
                    let legend = with_depth_legend(
                        &tile(&[img.clone(), colour], 2, 0),
                        args.colormap,
                        lo,
                        hi,
                    );
                    save(
                        p("depth.png").display().to_string(),
                        legend.save(p("depth.png")),
                    )?;
                    Ok(
                        serde_json::json!({"image": path, "task": "depth", "min_m": lo, "median_m": median, "max_m": hi}),
                    )
                }
            }
        })();
        match result {
            Ok(v) => summary.push(v),
            Err(e) => failed.push((path.clone(), e)),
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let json = args.out.join("predictions.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", json.display()))?;
    for s in &summary {
        match s["task"].as_str() {
            Some("depth") => println!(
                "{}: depth {:.2}–{:.2} m (median {:.2})",
                s["image"].as_str().unwrap_or("?"),
                s["min_m"].as_f64().unwrap_or(0.0),
                s["max_m"].as_f64().unwrap_or(0.0),
                s["median_m"].as_f64().unwrap_or(0.0)
            ),
            _ => {
                let top: Vec<String> = s["classes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .take(3)
                            .map(|c| {
                                format!(
                                    "{} {:.0} %",
                                    c["name"].as_str().unwrap_or("?"),
                                    100.0 * c["fraction"].as_f64().unwrap_or(0.0)
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!("{}: {}", s["image"].as_str().unwrap_or("?"), top.join(", "));
            }
        }
    }
    println!(
        "{} results -> {} (summary: {})",
        summary.len(),
        args.out.display(),
        json.display()
    );
    finish(&failed, args.images.len())
}
