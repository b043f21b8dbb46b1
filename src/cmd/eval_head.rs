//! `dinoedge eval-head MODEL --head HEAD DATA`: mIoU and pixel accuracy, or RMSE, AbsRel
//! and δ<1.25, of a head on a labelled folder; a table, and JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_heads::{DepthOutput, LinearHead};
use dinoedge_model::{Backbone, ModelInfo, ResizeMode, Resolution};
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
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: PathBuf,
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

/// Evaluate a head.
pub fn run(args: Args) -> Result<()> {
    let head = LinearHead::load(&args.head, args.max_depth)
        .with_context(|| format!("loading the head {}", args.head.display()))?;
    let ds = Dataset::open(&args.data).context("reading the labelled folder")?;
    let info = ModelInfo::read(&args.model.model)
        .with_context(|| format!("reading {}", args.model.model.display()))?;
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
            args.head.display(),
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
    println!(
        "{} on {} images of {} at {resolution}:\n{}",
        args.head.display(),
        all.len(),
        ds.root.display(),
        eval.table()
    );
    if let Some(path) = &args.json {
        let mut v = eval.to_json();
        v["head"] = serde_json::json!(args.head);
        v["model"] = serde_json::json!(args.model.model);
        v["dataset"] = serde_json::json!(ds.root);
        v["resolution"] = resolution.to_string().into();
        v["images"] = all.len().into();
        v["features"] = serde_json::json!({
            "computed": extractor.stats.misses,
            "cached": extractor.stats.hits,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("scores -> {}", path.display());
    }
    Ok(())
}
