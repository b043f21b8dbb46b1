//! Criterion benches of the backbone (DINOv2 ViT-S/14 at 224x224, fp32 and dynamic int8,
//! one thread and all cores) and of preprocessing a 1280x720 frame.
//!
//! `cargo bench --bench backbone` (fixtures from `../shared/fixtures` or `$DINOEDGE_FIXTURES`).
//! `benches/ort_compare.py` times onnxruntime on the same files in the same run.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use dinoedge_model::{
    Backbone, BackboneOptions, CacheMode, Normalization, Preprocessor, ResizeMode, Resolution,
};
use ndarray::Array4;

fn fixtures() -> Option<PathBuf> {
    dinoedge_testkit::fixtures_if_present()
        .filter(|dir| dir.join("dinov2-small/onnx/model.onnx").is_file())
}

fn backbone(c: &mut Criterion) {
    let Some(fx) = fixtures() else {
        eprintln!("skipping backbone benches: no fixtures (set DINOEDGE_FIXTURES)");
        return;
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut group = c.benchmark_group("backbone_vits14_224");
    group.sample_size(10);
    let input = Array4::from_shape_fn((1, 3, 224, 224), |(_, ch, y, x)| {
        ((ch * 31 + y * 7 + x * 3) % 97) as f32 / 48.0 - 1.0
    });
    for (name, file) in [
        ("fp32", "model.onnx"),
        ("int8_dynamic", "model_int8.onnx"),
        ("int8_qdq", "model_qdq.onnx"),
    ] {
        let mut threads = vec![1];
        if cores > 1 {
            threads.push(cores);
        }
        for t in threads {
            let options = BackboneOptions {
                resolution: Some(Resolution::square(224)),
                threads: Some(t),
                cache: CacheMode::Off,
                ..Default::default()
            };
            let mut bb = Backbone::load(fx.join("dinov2-small/onnx").join(file), &options)
                .expect("fixture loads");
            group.bench_function(format!("{name}/{t}t"), |b| {
                b.iter(|| bb.run(input.view()).unwrap())
            });
        }
    }
    group.finish();
}

fn preprocess(c: &mut Criterion) {
    let frame = image::RgbImage::from_fn(1280, 720, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut group = c.benchmark_group("preprocess_1280x720");
    for (name, size, mode) in [
        ("stretch_224", Resolution::square(224), ResizeMode::Stretch),
        ("crop_224", Resolution::square(224), "crop".parse().unwrap()),
        (
            "letterbox_448",
            Resolution::new(448, 448),
            ResizeMode::Letterbox,
        ),
    ] {
        let mut pre = Preprocessor::new(size, mode, Normalization::default()).unwrap();
        let mut out = vec![0.0; pre.output_len()];
        group.bench_function(name, |b| b.iter(|| pre.run(&frame, &mut out).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, backbone, preprocess);
criterion_main!(benches);
