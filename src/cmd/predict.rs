//! `dinoedge predict MODEL --head HEAD.pth IMAGE... --out DIR`: DINOv2's released linear
//! segmentation or depth heads on images, written as files for people and for machines; or
//! `dinoedge predict DEPTH_MODEL IMAGE... --out DIR` with a model that carries its own depth
//! head (Depth Anything V2). A segmentation head on such a model gives both, from one pass.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dinoedge_heads::{LinearHead, SegHead};
use dinoedge_model::{DepthConfig, ResizeMode};
use dinoedge_render::Colormap;
use dinoedge_render::output::{
    class_png, depth_color, depth_mm_png, with_depth_legend, with_legend,
};
use dinoedge_render::overlay::{blend, tile};
use image::RgbImage;
use ndarray::Array2;
use serde_json::{Value, json};

use super::{Damaged, ModelArgs, finish, head_options, out_dir, progress, stem};

/// Arguments of `dinoedge predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A released DINOv2 linear head: dinov2_vits14_{voc2012,ade20k}_linear_head.pth
    /// (segmentation) or dinov2_vits14_{nyu,kitti}_linear{,4}_head.pth (depth); or a head
    /// trained by `dinoedge train-head` (.safetensors). Not needed with a model that has a
    /// depth head of its own (Depth Anything V2); a segmentation head on such a model writes
    /// the classes and the model's depth from the same pass.
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

/// What makes the pictures: a linear head on the backbone's features, the model's own depth
/// head, or both.
enum Predictor {
    /// A released or trained linear head; `beside`: the model's own depth, written next to a
    /// segmentation head's classes (both from one pass).
    Head {
        head: Box<LinearHead>,
        beside: Option<DepthConfig>,
    },
    /// The model's own depth head alone.
    ModelDepth(DepthConfig),
}

/// The linear head asked for, the model's own depth head, or both; an error that says what to
/// do when there is neither.
fn predictor(args: &Args, info: &dinoedge_model::ModelInfo) -> Result<Predictor> {
    match (&args.head, info.depth()) {
        (Some(path), depth) => {
            let head = LinearHead::load(path, args.max_depth)
                .with_context(|| format!("loading the head {}", path.display()))?;
            // a depth head's metres replace the model's own depth; classes go beside it
            let beside = depth.filter(|_| matches!(head, LinearHead::Seg(_)));
            Ok(Predictor::Head {
                head: Box::new(head),
                beside,
            })
        }
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

/// Where one image's outputs go: `DIR/<stem>_<suffix>`, with the picture settings.
struct Outputs<'a> {
    dir: &'a Path,
    stem: String,
    img: &'a RgbImage,
    colormap: Colormap,
    alpha: f32,
}

impl Outputs<'_> {
    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}_{suffix}", self.stem))
    }

    fn image(&self, suffix: &str, picture: &image::DynamicImage) -> Result<()> {
        let path = self.path(suffix);
        picture
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn npy(&self, suffix: &str, values: &Array2<f32>) -> Result<()> {
        let path = self.path(suffix);
        ndarray_npy::write_npy(&path, values).with_context(|| format!("writing {}", path.display()))
    }

    /// `self.img` and the colour map of `depth` side by side, with `legend` applied.
    fn depth_picture(
        &self,
        depth: &Array2<f32>,
        lo: f32,
        hi: f32,
        legend: impl Fn(&RgbImage) -> RgbImage,
    ) -> image::DynamicImage {
        let colour = depth_color(depth.view(), self.colormap, lo, hi);
        legend(&tile(&[self.img.clone(), colour], 2, 0)).into()
    }

    /// Depth in metres: 16-bit millimetres, `.npy`, a picture with its scale.
    fn metric_depth(&self, depth: &Array2<f32>) -> Result<Value> {
        self.image("depth_mm.png", &depth_mm_png(depth.view()).into())?;
        self.npy("depth.npy", depth)?;
        let (lo, median, hi) = spread(depth);
        let picture = self.depth_picture(depth, lo, hi, |i| {
            with_depth_legend(i, self.colormap, lo, hi)
        });
        self.image("depth.png", &picture)?;
        Ok(json!({"task": "depth", "min_m": lo, "median_m": median, "max_m": hi}))
    }

    /// Relative inverse depth (larger is nearer, no unit), labelled so in every name.
    fn relative_depth(&self, depth: &Array2<f32>) -> Result<Value> {
        self.npy("depth_relative.npy", depth)?;
        let (lo, median, hi) = spread(depth);
        let picture = self.depth_picture(depth, lo, hi, |i| {
            with_legend(i, self.colormap, "near", "far")
        });
        self.image("depth_relative.png", &picture)?;
        Ok(json!({
            "task": "depth", "depth": "relative inverse (larger is nearer, no unit)",
            "min": lo, "median": median, "max": hi,
        }))
    }

    /// The model's own depth, metric or relative as its config says.
    fn model_depth(&self, f: &dinoedge_model::Features, config: DepthConfig) -> Result<Value> {
        let depth = model_depth(f, self.img.height() as usize, self.img.width() as usize)?;
        match config {
            DepthConfig::Metric { .. } => self.metric_depth(&depth),
            DepthConfig::Relative => self.relative_depth(&depth),
        }
    }

    /// Classes: the label map, its colours, an overlay, and each class's share.
    fn segmentation(&self, seg: &SegHead, f: &dinoedge_model::Features) -> Result<Value> {
        let (w, h) = (self.img.width() as usize, self.img.height() as usize);
        let out = seg.predict_features(f, h, w)?;
        let colour = seg.palette.colorize(out.labels.view());
        self.image("classes.png", &class_png(out.labels.view()).into())?;
        self.image("seg.png", &colour.clone().into())?;
        let overlay = tile(
            &[self.img.clone(), blend(self.img, &colour, self.alpha)],
            2,
            0,
        );
        self.image("overlay.png", &overlay.into())?;
        let mut counts = vec![(0usize, 0f64); seg.classes()];
        for (l, c) in out.labels.iter().zip(out.confidence.iter()) {
            counts[*l as usize].0 += 1;
            counts[*l as usize].1 += *c as f64;
        }
        let mut present: Vec<(f64, Value)> = counts
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(k, (n, conf))| {
                let fraction = *n as f64 / (w * h) as f64;
                let class = json!({
                    "class": k,
                    "name": seg.palette.names[k],
                    "fraction": fraction,
                    "mean_confidence": conf / *n as f64,
                });
                (fraction, class)
            })
            .collect();
        present.sort_by(|a, b| b.0.total_cmp(&a.0));
        let classes: Vec<Value> = present.into_iter().map(|(_, c)| c).collect();
        Ok(json!({"task": "segmentation", "classes": classes}))
    }

    /// Everything `predictor` makes from one pass's features: the summary's object.
    fn write(&self, predictor: &Predictor, f: &dinoedge_model::Features) -> Result<Value> {
        let (w, h) = (self.img.width() as usize, self.img.height() as usize);
        match predictor {
            Predictor::ModelDepth(config) => self.model_depth(f, *config),
            Predictor::Head { head, beside } => match &**head {
                LinearHead::Depth(d) => self.metric_depth(&d.predict_features(f, h, w)?),
                LinearHead::Seg(seg) => {
                    let mut classes = self.segmentation(seg, f)?;
                    if let Some(config) = beside {
                        classes["model_depth"] = self.model_depth(f, *config)?;
                    }
                    Ok(classes)
                }
            },
        }
    }
}

