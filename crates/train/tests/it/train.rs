//! Heads trained on the board: a segmentation head on the VOC sample images and a depth head
//! on generated scenes, both on features of the fixture backbone, through the on-disk
//! feature cache; and the errors a user sees for bad labelled folders.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dinoedge_heads::{DepthOutput, HeadsError, LinearHead};
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution};
use dinoedge_testkit::fixtures;
use dinoedge_train::dataset::{Dataset, DepthFormat, MaskFormat};
use dinoedge_train::featcache::{Extractor, FeatureCache, FeatureSpec};
use dinoedge_train::fit::{Evaluation, Progress, Task};
use dinoedge_train::trainer::{EpochLog, TrainOptions};

fn model() -> PathBuf {
    fixtures().join("dinov2-small/onnx/model.onnx")
}

fn voc() -> PathBuf {
    fixtures().join("images/voc2012_val_vainf")
}

/// An extractor for `spec` over a cache under `root`; counts backbone loads in `loads`.
fn extractor<'a>(root: &Path, spec: &FeatureSpec, loads: &'a Cell<usize>) -> Extractor<'a> {
    let cache = FeatureCache::open(root, spec).unwrap();
    let options = spec.options(BackboneOptions {
        cache: CacheMode::Off,
        ..Default::default()
    });
    Extractor::new(Some(cache), 14, move || {
        loads.set(loads.get() + 1);
        let bb = Backbone::load(model(), &options)?;
        let pre = bb.preprocessor(ResizeMode::Stretch)?;
        Ok((bb, pre))
    })
}

fn spec(resolution: Resolution, blocks: Vec<usize>, attention: bool) -> FeatureSpec {
    FeatureSpec {
        model_sha256: dinoedge_model::cache::sha256_file(&model()).unwrap(),
        resolution,
        blocks,
        attention,
    }
}

fn losses(log: &[EpochLog]) -> (f32, f32) {
    (log[0].train_loss, log.last().unwrap().train_loss)
}

