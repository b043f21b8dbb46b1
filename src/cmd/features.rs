//! `dinoedge features MODEL IMAGE... --out DIR`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dinoedge_model::Backbone;
use dinoedge_model::{Features, ResizeMode};
use ndarray::{Array4, ArrayD, Axis, Ix4};
use ndarray_npy::{read_npy, write_npy};

use super::{Damaged, ModelArgs, finish, out_dir, parse_resize, progress, stem};

/// Arguments of `dinoedge features`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images (PNG or JPEG), or pixel values already preprocessed as `.npy` (float32,
    /// `[3, H, W]` or `[N, 3, H, W]` at the model's input size; item i of N > 1 is saved as
    /// `<stem>_<i>`): `--resize` does not apply to them.
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
            if is_npy(image) {
                return run_npy(&mut bb, image, &args.out);
            }
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
        "files": "<stem>_patches.npy [h,w,D], <stem>_cls.npy [D], <stem>_registers.npy [R,D], <stem>_blockNN_patches.npy, <stem>_blockNN_cls.npy, <stem>_attention.npy [heads,h,w], <stem>_depth.npy [H,W] (depth models)",
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

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Pixel values from a `.npy` file: `[3, H, W]` or `[N, 3, H, W]`, float32.
fn read_pixels(path: &Path) -> Result<Array4<f32>> {
    let a: ArrayD<f32> = read_npy(path).with_context(|| {
        format!(
            "reading {} (pixel values as a float32 .npy: [3, H, W] or [N, 3, H, W])",
            path.display()
        )
    })?;
    let a = match a.ndim() {
        3 => a.insert_axis(Axis(0)),
        _ => a,
    };
    let shape = a.shape().to_vec();
    match a.into_dimensionality::<Ix4>() {
        Ok(a) if shape[1] == 3 && shape[0] > 0 => Ok(a),
        _ => anyhow::bail!(
            "{}: pixel values of shape {shape:?}; expected [3, H, W] or [N, 3, H, W]",
            path.display()
        ),
    }
}

/// Run each item of a `.npy` of pixel values (already preprocessed) and save its features.
fn run_npy(bb: &mut Backbone, path: &Path, out: &Path) -> Result<()> {
    let pixels = read_pixels(path)?;
    let n = pixels.len_of(Axis(0));
    for (i, item) in pixels.axis_chunks_iter(Axis(0), 1).enumerate() {
        let f = bb.run(item)?.remove(0);
        let name = match n {
            1 => stem(path),
            _ => format!("{}_{i}", stem(path)),
        };
        save(&f, out, &name)?;
    }
    Ok(())
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
    if let Some(d) = &f.depth {
        w(p("depth"), write_npy(dir.join(p("depth")), d))?;
    }
    Ok(())
}
