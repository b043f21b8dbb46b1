//! One module per subcommand, and the arguments they share.

pub mod attention;
pub mod bench;
pub mod board;
pub mod cameras;
pub mod capture;
pub mod compare;
pub mod eval_head;
pub mod features;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod pca;
pub mod predict;
pub mod run;
pub mod train_head;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dinoedge_heads::LinearHead;
use dinoedge_model::{
    Backbone, BackboneOptions, CacheMode, ModelInfo, ResizeMode, Resolution, Runtime,
};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments every command that runs the backbone takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX model file (e.g. dinov2-small/onnx/model_int8.onnx), or a name from `dinoedge models`
    /// that is in the cache (vits14-int8).
    #[arg(value_parser = fetch::model_ref)]
    pub model: PathBuf,
    /// Input size HxW, both multiples of 14 (default: the model's crop size, else 224x224).
    #[arg(long, short)]
    pub size: Option<Resolution>,
    /// Backbone threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where compiled models are cached (default: $DINOEDGE_CACHE_DIR or ~/.cache/dinoedge/compiled).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the compile cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Where the backbone runs: `cpu`, `cuda` (an NVIDIA GPU, built with `--features cuda`),
    /// or `cuda-or-cpu` (the GPU where there is one, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = parse_runtime)]
    pub runtime: Runtime,
}

impl ModelArgs {
    /// Backbone options from these arguments.
    pub fn options(&self) -> BackboneOptions {
        BackboneOptions {
            resolution: self.size,
            threads: self.threads,
            cache: if self.no_cache {
                CacheMode::Off
            } else {
                self.cache_dir
                    .clone()
                    .map(CacheMode::Dir)
                    .unwrap_or_default()
            },
            runtime: self.runtime,
            ..Default::default()
        }
    }

    /// Read and analyse the model file (no compilation).
    pub fn read(&self) -> Result<ModelInfo> {
        ModelInfo::read(&self.model).with_context(|| format!("reading {}", self.model.display()))
    }

    /// Load the backbone with a spinner while it compiles.
    pub fn load(&self, options: &BackboneOptions) -> Result<Backbone> {
        self.compile_with_spinner(|| Backbone::load(&self.model, options))
    }

    /// Compile a model already read with [`ModelArgs::read`] (the file is not parsed again).
    pub fn load_info(&self, info: ModelInfo, options: &BackboneOptions) -> Result<Backbone> {
        self.compile_with_spinner(|| Backbone::from_model_info(info, options))
    }

    fn compile_with_spinner(
        &self,
        compile: impl FnOnce() -> dinoedge_model::Result<Backbone>,
    ) -> Result<Backbone> {
        let spinner =
            ProgressBar::new_spinner().with_message(format!("loading {}", self.model.display()));
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        let bb = compile().with_context(|| format!("loading {}", self.model.display()));
        spinner.finish_and_clear();
        let bb = bb?;
        let r = bb.load_report();
        tracing::info!(
            "loaded {} at {} in {:.2?} ({:?}; {}, {} threads)",
            bb.info().variant(),
            bb.resolution(),
            r.total,
            r.source,
            bb.runtime(),
            bb.threads()
        );
        if let Some(note) = &r.cache_note {
            tracing::info!("{note}");
        }
        // once per process (`info` loads twice, `compare` two models)
        static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Some(note) = &r.runtime_note
            && !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // not `eprintln!`: it panics when stderr is a closed pipe (`… 2>&1 | head -1`)
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("note: {note}\n").as_bytes(),
            );
        }
        Ok(bb)
    }
}