#[test]
fn segmentation_head_trains_on_voc_samples_and_reuses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::open(&voc()).unwrap();
    assert_eq!(ds.samples.len(), 14);
    let task = Task::Segmentation {
        format: MaskFormat::voc(),
        attention: false,
    };
    let labels = task.load_labels(&ds).unwrap();
    let all: Vec<usize> = (0..14).collect();
    let spec = spec(Resolution::new(224, 224), vec![], false);
    let options = TrainOptions {
        epochs: 60,
        lr: 3e-3,
        patience: 0,
        ..Default::default()
    };
    let loads = Cell::new(0);
    let mut ex = extractor(tmp.path(), &spec, &loads);
    let mut feature_events = 0;
    let (head, report) = task
        .train(
            &mut ex,
            &ds,
            &labels,
            (&all, &[]),
            true,
            &options,
            6,
            HashMap::from([("resolution".into(), "224x224".into())]),
            |p| {
                if let Progress::Features { .. } = p {
                    feature_events += 1
                }
            },
        )
        .unwrap();
    assert_eq!(feature_events, 28);
    assert_eq!((ex.stats.misses, ex.stats.hits, loads.get()), (28, 0, 1));
    let (first, last) = losses(&report.epochs);
    let eval = Evaluation::run(&head, &mut ex, &ds, &labels, &all, |_| {}).unwrap();
    let Evaluation::Segmentation { confusion, .. } = &eval else {
        panic!("segmentation")
    };
    let (base_miou, base_acc) = confusion.constant_baseline(confusion.majority_class());
    println!(
        "VOC samples, 224x224, {} epochs: loss {first:.3} -> {last:.3}; training-set mIoU {:.1} % \
         (pixel accuracy {:.1} %) vs majority-class baseline mIoU {:.1} % ({:.1} %)",
        report.epochs.len(),
        100.0 * confusion.miou(),
        100.0 * confusion.pixel_accuracy(),
        100.0 * base_miou,
        100.0 * base_acc
    );
    println!("{}", eval.table());
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert!(
        confusion.miou() > base_miou + 0.3,
        "mIoU {} vs baseline {base_miou}",
        confusion.miou()
    );
    assert!(confusion.pixel_accuracy() > base_acc);

    // saved and loaded back: the same head, with its metadata
    let path = tmp.path().join("voc.safetensors");
    let LinearHead::Seg(seg) = &head else {
        panic!("segmentation head")
    };
    seg.save(&path).unwrap();
    let LinearHead::Seg(back) = LinearHead::load(&path, None).unwrap() else {
        panic!("segmentation head")
    };
    assert_eq!(back.classes(), 21);
    assert_eq!(back.palette, seg.palette);
    let meta = back.trained.as_ref().unwrap();
    assert_eq!(meta["task"], "segmentation");
    assert_eq!(meta["resolution"], "224x224");
    assert!(meta["training"].contains("\"epochs\":60"));
    let again = LinearHead::Seg(back);
    let eval2 = Evaluation::run(&again, &mut ex, &ds, &labels, &all, |_| {}).unwrap();
    assert_eq!(eval2.to_json()["miou"], eval.to_json()["miou"]);

    // a second run: every feature from the cache, the backbone never loaded
    let loads2 = Cell::new(0);
    let mut ex2 = extractor(tmp.path(), &spec, &loads2);
    task.train(
        &mut ex2,
        &ds,
        &labels,
        (&all, &[]),
        true,
        &TrainOptions {
            epochs: 2,
            ..options.clone()
        },
        6,
        HashMap::new(),
        |_| {},
    )
    .unwrap();
    assert_eq!((ex2.stats.misses, ex2.stats.hits, loads2.get()), (0, 28, 0));
    println!(
        "second run: {} feature sets from the cache, backbone loaded {} times; cache {:.1} MB",
        ex2.stats.hits,
        loads2.get(),
        ex2.cache().unwrap().size_bytes() as f64 / 1e6
    );
    // a corrupt entry is extracted again, not an error
    let entry = std::fs::read_dir(ex2.cache().unwrap().dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    std::fs::write(&entry, b"garbage").unwrap();
    let loads3 = Cell::new(0);
    let mut ex3 = extractor(tmp.path(), &spec, &loads3);
    task.rows(&mut ex3, &ds, &labels, &all, true, |_| {})
        .unwrap();
    assert_eq!((ex3.stats.misses, ex3.stats.hits, loads3.get()), (1, 27, 1));
}

#[test]
fn segmentation_head_with_attention_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = Dataset::open(&voc()).unwrap();
    let task = Task::Segmentation {
        format: MaskFormat::voc(),
        attention: true,
    };
    let labels = task.load_labels(&ds).unwrap();
    let idx: Vec<usize> = (0..6).collect();
    let spec = spec(Resolution::new(112, 112), vec![], true);
    let loads = Cell::new(0);
    let mut ex = extractor(tmp.path(), &spec, &loads);
    let (head, report) = task
        .train(
            &mut ex,
            &ds,
            &labels,
            (&idx, &[]),
            false,
            &TrainOptions {
                epochs: 30,
                lr: 3e-3,
                ..Default::default()
            },
            6,
            HashMap::new(),
            |_| {},
        )
        .unwrap();
    let LinearHead::Seg(seg) = &head else {
        panic!("segmentation head")
    };
    assert_eq!((seg.channels(), seg.attention_heads), (384 + 6, 6));
    let (first, last) = losses(&report.epochs);
    assert!(last < first, "loss {first} -> {last}");
    let path = tmp.path().join("attn.safetensors");
    seg.save(&path).unwrap();
    let LinearHead::Seg(back) = LinearHead::load(&path, None).unwrap() else {
        panic!("segmentation head")
    };
    assert_eq!(back.attention_heads, 6);
    let mut opts = BackboneOptions::default();
    back.configure(&mut opts);
    assert!(opts.attention);
    // features without attention are refused with a clear error
    let mut f = ex.features(&ds.samples[0].image, false).unwrap();
    assert!(back.predict_features(&f, 50, 50).is_ok());
    f.attention = None;
    let e = back.predict_features(&f, 50, 50).unwrap_err();
    assert!(e.to_string().contains("attention"), "{e}");
}

