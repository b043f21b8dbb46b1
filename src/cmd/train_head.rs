//! `dinoedge train-head MODEL DATA --out HEAD.safetensors`: train a linear segmentation or
//! depth head on a labelled folder, with the backbone's features cached on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dinoedge_heads::{DepthOutput, LinearHead, Palette};
use dinoedge_model::{Backbone, ModelInfo, ResizeMode};
use dinoedge_train::dataset::{Dataset, DepthFormat, MaskFormat};
use dinoedge_train::featcache::{Extractor, FeatureCache, FeatureSpec};
use dinoedge_train::fit::{Evaluation, Progress, Task};
use dinoedge_train::trainer::TrainOptions;
use indicatif::{ProgressBar, ProgressStyle};

use super::ModelArgs;

/// What a head is trained for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskArg {
    /// Decide from the first label: 16-bit PNG or .npy is depth, else segmentation.
    Auto,
    /// Semantic segmentation from class masks.
    Seg,
    /// Metric depth from depth maps.
    Depth,
}

/// How a depth head outputs depth.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepthOutputArg {
    /// DINOv2's 256 "UD" bins with linear normalisation.
    Bins,
    /// Direct regression of log depth.
    Log,
}

/// Where labelled folders are read and features cached: the options `train-head` and
/// `eval-head` share.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Segmentation: class names and colours of colour masks, `voc` or a JSON file
    /// `{"names": [...], "colors": [[r,g,b], ...]}`.
    #[arg(long)]
    pub palette: Option<String>,
    /// Segmentation: the number of classes of class-id (grey) masks, named `class 0`, ….
    #[arg(long, conflicts_with = "palette")]
    pub classes: Option<usize>,
    /// Segmentation: the id of unlabelled pixels in class-id masks.
    #[arg(long, default_value_t = 255)]
    pub ignore_index: u8,
    /// Depth: 16-bit PNG units per metre (1000 = millimetres).
    #[arg(long, default_value_t = 1000.0)]
    pub depth_scale: f32,
    /// Feature cache folder (default: $DINOEDGE_CACHE_DIR/features, else ~/.cache/dinoedge/features).
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// Run the backbone on every image; neither read nor write cached features.
    #[arg(long)]
    pub no_feature_cache: bool,
}

impl DataArgs {
    /// The feature cache root, if caching.
    pub fn cache_root(&self) -> Option<PathBuf> {
        if self.no_feature_cache {
            return None;
        }
        self.feature_cache.clone().or_else(|| {
            std::env::var_os("DINOEDGE_CACHE_DIR")
                .filter(|v| !v.is_empty())
                .map(|d| PathBuf::from(d).join("features"))
                .or_else(|| dirs::cache_dir().map(|d| d.join("dinoedge").join("features")))
        })
    }

    /// The mask format from `--palette` / `--classes`, VOC by default.
    pub fn mask_format(&self) -> Result<MaskFormat> {
        let mut f = MaskFormat::voc();
        f.ignore_index = self.ignore_index;
        if let Some(k) = self.classes {
            anyhow::ensure!((1..=255).contains(&k), "--classes must be within 1..255");
            f.palette = Palette::generic(k);
            f.ignore_colors.clear();
        } else if let Some(p) = &self.palette
            && p != "voc"
        {
            f.palette = Palette::read_json(Path::new(p))?;
            f.ignore_colors.retain(|c| !f.palette.colors.contains(c));
        }
        Ok(f)
    }
}

/// Arguments of `dinoedge train-head`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled folder: images/ with masks/ (or labels/, depth/), or NAME_image.png beside
    /// NAME_target.png (or _mask, _label, _depth).
    data: PathBuf,
    /// Where the head is written (safetensors; a training report goes beside it as .json).
    #[arg(long, short)]
    out: PathBuf,
    /// What to train.
    #[arg(long, value_enum, default_value = "auto")]
    task: TaskArg,
    #[command(flatten)]
    data_args: DataArgs,
    /// Segmentation: append the last block's per-head attention maps to the features.
    #[arg(long)]
    attention: bool,
    /// Depth: read the last block (1) or four evenly spaced blocks (4), as DINOv2's
    /// `linear` and `linear4` heads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    layers: u8,
    /// Depth: bins (DINOv2's) or log-depth regression.
    #[arg(long, value_enum, default_value = "bins")]
    depth_output: DepthOutputArg,
    /// Depth: the largest bin depth, metres.
    #[arg(long, default_value_t = 10.0)]
    max_depth: f32,
    /// Most epochs.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Patches per step.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Fraction of the images held out for validation (0: none; early stopping then watches
    /// the training loss).
    #[arg(long, default_value_t = 0.2)]
    val_split: f32,
    /// Stop after this many epochs without a better validation loss (0: never).
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Do not add left-right mirrored images.
    #[arg(long)]
    no_flip: bool,
    /// Shuffling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("static template")
            .progress_chars("=> "),
    );
    pb
}

