//! `dinoedge eval-head MODEL --head HEAD DATA`: mIoU and pixel accuracy, or RMSE, AbsRel
//! and δ<1.25, of a head on a labelled folder; or `dinoedge eval-head DEPTH_MODEL DATA`: the
//! depth a model gives itself (Depth Anything V2; relative depth aligned per image by scale
//! and shift). A table, and JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_heads::{DepthOutput, LinearHead};
use dinoedge_model::{Backbone, DepthConfig, ModelInfo, ResizeMode, Resolution};
use dinoedge_train::dataset::{Dataset, DepthFormat};
use dinoedge_train::featcache::{Extractor, FeatureCache, FeatureSpec};
use dinoedge_train::fit::{Evaluation, Progress, Task};

use super::ModelArgs;
use super::train_head::{DataArgs, features_bar};

/// Arguments of `dinoedge eval-head`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The head: trained by `dinoedge train-head` (.safetensors) or released by DINOv2 (.pth).
    /// Without one, a depth model (Depth Anything V2) is scored on its own depth.
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: Option<PathBuf>,
    /// Labelled folder (same layouts as train-head).
    data: PathBuf,
    #[command(flatten)]
    data_args: DataArgs,
    /// Depth heads: override the largest bin depth, metres.
    #[arg(long)]
    max_depth: Option<f32>,
    /// Also write the scores as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Evaluate a head, or a depth model's own depth.
pub fn run(args: Args) -> Result<()> {
    let info = ModelInfo::read(&args.model.model)
        .with_context(|| format!("reading {}", args.model.model.display()))?;
    let Some(head_path) = args.head.clone() else {
        return model_depth(args, info);
    };
    let head = LinearHead::load(&head_path, args.max_depth)
        .with_context(|| format!("loading the head {}", head_path.display()))?;
    let ds = Dataset::open(&args.data).context("reading the labelled folder")?;
    let g = &info.graph;
    let trained = match &head {
        LinearHead::Seg(s) => s.trained.as_ref(),
        LinearHead::Depth(d) => d.trained.as_ref(),
    };
    // a trained head runs at its training resolution unless told otherwise
    let resolution = args
        .model
        .size
        .or_else(|| trained.and_then(|m| m.get("resolution")?.parse::<Resolution>().ok()))
        .unwrap_or_else(|| info.default_resolution());
    let model_sha = dinoedge_model::cache::sha256_file(&args.model.model)
        .with_context(|| format!("hashing {}", args.model.model.display()))?;
    if let Some(want) = trained.and_then(|m| m.get("backbone_sha256"))
        && *want != model_sha
    {
        eprintln!(
            "warning: {} was trained on another backbone file (sha256 {}…); scores may be poor",
            head_path.display(),
            &want[..want.len().min(12)]
        );
    }
    super::check_family(&head, &info)?;
    let mut options = args.model.options();
    let task = match &head {
        LinearHead::Seg(s) => {
            s.check_backbone(g.embed_dim)?;
            s.configure(&mut options);
            let mut format = args.data_args.mask_format()?;
            if args.data_args.palette.is_none() && args.data_args.classes.is_none() {
                // the head's own classes and colours
                format.palette = s.palette.clone();
                format
                    .ignore_colors
                    .retain(|c| !s.palette.colors.contains(c));
                if let Some(i) = trained.and_then(|m| m.get("ignore_index")?.parse().ok()) {
                    format.ignore_index = i;
                }
            } else if format.classes() != s.classes() {
                anyhow::bail!(
                    "the head has {} classes but the palette given has {}",
                    s.classes(),
                    format.classes()
                );
            }
            Task::Segmentation {
                format,
                attention: s.attention_heads > 0,
            }
        }
        LinearHead::Depth(d) => {
            d.check_backbone(g.embed_dim)?;
            d.configure(&mut options, g.num_blocks);
            Task::Depth {
                format: DepthFormat {
                    png_units_per_metre: args.data_args.depth_scale,
                },
                blocks: d.blocks(g.num_blocks),
                output: DepthOutput::Bins,
                range: d.range,
                bins: d.bins(),
            }
        }
    };
    options.resolution = Some(resolution);
    let labels = task.load_labels(&ds)?;
    let spec = FeatureSpec {
        model_sha256: model_sha,
        resolution,
        blocks: options.blocks.clone(),
        attention: options.attention,
    };
    let options = spec.options(options);
    let cache = match args.data_args.cache_root() {
        Some(root) => Some(FeatureCache::open(&root, &spec)?),
        None => None,
    };
    let mut extractor = Extractor::new(cache, g.patch_size, || {
        let bb = Backbone::from_model_info(info.clone(), &options)?;
        let pre = bb.preprocessor(ResizeMode::Stretch)?;
        Ok((bb, pre))
    });
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    let pb = features_bar(all.len() as u64);
    let eval = Evaluation::run(&head, &mut extractor, &ds, &labels, &all, |p| {
        if let Progress::Features { .. } = p {
            pb.inc(1)
        }
    })?;
    pb.finish_and_clear();
    let mut json = serde_json::json!({"head": head_path});
    json["features"] = serde_json::json!({
        "computed": extractor.stats.misses,
        "cached": extractor.stats.hits,
    });
    report(
        &args,
        &head_path.display().to_string(),
        &ds,
        resolution,
        &eval,
        json,
    )
}