/// Scenes with a floor that recedes towards the top (depth from 1 m at the bottom row to 6 m at
/// the top), textured, with a near bright box; depth in millimetres as 16-bit PNG.
fn depth_scenes(dir: &Path, n: usize) {
    let mut rng = fastrand::Rng::with_seed(7);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("depth")).unwrap();
    for i in 0..n {
        let (w, h) = (160u32, 120u32);
        let (bx, by) = (rng.u32(10..110), rng.u32(10..70));
        let mut img = image::RgbImage::new(w, h);
        let mut depth = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let t = y as f32 / (h - 1) as f32; // 0 top .. 1 bottom
                let mut d = 6.0 - 5.0 * t;
                let shade = (40.0 + 180.0 * t) as u8;
                let stripe = if ((x as f32 * (1.0 + 3.0 * t)) as u32 / 8).is_multiple_of(2) {
                    30
                } else {
                    0
                };
                let mut px = [shade, shade.saturating_add(stripe), 90 + rng.u8(0..20)];
                if (bx..bx + 40).contains(&x) && (by..by + 40).contains(&y) {
                    d = 1.2;
                    px = [250, 40, 40];
                }
                img.put_pixel(x, y, image::Rgb(px));
                depth.put_pixel(x, y, image::Luma([(d * 1000.0) as u16]));
            }
        }
        // a strip of missing depth (0) at the bottom, as sensors give
        for y in h - 4..h {
            for x in 0..w {
                depth.put_pixel(x, y, image::Luma([0]));
            }
        }
        img.save(dir.join(format!("images/s{i}.png"))).unwrap();
        depth.save(dir.join(format!("depth/s{i}.png"))).unwrap();
    }
}

#[test]
fn depth_heads_train_on_generated_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("scenes");
    depth_scenes(&data, 10);
    let ds = Dataset::open(&data).unwrap();
    assert_eq!(ds.samples.len(), 10);
    let all: Vec<usize> = (0..10).collect();
    for (output, blocks) in [
        (DepthOutput::Bins, vec![11]),
        (DepthOutput::LogDepth, vec![2, 5, 8, 11]),
    ] {
        let task = Task::Depth {
            format: DepthFormat::default(),
            blocks: blocks.clone(),
            output,
            range: (0.001, 10.0),
            bins: 256,
        };
        let labels = task.load_labels(&ds).unwrap();
        let spec = spec(Resolution::new(112, 154), blocks.clone(), false);
        let loads = Cell::new(0);
        let mut ex = extractor(tmp.path(), &spec, &loads);
        let (head, report) = task
            .train(
                &mut ex,
                &ds,
                &labels,
                (&all, &[]),
                true,
                &TrainOptions {
                    epochs: 80,
                    lr: 3e-3,
                    batch: 256,
                    patience: 0,
                    ..Default::default()
                },
                6,
                HashMap::new(),
                |_| {},
            )
            .unwrap();
        let (first, last) = losses(&report.epochs);
        let Evaluation::Depth(scores) =
            Evaluation::run(&head, &mut ex, &ds, &labels, &all, |_| {}).unwrap()
        else {
            panic!("depth")
        };
        // baseline: the median training depth everywhere
        let mut all_depths: Vec<f32> = labels
            .iter()
            .flat_map(|l| match l {
                dinoedge_train::fit::Label::Depth(d) => {
                    d.iter().copied().filter(|v| *v > 0.0).collect::<Vec<_>>()
                }
                _ => vec![],
            })
            .collect();
        all_depths.sort_by(f32::total_cmp);
        let median = all_depths[all_depths.len() / 2];
        let mut base = dinoedge_train::metrics::DepthScores::default();
        for l in &labels {
            if let dinoedge_train::fit::Label::Depth(d) = l {
                base.add(d.view(), d.mapv(|_| median).view());
            }
        }
        let base = base.summary();
        println!(
            "depth {output:?} on blocks {blocks:?}: SILog {first:.3} -> {last:.3}; AbsRel {:.3} \
             (constant {median:.2} m: {:.3}), RMSE {:.3} m ({:.3}), δ<1.25 {:.3} ({:.3})",
            scores.abs_rel, base.abs_rel, scores.rmse, base.rmse, scores.delta1, base.delta1
        );
        assert!(last < 0.6 * first, "loss {first} -> {last}");
        assert!(
            scores.abs_rel < 0.6 * base.abs_rel,
            "{scores:?} vs {base:?}"
        );
        assert!(scores.delta1 > base.delta1);
        // round trip through safetensors
        let LinearHead::Depth(d) = &head else {
            panic!("depth head")
        };
        let path = tmp.path().join("depth.safetensors");
        d.save(&path).unwrap();
        let LinearHead::Depth(back) = LinearHead::load(&path, None).unwrap() else {
            panic!("depth head")
        };
        assert_eq!((back.output, back.blocks(12)), (output, blocks.clone()));
        assert_eq!(back.range, (0.001, 10.0));
    }
}

