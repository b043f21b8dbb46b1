//! End-to-end tests of the `dinoedge` binary on the tiny fixtures.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

fn image(n: u32) -> PathBuf {
    fixtures().join(format!("images/voc2012_val_vainf/{n}_image.png"))
}

fn tiny_reg() -> PathBuf {
    fixtures().join("tiny/dinov2-tiny-reg/onnx/model.onnx")
}

fn dinoedge(args: &[&std::ffi::OsStr], cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dinoedge"))
        .args(args)
        .env("DINOEDGE_CACHE_DIR", cache)
        .output()
        .expect("the binary runs")
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn info_describes_the_model_and_both_load_times() {
    let tmp = tempfile::tempdir().unwrap();
    let o = dinoedge(args!["info", tiny_reg(), "--size", "308x448"], tmp.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("ViT (dim 48, 3 blocks)/14 + 4 registers"), "{t}");
    assert!(t.contains("precision     fp32"), "{t}");
    assert!(t.contains("multiples of 14"), "{t}");
    assert!(
        t.contains("first start (compile)") && t.contains("cached start"),
        "{t}"
    );
    // Both times were measured: the second start really came from the cache.
    assert!(
        !t.contains("cached start -") && !t.contains("compile) -"),
        "{t}"
    );
    let o = dinoedge(
        args!["info", tiny_reg(), "--json", "--size", "28"],
        tmp.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["load"]["compile_s"].as_f64().is_some(), "{v}");
    assert!(v["load"]["cached_s"].as_f64().is_some(), "{v}");
    assert!(v["load"]["cache_note"].is_null(), "{v}");
    let o = dinoedge(
        args!["info", tiny_reg(), "--json", "--no-compile"],
        tmp.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["registers"], 4);
    assert_eq!(v["blocks"], 3);
    assert_eq!(v["ops"]["Softmax"], 3);
}

#[test]
fn features_writes_npy_files_and_keeps_going_past_a_bad_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = dinoedge(
        args![
            "features",
            tiny_reg(),
            image(23),
            "/nonexistent.png",
            image(8),
            "--out",
            out,
            "--size",
            "42x56",
            "--layers",
            "0,2",
            "--norm",
            "--attention"
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success(),
        "a missing image must fail the command: {t}"
    );
    assert!(t.contains("1 of 3 images failed"), "{t}");
    let patches: ndarray::Array3<f32> =
        ndarray_npy::read_npy(out.join("23_image_patches.npy")).unwrap();
    assert_eq!(patches.dim(), (3, 4, 48));
    let regs: ndarray::Array2<f32> =
        ndarray_npy::read_npy(out.join("8_image_registers.npy")).unwrap();
    assert_eq!(regs.dim(), (4, 48));
    let b2: ndarray::Array3<f32> =
        ndarray_npy::read_npy(out.join("8_image_block02_patches.npy")).unwrap();
    // Block 2 is the last block: normalised, it equals the final output.
    let fin: ndarray::Array3<f32> = ndarray_npy::read_npy(out.join("8_image_patches.npy")).unwrap();
    let d = b2
        .iter()
        .zip(fin.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-5, "{d}");
    let attn: ndarray::Array3<f32> =
        ndarray_npy::read_npy(out.join("23_image_attention.npy")).unwrap();
    assert_eq!(attn.dim(), (3, 3, 4));
    assert!(out.join("features.json").is_file());
}

#[test]
fn pca_and_attention_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pca");
    let o = dinoedge(
        args!["pca", tiny_reg(), image(23), image(114), "--out", out],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let pic = image::open(out.join("114_image_pca.png")).unwrap();
    assert_eq!((pic.width(), pic.height()), (2 * 513, 513));
    let png = tmp.path().join("attn.png");
    let o = dinoedge(
        args![
            "attention",
            tiny_reg(),
            image(23),
            "--out",
            png,
            "--size",
            "224"
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 heads"), "{}", text(&o));
    assert!(image::open(&png).unwrap().width() > 513);
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = dinoedge(args!["info", "/no/such/model.onnx"], tmp.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("model file not found: /no/such/model.onnx"),
        "{}",
        text(&o)
    );
    let o = dinoedge(
        args![
            "features",
            tiny_reg(),
            image(23),
            "--out",
            tmp.path(),
            "--size",
            "100x100"
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("nearest: 98 or 112"), "{}", text(&o));
    let o = dinoedge(
        args![
            "features",
            tiny_reg(),
            image(23),
            "--out",
            tmp.path(),
            "--resize",
            "zoom"
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown resize mode"), "{}", text(&o));
    let o = dinoedge(
        args![
            "bench",
            tiny_reg(),
            "--size",
            "28",
            "--runs",
            "2",
            "--warmup",
            "0"
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
}
