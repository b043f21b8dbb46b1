//! Train a linear segmentation head on a labelled folder, save it, and run it on the images
//! it did not train on: `OUT_DIR/head.safetensors` and one `NAME_seg.png` (the classes in
//! their palette's colours over the image) per validation image.
//!
//! ```sh
//! cargo run --release --example train_seg -- MODEL.onnx LABELLED_DIR OUT_DIR [EPOCHS]
//! # e.g. with the test fixtures (VOC images, `NAME_image.png` beside `NAME_target.png`):
//! cargo run --release --example train_seg -- \
//!     ../shared/fixtures/dinov2-small/onnx/model_int8.onnx \
//!     ../shared/fixtures/images/voc2012_val_vainf out 20
//! ```
//!
//! What `dinoedge train-head` and `dinoedge predict` do, in the library's terms: the backbone
//! runs once per image (the features are kept in memory here; `train-head` also caches them
//! on disk), the head trains on those features, and the saved head loads back as any other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, ModelInfo, ResizeMode, load_rgb};
use dinoedge_train::dataset::{Dataset, MaskFormat};
use dinoedge_train::featcache::Extractor;
use dinoedge_train::fit::Task;
use dinoedge_train::trainer::TrainOptions;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, data, out, rest @ ..] = &args[..] else {
        bail!("usage: train_seg MODEL.onnx LABELLED_DIR OUT_DIR [EPOCHS]");
    };
    let epochs = rest.first().map(|e| e.parse()).transpose()?.unwrap_or(30);
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    // the labelled images, a fifth held out
    let ds = Dataset::open(Path::new(data)).with_context(|| format!("reading {data}"))?;
    let task = Task::Segmentation {
        format: MaskFormat::voc(),
        attention: false,
    };
    let labels = task.load_labels(&ds)?;
    let (train, val) = ds.split(0.2);
    println!(
        "{} images: {} to train on, {} held out",
        ds.samples.len(),
        train.len(),
        val.len()
    );

    // the backbone, loaded the first time a feature is needed
    let info = ModelInfo::read(Path::new(model)).with_context(|| format!("reading {model}"))?;
    let heads = info.heads.unwrap_or(info.graph.embed_dim / 64);
    let options = BackboneOptions::default();
    let loader_info = info.clone();
    let mut extractor = Extractor::new(None, info.graph.patch_size, move || {
        let backbone = Backbone::from_model_info(loader_info.clone(), &options)?;
        let pre = backbone.preprocessor(ResizeMode::Stretch)?;
        Ok((backbone, pre))
    });
    let (head, report) = task.train(
        &mut extractor,
        &ds,
        &labels,
        (&train, &val),
        true,
        &TrainOptions {
            epochs,
            ..Default::default()
        },
        heads,
        Default::default(),
        |_| {},
    )?;
    let best = &report.epochs[report.best_epoch.saturating_sub(1)];
    println!(
        "trained {} epochs, best {}: train loss {:.4}, val mIoU {:.3}",
        report.epochs.len(),
        report.best_epoch,
        best.train_loss,
        best.val_metric.unwrap_or(f32::NAN)
    );
    let LinearHead::Seg(head) = head else {
        bail!("a segmentation task trained a depth head");
    };
    let saved = out.join("head.safetensors");
    head.save(&saved)?;

    // the saved head, loaded back and run on the held-out images
    let LinearHead::Seg(head) = LinearHead::load(&saved, None)? else {
        bail!("{} is not a segmentation head", saved.display());
    };
    let mut backbone = Backbone::from_model_info(info, &BackboneOptions::default())?;
    let mut pre = backbone.preprocessor(ResizeMode::Stretch)?;
    for &i in &val {
        let path = &ds.samples[i].image;
        let image = load_rgb(path)?;
        let features = backbone.run_image(&mut pre, &image)?;
        let (w, h) = image.dimensions();
        let seg = head.predict_features(&features, h as usize, w as usize)?;
        let mut picture = image.clone();
        for ((y, x), class) in seg.labels.indexed_iter() {
            let color = head.palette.colors[*class as usize % head.palette.colors.len()];
            let p = picture.get_pixel_mut(x as u32, y as u32);
            for (v, c) in p.0.iter_mut().zip(color) {
                *v = ((*v as u16 + c as u16) / 2) as u8;
            }
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let target = out.join(format!("{stem}_seg.png"));
        picture.save(&target)?;
        println!("{} -> {}", path.display(), target.display());
    }
    println!("head in {}", saved.display());
    Ok(())
}