fn dataset_error(dir: &Path) -> String {
    Dataset::open(dir).unwrap_err().to_string()
}

#[test]
fn bad_labelled_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // empty folder, and a folder of images without labels
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        dataset_error(&empty).contains("no images found"),
        "{}",
        dataset_error(&empty)
    );
    let unl = tmp.path().join("unlabelled");
    std::fs::create_dir(&unl).unwrap();
    std::fs::copy(voc().join("0_image.png"), unl.join("a.png")).unwrap();
    assert!(dataset_error(&unl).contains("no image has a label"));
    assert!(matches!(
        Dataset::open(&tmp.path().join("missing")),
        Err(HeadsError::NotFound(_))
    ));

    // a mask of another size than its image; a mask with a colour outside the palette
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(voc().join("0_image.png"), bad.join("a_image.png")).unwrap();
    image::RgbImage::from_pixel(100, 80, image::Rgb([0, 0, 0]))
        .save(bad.join("a_target.png"))
        .unwrap();
    std::fs::copy(voc().join("1_image.png"), bad.join("b_image.png")).unwrap();
    let mut m = image::open(voc().join("1_target.png")).unwrap().to_rgb8();
    m.put_pixel(5, 7, image::Rgb([1, 2, 3]));
    m.save(bad.join("b_target.png")).unwrap();
    let ds = Dataset::open(&bad).unwrap();
    let task = Task::Segmentation {
        format: MaskFormat::voc(),
        attention: false,
    };
    let e = task.load_labels(&ds).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("2 bad label file(s)"), "{e}");
    assert!(e.contains("label is 100x80 but its image"), "{e}");
    assert!(e.contains("unknown colour (1, 2, 3) at (5, 7)"), "{e}");

    // class-id masks with an id beyond the class count
    let ids = tmp.path().join("ids");
    std::fs::create_dir(&ids).unwrap();
    image::RgbImage::new(28, 28)
        .save(ids.join("x.png"))
        .unwrap();
    let mut g = image::GrayImage::new(28, 28);
    g.put_pixel(3, 4, image::Luma([9]));
    g.save(ids.join("x_mask.png")).unwrap();
    let mut fmt = MaskFormat::voc();
    fmt.palette = dinoedge_heads::Palette::generic(5);
    let e = Task::Segmentation {
        format: fmt,
        attention: false,
    }
    .load_labels(&Dataset::open(&ids).unwrap())
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("class id 9 at (3, 4) but there are 5 classes"),
        "{e}"
    );

    // a depth map that is not 16-bit
    let e = Task::Depth {
        format: DepthFormat::default(),
        blocks: vec![11],
        output: DepthOutput::Bins,
        range: (0.001, 10.0),
        bins: 256,
    }
    .load_labels(&Dataset::open(&ids).unwrap())
    .unwrap_err()
    .to_string();
    assert!(e.contains("16-bit grey PNG"), "{e}");
}