/// One line for a summary object: classes, depth, or both.
fn describe(s: &Value) -> String {
    let image = s["image"].as_str().unwrap_or("?");
    let depth = |d: &Value| {
        if d["depth"].is_string() {
            format!(
                "relative depth {:.3}–{:.3} (median {:.3}; larger is nearer, no unit)",
                d["min"].as_f64().unwrap_or(0.0),
                d["max"].as_f64().unwrap_or(0.0),
                d["median"].as_f64().unwrap_or(0.0)
            )
        } else {
            format!(
                "depth {:.2}–{:.2} m (median {:.2})",
                d["min_m"].as_f64().unwrap_or(0.0),
                d["max_m"].as_f64().unwrap_or(0.0),
                d["median_m"].as_f64().unwrap_or(0.0)
            )
        }
    };
    if s["task"] == "depth" {
        return format!("{image}: {}", depth(s));
    }
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
    match s.get("model_depth") {
        Some(d) => format!("{image}: {}; {}", top.join(", "), depth(d)),
        None => format!("{image}: {}", top.join(", ")),
    }
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
        Predictor::Head { head, .. } => head_options(head, &info, &args.model)?,
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
        let result = (|| -> Result<Value> {
            let img = damaged.load(path)?;
            let f = bb.run_image(&mut pre, &img)?;
            let outputs = Outputs {
                dir: &args.out,
                stem: stem(path),
                img: &img,
                colormap: args.colormap,
                alpha: args.alpha,
            };
            let mut result = outputs.write(&predictor, &f)?;
            result["image"] = json!(path);
            Ok(result)
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
        println!("{}", describe(s));
    }
    println!(
        "{} results -> {} (summary: {})",
        summary.len(),
        args.out.display(),
        json.display()
    );
    finish(&failed, &damaged, args.images.len())
}
