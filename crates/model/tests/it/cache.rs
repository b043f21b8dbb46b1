//! The NNEF compile cache: a second start loads it, stale and corrupt entries are rebuilt.

use crate::common::*;
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, LoadSource};
use ndarray::Array4;

fn opts(dir: &std::path::Path) -> BackboneOptions {
    let mut o = options(42, 56, 1);
    o.blocks = vec![1];
    o.attention = true;
    o.cache = CacheMode::Dir(dir.to_owned());
    o
}

fn input() -> Array4<f32> {
    Array4::from_shape_fn((1, 3, 42, 56), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x) % 11) as f32 / 5.0 - 1.0
    })
}

#[test]
fn second_start_uses_the_cache_and_gives_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = model("tiny/dinov2-tiny-reg/onnx/model.onnx");
    let mut first = Backbone::load(&path, &opts(dir.path())).unwrap();
    let r1 = first.load_report().clone();
    assert_eq!(r1.source, LoadSource::Compiled);
    let entry = r1.cache_entry.clone().expect("an entry was written");
    assert!(entry.is_file());
    let mut second = Backbone::load(&path, &opts(dir.path())).unwrap();
    let r2 = second.load_report().clone();
    assert_eq!(r2.source, LoadSource::Cache, "{r2:?}");
    println!("compiled in {:?}, from cache in {:?}", r1.total, r2.total);
    let a = first.run(input().view()).unwrap();
    let b = second.run(input().view()).unwrap();
    assert_eq!(a, b);
    assert_eq!(second.layout().registers, 4);

    // Another resolution is another entry.
    let mut o = opts(dir.path());
    o.resolution = Some(dinoedge_model::Resolution::new(28, 28));
    assert_eq!(
        Backbone::load(&path, &o).unwrap().load_report().source,
        LoadSource::Compiled
    );
}

#[test]
fn corrupt_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = model("tiny/dinov2-tiny/onnx/model.onnx");
    let r0 = Backbone::load(&path, &opts(dir.path()))
        .unwrap()
        .load_report()
        .clone();
    let entry = r0.cache_entry.clone().unwrap_or_else(|| panic!("{r0:?}"));
    std::fs::write(&entry, b"not a tar archive at all").unwrap();
    let mut bb = Backbone::load(&path, &opts(dir.path())).unwrap();
    let r = bb.load_report();
    assert_eq!(r.source, LoadSource::Compiled);
    assert!(
        r.cache_note.as_deref().unwrap_or("").contains("corrupt"),
        "{r:?}"
    );
    assert_eq!(bb.run(input().view()).unwrap().len(), 1);
    // And the rebuilt entry is good again.
    assert_eq!(
        Backbone::load(&path, &opts(dir.path()))
            .unwrap()
            .load_report()
            .source,
        LoadSource::Cache
    );
}

#[test]
fn stale_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let path = model("tiny/dinov2-tiny/onnx/model.onnx");
    let r0 = Backbone::load(&path, &opts(dir.path()))
        .unwrap()
        .load_report()
        .clone();
    let entry = r0.cache_entry.clone().unwrap_or_else(|| panic!("{r0:?}"));
    let sidecar = entry.with_file_name(
        entry
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".nnef.tar", ".json"),
    );
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(
        &sidecar,
        text.replace(
            "\"tract_version\": \"0.23.9\"",
            "\"tract_version\": \"0.21.0\"",
        ),
    )
    .unwrap();
    let bb = Backbone::load(&path, &opts(dir.path())).unwrap();
    let r = bb.load_report();
    assert_eq!(r.source, LoadSource::Compiled);
    assert!(
        r.cache_note.as_deref().unwrap_or("").contains("stale"),
        "{r:?}"
    );
}

#[test]
fn unwritable_cache_directory_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    // A cache "directory" below a regular file cannot be created.
    let mut o = opts(&blocker.join("sub"));
    o.blocks = vec![];
    let bb = Backbone::load(model("tiny/dinov2-tiny/onnx/model.onnx"), &o).unwrap();
    assert!(
        bb.load_report()
            .cache_note
            .as_deref()
            .unwrap_or("")
            .contains("not cached")
    );
}

#[test]
fn dynamic_int8_models_are_cached_too() {
    // Their quantiser is dinoedge's own op, which the cache's NNEF dialect knows.
    let dir = tempfile::tempdir().unwrap();
    let path = model("tiny/dinov2-tiny/onnx/model_int8.onnx");
    let mut first = Backbone::load(&path, &opts(dir.path())).unwrap();
    assert!(
        first.load_report().cache_entry.is_some(),
        "{:?}",
        first.load_report()
    );
    let mut second = Backbone::load(&path, &opts(dir.path())).unwrap();
    assert_eq!(second.load_report().source, LoadSource::Cache);
    assert_eq!(
        first.run(input().view()).unwrap(),
        second.run(input().view()).unwrap()
    );
}
