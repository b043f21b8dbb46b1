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
    assert!(second.plan_nodes() <= first.plan_nodes()); // see `dynamic_int8_models_are_cached_too`
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

/// A QDQ file's decluttered graph holds tract-core's static quantisers, dequantisers and the
/// look-up tables made of the chains between them, which tract's NNEF cannot write: the
/// cache's dialect writes them (`crates/model/src/nnef.rs`), or such a file compiled again at
/// every start. The cached graph computes the same features, blocks and attention map bit for
/// bit, its products on the same kernels with their requantisation fused.
#[test]
fn qdq_models_are_cached_too() {
    let path = model("dinov2-small/onnx/model_qdq.onnx");
    for attention in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let o = BackboneOptions {
            attention,
            ..opts(dir.path())
        };
        let mut first = Backbone::load(&path, &o).unwrap();
        let r1 = first.load_report().clone();
        assert_eq!(r1.source, LoadSource::Compiled);
        assert!(
            r1.cache_entry.is_some() && r1.cache_note.is_none(),
            "{r1:?}"
        );
        let mut second = Backbone::load(&path, &o).unwrap();
        let r2 = second.load_report().clone();
        assert_eq!(r2.source, LoadSource::Cache, "{r2:?}");
        assert_eq!(
            first.run(input().view()).unwrap(),
            second.run(input().view()).unwrap()
        );
        if !attention {
            assert_eq!(r2.int8_products, r1.int8_products);
            assert_eq!(r2.requantized_products, r1.requantized_products);
            assert_eq!(r2.requantized_biases, r1.requantized_biases);
            assert!(second.plan_nodes() <= first.plan_nodes());
        } else {
            // The block whose attention map is an output keeps its products unfused; the
            // round trip through NNEF moves a transpose into its output projection
            // (`cmb,cbn->amn`), which dinoedge's int8 product does not take: that one product
            // runs on tract's int8 kernel from the cache, the same exact sums.
            assert!(r2.int8_products + 1 >= r1.int8_products, "{r1:?}\n{r2:?}");
        }
    }
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
    // no longer a plan: NNEF put a transpose before each quantised product, which cost a ViT-S
    // run 2–3 ms until the cached graph was decluttered again (213 nodes fresh, 221 from the
    // cache then, 207 now: the round trip folds a few more)
    assert!(second.plan_nodes() <= first.plan_nodes());
}

/// The cache is keyed by the external data too: changed weights are recompiled (not the old
/// entry's features), missing ones are an error that names the file; a byte flipped inside a
/// cached archive is caught by its digest and rebuilt.
#[test]
fn external_data_is_part_of_the_key_and_flipped_bytes_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = with_external_data("tiny/dinov2-tiny/onnx/model.onnx", dir.path());
    let mut first = Backbone::load(&path, &opts(&cache)).unwrap();
    assert_eq!(first.load_report().source, LoadSource::Compiled);
    let a = first.run(input().view()).unwrap();
    // the same features as the file with its weights inside
    let mut inside = Backbone::load(
        model("tiny/dinov2-tiny/onnx/model.onnx"),
        &BackboneOptions {
            cache: CacheMode::Off,
            ..opts(&cache)
        },
    )
    .unwrap();
    assert_eq!(a, inside.run(input().view()).unwrap());
    assert_eq!(
        Backbone::load(&path, &opts(&cache))
            .unwrap()
            .load_report()
            .source,
        LoadSource::Cache
    );

    // other weights in the external file: another entry, other features
    let data_path = path.with_file_name("model.onnx.data");
    let mut data = std::fs::read(&data_path).unwrap();
    for f in data.chunks_exact_mut(4) {
        let v = f32::from_le_bytes([f[0], f[1], f[2], f[3]]) * 0.5;
        f.copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&data_path, &data).unwrap();
    let mut changed = Backbone::load(&path, &opts(&cache)).unwrap();
    assert_eq!(changed.load_report().source, LoadSource::Compiled);
    assert_ne!(changed.run(input().view()).unwrap(), a);

    // a byte flipped in the middle of the cached archive: rebuilt, the right features
    let entry = changed.load_report().cache_entry.clone().unwrap();
    let mut archive = std::fs::read(&entry).unwrap();
    let mid = archive.len() / 2;
    archive[mid] ^= 0x10;
    std::fs::write(&entry, &archive).unwrap();
    let mut rebuilt = Backbone::load(&path, &opts(&cache)).unwrap();
    let r = rebuilt.load_report().clone();
    assert_eq!(r.source, LoadSource::Compiled, "{r:?}");
    assert!(r.cache_note.unwrap_or_default().contains("corrupt"));
    assert_eq!(
        rebuilt.run(input().view()).unwrap(),
        changed.run(input().view()).unwrap()
    );

    // the external data gone: an error that names it, with or without the cache
    std::fs::remove_file(&data_path).unwrap();
    for o in [
        opts(&cache),
        BackboneOptions {
            cache: CacheMode::Off,
            ..opts(&cache)
        },
    ] {
        let Err(e) = Backbone::load(&path, &o) else {
            panic!("a model whose external data is missing loaded")
        };
        let e = e.to_string();
        assert!(
            e.contains("model.onnx.data") && e.contains("missing"),
            "{e}"
        );
    }
}
