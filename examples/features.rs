//! Dense DINOv2 features of every image in a folder, as `.npy` files: `NAME_patches.npy`
//! (`[h, w, C]`, one vector per 14x14 patch) and `NAME_cls.npy` (`[C]`).
//!
//! ```sh
//! cargo run --release --example features -- MODEL.onnx IMAGE_DIR OUT_DIR [HxW]
//! # e.g. with the test fixtures:
//! cargo run --release --example features -- \
//!     ../shared/fixtures/dinov2-small/onnx/model_int8.onnx ../shared/fixtures/images/voc2012_val_vainf \
//!     out 224x308
//! ```
//!
//! The same as `dinoedge features`, in a dozen lines of the library: load once, run per image.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use dinoedge_model::{Backbone, BackboneOptions, ResizeMode, load_rgb};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, images, out, rest @ ..] = &args[..] else {
        bail!("usage: features MODEL.onnx IMAGE_DIR OUT_DIR [HxW]");
    };
    let options = BackboneOptions {
        resolution: rest.first().map(|s| s.parse()).transpose()?,
        ..Default::default()
    };
    let mut backbone =
        Backbone::load(model, &options).with_context(|| format!("loading {model}"))?;
    // the whole image, aspect ratio kept, centred on a black border
    let mut pre = backbone.preprocessor(ResizeMode::Letterbox)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {out}"))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(images)
        .with_context(|| format!("reading {images}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            matches!(ext.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
        })
        .collect();
    paths.sort();
    for path in &paths {
        let image = load_rgb(path)?;
        let features = backbone.run_image(&mut pre, &image)?;
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let target = |what: &str| PathBuf::from(out).join(format!("{stem}_{what}.npy"));
        ndarray_npy::write_npy(target("patches"), features.patches())?;
        ndarray_npy::write_npy(target("cls"), features.cls())?;
        let (h, w, c) = features.patches().dim();
        println!("{}: {h}x{w} patches of {c}", path.display());
    }
    println!("{} images, features in {out}", paths.len());
    Ok(())
}
