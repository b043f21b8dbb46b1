//! Criterion benches of the released linear heads on patch features, per frame, at input
//! sizes 224x224 and 448x448 (output at the input size): segmentation (VOC 21 and ADE20K
//! 150 classes: logits, upsampling, argmax and confidence) and depth (`linear`, `linear4`).
//!
//! Also one training epoch on cached features of the VOC samples' size (14 images and their
//! mirror images at 224x224: 7168 patch rows of 384 channels, 21 classes; 448x448: 28672).
//!
//! `cargo bench --bench heads` (head files from `../shared/fixtures/heads`).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use dinoedge_heads::LinearHead;
use ndarray::{Array1, Array3};

fn heads_dir() -> PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
        .join("heads")
}

fn features(h: usize, w: usize, d: usize, seed: usize) -> Array3<f32> {
    Array3::from_shape_fn((h, w, d), |(y, x, c)| {
        (((y * 31 + x * 17 + c * 7 + seed) % 101) as f32 / 50.0) - 1.0
    })
}

fn heads(c: &mut Criterion) {
    let dir = heads_dir();
    if !dir.is_dir() {
        eprintln!("skipping head benches: no fixtures");
        return;
    }
    let mut group = c.benchmark_group("heads");
    group.sample_size(20);
    for size in [224usize, 448] {
        let g = size / 14;
        for (name, file) in [
            ("seg_voc2012", "dinov2_vits14_voc2012_linear_head.pth"),
            ("seg_ade20k", "dinov2_vits14_ade20k_linear_head.pth"),
            ("depth_linear", "dinov2_vits14_nyu_linear_head.pth"),
            ("depth_linear4", "dinov2_vits14_nyu_linear4_head.pth"),
        ] {
            let head = LinearHead::load(&dir.join(file), None).unwrap();
            match head {
                LinearHead::Seg(seg) => {
                    let f = features(g, g, 384, 0);
                    group.bench_function(format!("{name}/{size}"), |b| {
                        b.iter(|| seg.predict(f.view(), size, size).unwrap())
                    });
                }
                LinearHead::Depth(depth) => {
                    let blocks: Vec<(Array3<f32>, Array1<f32>)> = (0..depth.layers)
                        .map(|i| {
                            (
                                features(g, g, 384, i),
                                Array1::from_elem(384, 0.1 * i as f32),
                            )
                        })
                        .collect();
                    group.bench_function(format!("{name}/{size}"), |b| {
                        b.iter(|| {
                            let views: Vec<_> =
                                blocks.iter().map(|(p, c)| (p.view(), c.view())).collect();
                            depth.predict(&views, size, size).unwrap()
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

/// One epoch of segmentation-head training (AdamW, batches of 512) on `rows` random rows.
fn train_epoch(c: &mut Criterion) {
    use dinoedge_train::trainer::{Objective, Rows, TrainOptions, train};
    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    for (size, n) in [(224usize, 7168usize), (448, 28672)] {
        let x = ndarray::Array2::from_shape_fn((n, 384), |(i, j)| {
            (((i * 31 + j * 7) % 101) as f32 / 50.0) - 1.0
        });
        let t = ndarray::Array2::from_shape_fn((n, 21), |(i, k)| (i % 21 == k) as u8 as f32);
        let mut rows = Rows::new(384, 21);
        rows.push(0, x.view(), t.view(), ndarray::Array1::ones(n).view())
            .unwrap();
        let empty = Rows::new(384, 21);
        let opts = TrainOptions {
            epochs: 1,
            ..Default::default()
        };
        group.bench_function(format!("seg_voc_epoch/{size}"), |b| {
            b.iter(|| train(&rows, &empty, 21, &Objective::CrossEntropy, &opts, |_| {}).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, heads, train_epoch);
criterion_main!(benches);