/// The features bar: images done, with cache use in the message.
pub fn features_bar(total: u64) -> ProgressBar {
    bar(
        total,
        "{spinner} features [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
    )
}

/// Detect the task from the first label file.
fn detect_task(ds: &Dataset) -> Result<TaskArg> {
    let first = &ds.samples[0].label;
    if first.extension().and_then(|e| e.to_str()) == Some("npy") {
        return Ok(TaskArg::Depth);
    }
    let decoded = image::open(first).with_context(|| format!("decoding {}", first.display()))?;
    Ok(match decoded {
        image::DynamicImage::ImageLuma16(_) => TaskArg::Depth,
        _ => TaskArg::Seg,
    })
}

/// Train a head.
/// What the saved head records about how it was trained (read back by `run` and `eval-head`).
fn head_metadata(
    info: &ModelInfo,
    model_sha: &str,
    resolution: dinoedge_model::Resolution,
    ds: &Dataset,
    task: &Task,
) -> Result<HashMap<String, String>> {
    let mut metadata = HashMap::from([
        ("backbone_sha256".to_string(), model_sha.to_string()),
        ("backbone".to_string(), info.variant()),
        (
            "backbone_family".to_string(),
            info.graph.family().to_string(),
        ),
        ("backbone_dim".to_string(), info.graph.embed_dim.to_string()),
        ("resolution".to_string(), resolution.to_string()),
        ("resize".to_string(), "stretch".to_string()),
        (
            "dinoedge_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("dataset".to_string(), ds.root.display().to_string()),
    ]);
    if let Task::Depth { blocks, .. } = task {
        metadata.insert("layers".into(), serde_json::to_string(blocks)?);
    } else {
        metadata.insert(
            "layers".into(),
            serde_json::to_string(&[info.graph.num_blocks - 1])?,
        );
    }
    Ok(metadata)
}

/// What to train, from `--task` (or the labels' kind) and the flags that shape it.
fn task_for(args: &Args, ds: &Dataset, g: &dinoedge_model::GraphInfo) -> Result<Task> {
    let task_arg = match args.task {
        TaskArg::Auto => detect_task(ds)?,
        t => t,
    };
    let layers = args.layers as usize;
    Ok(match task_arg {
        TaskArg::Seg | TaskArg::Auto => Task::Segmentation {
            format: args.data_args.mask_format()?,
            attention: args.attention,
        },
        TaskArg::Depth => {
            anyhow::ensure!(
                args.max_depth > 0.01 && args.max_depth.is_finite(),
                "--max-depth must be above 0.01 m"
            );
            anyhow::ensure!(layers == 1 || layers == 4, "--layers is 1 or 4");
            Task::Depth {
                format: DepthFormat {
                    png_units_per_metre: args.data_args.depth_scale,
                },
                blocks: if layers == 1 {
                    vec![g.num_blocks - 1]
                } else {
                    (1..=4).map(|i| i * g.num_blocks / 4 - 1).collect()
                },
                output: match args.depth_output {
                    DepthOutputArg::Bins => DepthOutput::Bins,
                    DepthOutputArg::Log => DepthOutput::LogDepth,
                },
                range: (0.001, args.max_depth),
                bins: 256,
            }
        }
    })
}

pub fn run(args: Args) -> Result<()> {
    let ds = Dataset::open(&args.data).context("reading the labelled folder")?;
    if !ds.unlabelled.is_empty() {
        eprintln!(
            "warning: {} image(s) without a label are skipped (first: {})",
            ds.unlabelled.len(),
            ds.unlabelled[0].display()
        );
    }
    let info = ModelInfo::read(&args.model.model)
        .with_context(|| format!("reading {}", args.model.model.display()))?;
    let g = &info.graph;
    let task = task_for(&args, &ds, g)?;
    let heads = info.heads.unwrap_or(g.embed_dim / 64);
    anyhow::ensure!(
        (0.0..1.0).contains(&args.val_split),
        "--val-split must be within 0..1"
    );
    let labels = task.load_labels(&ds)?;
    let (train_idx, val_idx) = ds.split(args.val_split);

    let resolution = args.model.size.unwrap_or_else(|| info.default_resolution());
    let model_sha = dinoedge_model::cache::sha256_file(&args.model.model)
        .with_context(|| format!("hashing {}", args.model.model.display()))?;
    let spec = FeatureSpec {
        model_sha256: model_sha.clone(),
        resolution,
        blocks: match &task {
            Task::Depth { blocks, .. } => blocks.clone(),
            Task::Segmentation { .. } => vec![],
        },
        attention: matches!(
            task,
            Task::Segmentation {
                attention: true,
                ..
            }
        ),
    };
    let cache = match args.data_args.cache_root() {
        Some(root) => Some(FeatureCache::open(&root, &spec)?),
        None => None,
    };
    let mut options = spec.options(args.model.options());
    options.resolution = Some(resolution);
    let model_path = args.model.model.clone();
    let mut extractor = Extractor::new(cache, g.patch_size, || {
        tracing::info!(
            "loading {} for the features not cached",
            model_path.display()
        );
        let bb = Backbone::from_model_info(info.clone(), &options)?;
        let pre = bb.preprocessor(ResizeMode::Stretch)?;
        Ok((bb, pre))
    });

    let flip = !args.no_flip;
    let n_features = train_idx.len() * if flip { 2 } else { 1 } + val_idx.len();
    let fbar = features_bar(n_features as u64);
    let ebar = bar(
        args.epochs as u64,
        "{spinner} training [{bar:30}] epoch {pos}/{len} {elapsed_precise} {msg}",
    );
    let metric_name = if matches!(task, Task::Segmentation { .. }) {
        "val mIoU"
    } else {
        "val AbsRel"
    };
    let metadata = head_metadata(&info, &model_sha, resolution, &ds, &task)?;
    let t0 = std::time::Instant::now();
    let (head, report) = task.train(
        &mut extractor,
        &ds,
        &labels,
        (&train_idx, &val_idx),
        flip,
        &TrainOptions {
            epochs: args.epochs,
            lr: args.lr,
            weight_decay: args.weight_decay,
            batch: args.batch,
            patience: args.patience,
            seed: args.seed,
            threads: args
                .model
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        },
        heads,
        metadata,
        |p| match p {
            Progress::Features { .. } => fbar.inc(1),
            Progress::Epoch(e) => {
                if !fbar.is_finished() {
                    fbar.finish_and_clear();
                }
                ebar.set_position(e.epoch as u64);
                ebar.set_message(format!(
                    "loss {:.4} val loss {:.4} {metric_name} {:.3}",
                    e.train_loss,
                    e.val_loss.unwrap_or(f32::NAN),
                    e.val_metric.unwrap_or(f32::NAN)
                ));
            }
        },
    )?;
    ebar.finish_and_clear();
    fbar.finish_and_clear();
    let train_secs = t0.elapsed().as_secs_f32();
    let stats = extractor.stats;
    let epoch_secs: f32 =
        report.epochs.iter().map(|e| e.seconds).sum::<f32>() / report.epochs.len().max(1) as f32;

    match &head {
        LinearHead::Seg(s) => s.save(&args.out)?,
        LinearHead::Depth(d) => d.save(&args.out)?,
    }
    let first = report.epochs.first().expect("at least one epoch");
    let best = &report.epochs[report.best_epoch.saturating_sub(1)];
    println!(
        "features: {} computed, {} from the cache{}",
        stats.misses,
        stats.hits,
        extractor
            .cache()
            .map(|c| format!(
                " ({}, {:.1} MB)",
                c.dir().display(),
                c.size_bytes() as f64 / 1e6
            ))
            .unwrap_or_default()
    );
    println!(
        "trained {} epochs ({:.1} ms/epoch on {} patches{}), best epoch {}{}: loss {:.4} -> {:.4}, val loss {:.4}",
        report.epochs.len(),
        epoch_secs * 1e3,
        report.rows.0,
        if flip { " incl. flips" } else { "" },
        report.best_epoch,
        if report.stopped_early {
            " (stopped early)"
        } else {
            ""
        },
        first.train_loss,
        best.train_loss,
        best.val_loss.unwrap_or(f32::NAN),
    );

    // full-resolution scores with the saved head, on both splits
    let evaluate = |ex: &mut Extractor<'_>, idx: &[usize]| -> Result<Option<Evaluation>> {
        if idx.is_empty() {
            return Ok(None);
        }
        Ok(Some(Evaluation::run(&head, ex, &ds, &labels, idx, |_| {})?))
    };
    let train_eval = evaluate(&mut extractor, &train_idx)?;
    let val_eval = evaluate(&mut extractor, &val_idx)?;
    if let Some(e) = &train_eval {
        println!("training images ({}):\n{}", train_idx.len(), e.table());
    }
    if let Some(e) = &val_eval {
        println!("validation images ({}):\n{}", val_idx.len(), e.table());
    }
    let report_path = args.out.with_extension("json");
    let json = serde_json::json!({
        "head": args.out,
        "model": args.model.model,
        "resolution": resolution.to_string(),
        "dataset": ds.root,
        "train_images": train_idx.iter().map(|&i| &ds.samples[i].image).collect::<Vec<_>>(),
        "val_images": val_idx.iter().map(|&i| &ds.samples[i].image).collect::<Vec<_>>(),
        "features": {
            "computed": stats.misses,
            "cached": stats.hits,
            "cache_dir": extractor.cache().map(|c| c.dir().to_path_buf()),
            "cache_bytes": extractor.cache().map(|c| c.size_bytes()),
        },
        "seconds": train_secs,
        "seconds_per_epoch": epoch_secs,
        "report": report,
        "train": train_eval.as_ref().map(Evaluation::to_json),
        "val": val_eval.as_ref().map(Evaluation::to_json),
    });
    std::fs::write(&report_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!(
        "head -> {} (report: {})",
        args.out.display(),
        report_path.display()
    );
    Ok(())
}