/// Print the table (and write the JSON) of `eval` on every image of `ds`; `extra` adds to
/// the JSON.
fn report(
    args: &Args,
    what: &str,
    ds: &Dataset,
    resolution: Resolution,
    eval: &Evaluation,
    extra: serde_json::Value,
) -> Result<()> {
    let images = ds.samples.len();
    println!(
        "{what} on {images} images of {} at {resolution}:\n{}",
        ds.root.display(),
        eval.table()
    );
    if let Some(path) = &args.json {
        let mut v = eval.to_json();
        if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v["model"] = serde_json::json!(args.model.model);
        v["dataset"] = serde_json::json!(ds.root);
        v["resolution"] = resolution.to_string().into();
        v["images"] = images.into();
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("scores -> {}", path.display());
    }
    Ok(())
}

/// Score the depth a depth model (Depth Anything V2) gives itself: metric depth as it is,
/// relative inverse depth aligned to each image's truth by least-squares scale and shift.
fn model_depth(args: Args, info: ModelInfo) -> Result<()> {
    let Some(kind) = info.depth() else {
        anyhow::bail!(
            "{} ({}) has no depth head of its own: give a head with --head (a released DINOv2 linear head or one from `dinoedge train-head`), or score a depth model such as Depth Anything V2",
            args.model.model.display(),
            info.variant()
        );
    };
    let ds = Dataset::open(&args.data).context("reading the labelled folder")?;
    let format = DepthFormat {
        png_units_per_metre: args.data_args.depth_scale,
    };
    let labels = dinoedge_train::fit::load_depth_maps(&ds, &format)?;
    let resolution = args.model.size.unwrap_or_else(|| info.default_resolution());
    let mut options = args.model.options();
    options.resolution = Some(resolution);
    let mut extractor = Extractor::new(None, info.graph.patch_size, || {
        let bb = Backbone::from_model_info(info.clone(), &options)?;
        let pre = bb.preprocessor(ResizeMode::Stretch)?;
        Ok((bb, pre))
    });
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    let pb = features_bar(all.len() as u64);
    let relative = kind == DepthConfig::Relative;
    let eval = Evaluation::model_depth(&mut extractor, &ds, &labels, &all, relative, |p| {
        if let Progress::Features { .. } = p {
            pb.inc(1)
        }
    })?;
    pb.finish_and_clear();
    let alignment = match kind {
        DepthConfig::Relative => {
            "relative inverse depth aligned to each image's truth by least-squares scale and shift (in inverse depth), capped at its farthest true depth"
        }
        DepthConfig::Metric { .. } => "none (metric depth, metres)",
    };
    println!("alignment: {alignment}");
    let what = format!("{} (its own depth)", info.variant());
    let json =
        serde_json::json!({"head": null, "depth": info.head_description(), "alignment": alignment});
    report(&args, &what, &ds, resolution, &eval, json)
}
