//! `dinoedge features MODEL IMAGE... --out DIR`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dinoedge_model::{Features, ResizeMode};
use ndarray_npy::write_npy;

use super::{Damaged, ModelArgs, finish, out_dir, parse_resize, progress, stem};

/// Arguments of `dinoedge features`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images (PNG or JPEG).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Output directory.
    #[arg(long, short)]
    out: PathBuf,
    /// Intermediate blocks to save too, 0-based (e.g. 2,5,8,11).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Apply the final LayerNorm to the intermediate blocks (dinov2's get_intermediate_layers(norm=True)).
    #[arg(long)]
    norm: bool,
    /// Also save the last block's CLS attention [heads, h, w].
    #[arg(long)]
    attention: bool,
    /// How images are brought to the input size: stretch, crop (Hugging Face 224/256), fill, letterbox.
    #[arg(long, default_value = "stretch", value_parser = parse_resize)]
    resize: ResizeMode,
}

pub fn run(args: Args) -> Result<()> {
    out_dir(&args.out)?;
    let mut options = args.model.options();
    options.blocks = args.layers.clone();
    options.normalize_blocks = args.norm;
    options.attention = args.attention;
    let mut bb = args.model.load(&options)?;
    let mut pre = bb.preprocessor(args.resize)?;
    let pb = progress(args.images.len(), "features");
    let (mut failed, mut damaged) = (vec![], Damaged::default());
    for image in &args.images {
        let r = (|| -> Result<()> {
            let img = damaged.load(image)?;
            let f = bb.run_image(&mut pre, &img)?;
            save(&f, &args.out, &stem(image))
        })();
        if let Err(e) = r {
            failed.push((image.clone(), e));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let manifest = serde_json::json!({
        "model": bb.info().path,
        "family": bb.info().graph.family().to_string(),
        "variant": bb.info().variant(),
        "precision": bb.precision().to_string(),
        "size": bb.resolution().to_string(),
        "grid": [bb.layout().grid.0, bb.layout().grid.1],
        "dim": bb.layout().dim,
        "registers": bb.layout().registers,
        "layers": args.layers,
        "layers_normalized": args.norm,
        "resize": format!("{:?}", args.resize),
        "files": "<stem>_patches.npy [h,w,D], <stem>_cls.npy [D], <stem>_registers.npy [R,D], <stem>_blockNN_patches.npy, <stem>_blockNN_cls.npy, <stem>_attention.npy [heads,h,w]",
    });
    std::fs::write(
        args.out.join("features.json"),
        serde_json::to_string_pretty(&manifest)?,
    )
    .context("writing features.json")?;
    println!(
        "{} images -> {} ({}x{} patches of {} at {})",
        args.images.len() - failed.len(),
        args.out.display(),
        bb.layout().grid.0,
        bb.layout().grid.1,
        bb.layout().dim,
        bb.resolution()
    );
    finish(&failed, &damaged, args.images.len())
}

fn save(f: &Features, dir: &Path, stem: &str) -> Result<()> {
    let w = |name: String, r: Result<(), ndarray_npy::WriteNpyError>| {
        r.with_context(|| format!("writing {}", dir.join(&name).display()))
    };
    let p = |s: &str| format!("{stem}_{s}.npy");
    w(p("patches"), write_npy(dir.join(p("patches")), f.patches()))?;
    w(p("cls"), write_npy(dir.join(p("cls")), f.cls()))?;
    if f.registers().nrows() > 0 {
        w(
            p("registers"),
            write_npy(dir.join(p("registers")), f.registers()),
        )?;
    }
    for b in &f.blocks {
        let n = format!("block{:02}_patches", b.block);
        w(p(&n), write_npy(dir.join(p(&n)), &b.tokens.patches))?;
        let n = format!("block{:02}_cls", b.block);
        w(p(&n), write_npy(dir.join(p(&n)), &b.tokens.cls))?;
    }
    if let Some(a) = &f.attention {
        w(p("attention"), write_npy(dir.join(p("attention")), a))?;
    }
    Ok(())
}
