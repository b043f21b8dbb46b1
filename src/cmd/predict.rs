//! `dinoedge predict MODEL --head HEAD.pth IMAGE... --out DIR`: DINOv2's released linear
//! segmentation or depth heads on images, written as files for people and for machines; or
//! `dinoedge predict DEPTH_MODEL IMAGE... --out DIR` with a model that carries its own depth
//! head (Depth Anything V2).

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_heads::LinearHead;
use dinoedge_model::{DepthConfig, ResizeMode};
use dinoedge_render::Colormap;
use dinoedge_render::output::{
    class_png, depth_color, depth_mm_png, with_depth_legend, with_legend,
};
use dinoedge_render::overlay::{blend, tile};
use image::RgbImage;
use ndarray::Array2;

use super::{Damaged, ModelArgs, finish, head_options, out_dir, progress, stem};

/// Arguments of `dinoedge predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A released DINOv2 linear head: dinov2_vits14_{voc2012,ade20k}_linear_head.pth
    /// (segmentation) or dinov2_vits14_{nyu,kitti}_linear{,4}_head.pth (depth); or a head
    /// trained by `dinoedge train-head` (.safetensors). Not needed with a model that has a
    /// depth head of its own (Depth Anything V2).
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: Option<PathBuf>,
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

/// What makes the picture: a linear head on the backbone's features, or the model's own
/// depth head.
enum Predictor {
    Head(Box<LinearHead>),
    ModelDepth(DepthConfig),
}

/// The linear head asked for, or the model's own depth head; an error that says what to do
/// when there is neither.
fn predictor(args: &Args, info: &dinoedge_model::ModelInfo) -> Result<Predictor> {
    match (&args.head, info.depth()) {
        (Some(head), _) => Ok(Predictor::Head(Box::new(
            LinearHead::load(head, args.max_depth)
                .with_context(|| format!("loading the head {}", head.display()))?,
        ))),
        (None, Some(depth)) => Ok(Predictor::ModelDepth(depth)),
        (None, None) => anyhow::bail!(
            "{} ({}) has no head of its own: give one with --head (a released DINOv2 linear head or one from `dinoedge train-head`), or use a depth model such as Depth Anything V2",
            info.path.display(),
            info.variant()
        ),
    }
}

/// The model's depth map `[H, W]` at the image's `h` x `w` (bilinear).
fn model_depth(f: &dinoedge_model::Features, h: usize, w: usize) -> Result<Array2<f32>> {
    let depth = f.depth.as_ref().context("the model gave no depth map")?;
    let (dh, dw) = depth.dim();
    let planes = depth.view().into_shape_with_order((1, dh, dw))?;
    let resized = dinoedge_heads::resize::resize_bilinear(planes, h, w);
    Ok(resized.into_shape_with_order((h, w))?)
}

/// The smallest, median and largest value.
fn spread(values: &Array2<f32>) -> (f32, f32, f32) {
    let mut sorted: Vec<f32> = values.iter().copied().collect();
    sorted.sort_by(f32::total_cmp);
    (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    )
}

/// `image` and the colour map of `depth` side by side, with `legend` applied.
fn depth_picture(
    img: &RgbImage,
    depth: &Array2<f32>,
    map: Colormap,
    lo: f32,
    hi: f32,
    legend: impl Fn(&RgbImage) -> RgbImage,
) -> RgbImage {
    let colour = depth_color(depth.view(), map, lo, hi);
    legend(&tile(&[img.clone(), colour], 2, 0))
}

/// Run a head over the images.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha must be within 0..1"
    );
    let info = args.model.read()?;
    let predictor = predictor(&args, &info)?;
    // a trained head runs at the resolution it was trained at unless told otherwise
    let options = match &predictor {
        Predictor::Head(head) => head_options(head, &info, &args.model)?,
        Predictor::ModelDepth(_) => args.model.options(),
    };
    out_dir(&args.out)?;
    let mut bb = args.model.load_info(info, &options)?;
    // heads predict over the whole frame: the image is stretched to the input size
    let mut pre = bb.preprocessor(ResizeMode::Stretch)?;
    let pb = progress(args.images.len(), "predicting");
    let mut failed = Vec::new();
    let mut damaged = Damaged::default();
    let mut summary = Vec::new();
    for path in &args.images {
        let result = (|| -> Result<serde_json::Value> {
            let img = damaged.load(path)?;
            let (w, h) = (img.width() as usize, img.height() as usize);
            let f = bb.run_image(&mut pre, &img)?;
            let s = stem(path);
            let save = |name: String, r: image::ImageResult<()>| -> Result<String> {
                r.with_context(|| format!("writing {name}"))?;
                Ok(name)
            };
            let p = |suffix: &str| args.out.join(format!("{s}_{suffix}"));
            let metric = |depth: Array2<f32>| -> Result<serde_json::Value> {
                save(
                    p("depth_mm.png").display().to_string(),
                    depth_mm_png(depth.view()).save(p("depth_mm.png")),
                )?;
                ndarray_npy::write_npy(p("depth.npy"), &depth)
                    .with_context(|| format!("writing {}", p("depth.npy").display()))?;
                let (lo, median, hi) = spread(&depth);
                let picture = depth_picture(&img, &depth, args.colormap, lo, hi, |i| {
                    with_depth_legend(i, args.colormap, lo, hi)
                });
                save(
                    p("depth.png").display().to_string(),
                    picture.save(p("depth.png")),
                )?;
                Ok(
                    serde_json::json!({"image": path, "task": "depth", "min_m": lo, "median_m": median, "max_m": hi}),
                )
            };
            match &predictor {
                Predictor::ModelDepth(DepthConfig::Metric { .. }) => metric(model_depth(&f, h, w)?),
                Predictor::ModelDepth(DepthConfig::Relative) => {
                    // relative inverse depth: larger is nearer, no unit
                    let depth = model_depth(&f, h, w)?;
                    ndarray_npy::write_npy(p("depth_relative.npy"), &depth).with_context(|| {
                        format!("writing {}", p("depth_relative.npy").display())
                    })?;
                    let (lo, median, hi) = spread(&depth);
                    let picture = depth_picture(&img, &depth, args.colormap, lo, hi, |i| {
                        with_legend(i, args.colormap, "near", "far")
                    });
                    save(
                        p("depth_relative.png").display().to_string(),
                        picture.save(p("depth_relative.png")),
                    )?;
                    Ok(serde_json::json!({
                        "image": path, "task": "depth", "depth": "relative inverse (larger is nearer, no unit)",
                        "min": lo, "median": median, "max": hi,
                    }))
                }
                Predictor::Head(head) => match &**head {
                    LinearHead::Depth(d) => metric(d.predict_features(&f, h, w)?),
                    LinearHead::Seg(seg) => {
                        let out = seg.predict_features(&f, h, w)?;
                        let colour = seg.palette.colorize(out.labels.view());
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
                },
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
            Some("depth") if s["depth"].is_string() => println!(
                "{}: relative depth {:.3}–{:.3} (median {:.3}; larger is nearer, no unit)",
                s["image"].as_str().unwrap_or("?"),
                s["min"].as_f64().unwrap_or(0.0),
                s["max"].as_f64().unwrap_or(0.0),
                s["median"].as_f64().unwrap_or(0.0)
            ),
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
    finish(&failed, &damaged, args.images.len())
}
