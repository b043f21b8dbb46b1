//! `dinoedge pca MODEL IMAGE... --out DIR`

use std::path::PathBuf;

use anyhow::{Context, Result};
use dinoedge_model::ResizeMode;
use dinoedge_render::overlay::{tile, upsample};
use dinoedge_render::{PcaView, pca_images};

use super::{Damaged, ModelArgs, finish, out_dir, parse_resize, progress, stem};

/// Arguments of `dinoedge pca`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images (PNG or JPEG); the PCA is fitted on all of them together.
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Output directory: <stem>_pca.png per image (the image and its PCA picture side by side).
    #[arg(long, short)]
    out: PathBuf,
    /// Foreground threshold on the min-max-scaled first component (0..1).
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Colour every patch (no foreground separation).
    #[arg(long)]
    no_foreground: bool,
    /// How images are brought to the input size: stretch, crop, fill, letterbox.
    #[arg(long, default_value = "stretch", value_parser = parse_resize)]
    resize: ResizeMode,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.threshold),
        "--threshold must be within 0..1"
    );
    out_dir(&args.out)?;
    let mut bb = args.model.load(&args.model.options())?;
    let mut pre = bb.preprocessor(args.resize)?;
    let pb = progress(args.images.len(), "features");
    let (mut done, mut failed, mut damaged) = (vec![], vec![], Damaged::default());
    for image in &args.images {
        match damaged.load(image).and_then(|img| {
            let f = bb.run_image(&mut pre, &img)?;
            Ok((img, f))
        }) {
            Ok((img, f)) => done.push((image.clone(), img, f)),
            Err(e) => failed.push((image.clone(), e)),
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if !done.is_empty() {
        let grids: Vec<_> = done.iter().map(|(_, _, f)| f.patches().view()).collect();
        let view = PcaView {
            foreground_threshold: (!args.no_foreground).then_some(args.threshold),
        };
        let pictures = pca_images(&grids, view).context("PCA of the patch features")?;
        for ((path, img, _), pic) in done.iter().zip(pictures) {
            let (w, h) = img.dimensions();
            let big = upsample_nearest_then_smooth(&pic, w, h);
            let out = args.out.join(format!("{}_pca.png", stem(path)));
            tile(&[img.clone(), big], 2, 0)
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        println!("{} PCA pictures -> {}", done.len(), args.out.display());
    }
    finish(&failed, &damaged, args.images.len())
}

/// Patch-grid pictures look best blocky-then-smoothed: nearest to 4x, bilinear to the image.
fn upsample_nearest_then_smooth(pic: &image::RgbImage, w: u32, h: u32) -> image::RgbImage {
    let (pw, ph) = pic.dimensions();
    let blocky = image::imageops::resize(pic, pw * 4, ph * 4, image::imageops::FilterType::Nearest);
    upsample(&blocky, w, h)
}
