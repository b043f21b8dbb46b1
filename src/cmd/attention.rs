//! `dinoedge attention MODEL IMAGE --out PNG`

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_model::{ResizeMode, load_rgb};
use dinoedge_render::{Colormap, attention_grid};

use super::{ModelArgs, parse_resize};

/// Arguments of `dinoedge attention`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The image (PNG or JPEG).
    image: PathBuf,
    /// Output PNG: the image, the mean over heads, then one panel per head.
    #[arg(long, short)]
    out: PathBuf,
    /// Colour map: inferno, viridis, turbo, gray.
    #[arg(long, default_value = "inferno")]
    colormap: String,
    /// Opacity of the attention over the image (0..1).
    #[arg(long, default_value_t = 0.65)]
    alpha: f32,
    /// How the image is brought to the input size: stretch, crop, fill, letterbox.
    #[arg(long, default_value = "stretch", value_parser = parse_resize)]
    resize: ResizeMode,
}

pub fn run(args: Args) -> Result<()> {
    let cmap: Colormap = args.colormap.parse()?;
    let img = load_rgb(&args.image)?;
    let mut options = args.model.options();
    options.attention = true;
    let mut bb = args.model.load(&options)?;
    let mut pre = bb.preprocessor(args.resize)?;
    let placement = pre.placement(img.width(), img.height());
    let f = bb.run_image(&mut pre, &img)?;
    let attn = f
        .attention
        .as_ref()
        .context("the model returned no attention")?;
    // Show the part of the image the model saw.
    let [sx, sy, sw, sh] = placement.src;
    let seen = image::imageops::crop_imm(
        &img,
        sx.round() as u32,
        sy.round() as u32,
        sw.round() as u32,
        sh.round() as u32,
    )
    .to_image();
    let grid = attention_grid(&seen, attn.view(), cmap, args.alpha)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    grid.save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} heads of block {} at {} -> {}",
        attn.dim().0,
        bb.info().graph.num_blocks - 1,
        bb.resolution(),
        args.out.display()
    );
    Ok(())
}