/// A head reads the features of the backbone family it was trained on only (DINOv3's differ
/// from DINOv2's even at the same width): an error that names both. Released heads (`.pth`)
/// are DINOv2's; a trained head records its backbone (`backbone_family`, or the family at the
/// start of `backbone` in heads saved before it was recorded).
pub fn check_family(head: &LinearHead, info: &ModelInfo) -> Result<()> {
    let trained = match head {
        LinearHead::Seg(s) => s.trained.as_ref(),
        LinearHead::Depth(d) => d.trained.as_ref(),
    };
    let (family, backbone) = match trained {
        None => (
            "DINOv2".to_string(),
            "DINOv2 (Meta's released heads)".to_string(),
        ),
        Some(m) => {
            let backbone = m.get("backbone").cloned().unwrap_or_default();
            let family = m.get("backbone_family").cloned().or_else(|| {
                ["Depth Anything V2", "DINOv3", "DINOv2"]
                    .into_iter()
                    .find(|f| backbone.starts_with(f))
                    .map(str::to_string)
            });
            match family {
                Some(f) => (f, backbone),
                None => return Ok(()), // says nothing of its backbone: the width check decides
            }
        }
    };
    let model_family = info.graph.family().to_string();
    if family != model_family {
        anyhow::bail!(
            "the head was trained on {family} features ({backbone}) but {} is {}: a head reads              the features of its own backbone only; train one on this model with              `dinoedge train-head`",
            info.path.display(),
            info.variant()
        );
    }
    Ok(())
}

/// Backbone options for running `head` on `model`: the head checked against the backbone's
/// width, the blocks and attention it reads asked for, and a trained head's resolution
/// unless `--size` says otherwise.
pub fn head_options(
    head: &LinearHead,
    info: &ModelInfo,
    model: &ModelArgs,
) -> Result<BackboneOptions> {
    check_family(head, info)?;
    let (dim, depth_blocks) = (info.graph.embed_dim, info.graph.num_blocks);
    let mut options = model.options();
    match head {
        LinearHead::Seg(seg) => {
            seg.check_backbone(dim)?;
            seg.configure(&mut options);
        }
        LinearHead::Depth(d) => {
            d.check_backbone(dim)?;
            d.configure(&mut options, depth_blocks);
        }
    }
    let trained = match head {
        LinearHead::Seg(s) => s.trained.as_ref(),
        LinearHead::Depth(d) => d.trained.as_ref(),
    };
    if options.resolution.is_none() {
        options.resolution = trained.and_then(|m| m.get("resolution")?.parse().ok());
    }
    Ok(options)
}

/// Parse `--runtime`.
pub fn parse_runtime(s: &str) -> Result<Runtime, String> {
    s.parse::<Runtime>().map_err(|e| e.to_string())
}

/// Parse `--resize`.
pub fn parse_resize(s: &str) -> Result<ResizeMode, String> {
    s.parse::<ResizeMode>().map_err(|e| e.to_string())
}

/// A progress bar over `n` images (hidden when stderr is not a terminal).
pub fn progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The file stem used to name outputs of `image`.
pub fn stem(image: &Path) -> String {
    image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("image")
        .to_string()
}

/// Create the output directory, with context.
pub fn out_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output directory {}", dir.display()))
}

/// The images of a loop that decoded only in part (a JPEG cut short): each is used as it
/// decoded, and reported with the loop's summary ([`finish`]).
#[derive(Default)]
pub struct Damaged(Vec<(PathBuf, String)>);

impl Damaged {
    /// Decode `path` to upright RGB8, noting it if it is damaged.
    pub fn load(&mut self, path: &Path) -> Result<image::RgbImage> {
        let loaded = dinoedge_imagefile::load(path)?;
        if let Some(damage) = loaded.damage {
            self.0.push((path.to_owned(), damage));
        }
        Ok(loaded.image)
    }
}

/// Finish a loop over images: a warning for each image that decoded only in part, and a
/// summary error when some failed (the others' outputs stay).
pub fn finish(failed: &[(PathBuf, anyhow::Error)], damaged: &Damaged, total: usize) -> Result<()> {
    for (p, damage) in &damaged.0 {
        eprintln!("warning: {}: {damage}", p.display());
    }
    if !damaged.0.is_empty() {
        eprintln!(
            "warning: {} of {total} images decoded only in part (used as decoded)",
            damaged.0.len()
        );
    }
    for (p, e) in failed {
        eprintln!("error: {}: {e:#}", p.display());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {total} images failed (outputs of the others were written)",
            failed.len()
        )
    }
}
