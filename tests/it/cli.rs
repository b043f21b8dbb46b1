//! End-to-end tests of the `dinoedge` binary on the tiny fixtures.

use dinoedge_testkit::{fixtures, media};
use std::path::PathBuf;
use std::process::{Command, Output};

fn image(n: u32) -> PathBuf {
    fixtures().join(format!("images/voc2012_val_vainf/{n}_image.png"))
}

fn tiny_reg() -> PathBuf {
    fixtures().join("tiny/dinov2-tiny-reg/onnx/model.onnx")
}

/// Run the binary under test (`crate::bin::cmd`: this build's, or `$DINOEDGE_TEST_BIN`).
fn dinoedge(args: &[&std::ffi::OsStr], cache: &std::path::Path) -> Output {
    crate::bin::cmd(cache)
        .args(args)
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
fn info_and_features_name_dinov3_and_its_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let v3 = fixtures().join("tiny/dinov3-tiny/onnx/model.onnx");
    let o = dinoedge(args!["info", v3, "--no-compile"], tmp.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("DINOv3 ViT (dim 48, 3 blocks)/16 + 4 registers"),
        "{t}"
    );
    assert!(t.contains("RoPE") && t.contains("multiples of 16"), "{t}");
    assert!(
        !t.contains("fixed by the export") && !t.contains("DINOv2"),
        "{t}"
    );
    let o = dinoedge(args!["info", v3, "--json", "--no-compile"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["family"], "DINOv3");
    assert_eq!(v["position"], "rope");
    assert_eq!(v["any_size"], true);
    for file in [
        "tiny/dinov3-tiny/onnx/model_int8.onnx",
        "dinov3-small/onnx/model_int8.onnx",
    ] {
        let o = dinoedge(
            args!["info", fixtures().join(file), "--no-compile"],
            tmp.path(),
        );
        let t = text(&o);
        assert!(
            o.status.success() && t.contains("DINOv3 ") && t.contains("multiples of 16"),
            "{file}: {t}"
        );
    }
    let o = dinoedge(args!["info", v3, "--size", "230x224"], tmp.path());
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("nearest: 224 or 240"),
        "{t}"
    );

    let out = tmp.path().join("out");
    let o = dinoedge(
        args!["features", v3, image(8), "--out", out, "--size", "320x448"],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let patches: ndarray::Array3<f32> =
        ndarray_npy::read_npy(out.join("8_image_patches.npy")).unwrap();
    assert_eq!(patches.dim(), (20, 28, 48));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("features.json")).unwrap()).unwrap();
    assert_eq!(manifest["family"], "DINOv3");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // `dinoedge info MODEL | head -0`: stdout closed before the first line
    let tmp = tempfile::tempdir().unwrap();
    let mut child = crate::bin::cmd(tmp.path())
        .args([std::ffi::OsStr::new("info"), tiny_reg().as_os_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(o.status.code(), Some(101), "{stderr}");
}

#[test]
fn info_names_a_depth_anything_file_and_its_head() {
    let tmp = tempfile::tempdir().unwrap();
    let da = fixtures().join("tiny/depth-anything-v2-tiny/onnx/model.onnx");
    let o = dinoedge(args!["info", da, "--size", "308x308"], tmp.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("Depth Anything V2 ViT (dim 48, 4 blocks)/14"),
        "{t}"
    );
    assert!(
        t.contains("DPT depth head on blocks 0, 1, 2, 3: relative inverse depth"),
        "{t}"
    );
    assert!(t.contains("default 518x518"), "{t}");
    assert!(
        t.contains("cached start") && !t.contains("cached start -"),
        "{t}"
    );
    let o = dinoedge(args!["info", da, "--json", "--no-compile"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["depth"]["kind"], "relative", "{v}");
    assert_eq!(v["outputs"][0], "predicted_depth", "{v}");
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

/// `bytes` cut right after the first scan header: the headers whole, no scan data.
fn jpeg_cut_before_its_scan(bytes: &[u8]) -> Vec<u8> {
    let sos = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let header = u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize;
    bytes[..sos + 2 + header].to_vec()
}

#[test]
fn a_jpeg_cut_short_is_warned_about_and_counted_and_a_pixel_bomb_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = std::fs::read(media("photo_paris_exif_orientation_5.jpg")).unwrap();
    let cut = tmp.path().join("cut.jpg");
    std::fs::write(&cut, jpeg_cut_before_its_scan(&photo)).unwrap();
    let out = tmp.path().join("out");
    let o = dinoedge(
        args![
            "features",
            tiny_reg(),
            cut,
            image(8),
            "--out",
            out,
            "--size",
            "42x56"
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        o.status.success(),
        "a damaged image is used, not failed: {t}"
    );
    assert!(
        t.contains("cut.jpg: the JPEG ends before its scan data")
            && t.contains("1 of 2 images decoded only in part"),
        "{t}"
    );
    assert!(out.join("cut_patches.npy").is_file());

    // A PNG whose header declares 100000x100000 (30 GB of RGB): refused before allocating.
    let bomb = tmp.path().join("bomb.png");
    std::fs::write(&bomb, dinoedge_testkit::png_declaring(100_000, 100_000)).unwrap();
    for cmd in ["features", "pca"] {
        let o = dinoedge(
            args![cmd, tiny_reg(), bomb, "--out", out, "--size", "42x56"],
            tmp.path(),
        );
        let t = text(&o);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{cmd}: an error, not an abort: {t}"
        );
        assert!(t.contains("declares 100000x100000 pixels"), "{cmd}: {t}");
    }
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

#[test]
fn capture_reads_mjpeg_from_stdin_and_saves_frames() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let frame = std::fs::read(media("jpeg_mjpeg_frame_no_dht_mozilla963907.jpg")).unwrap();
    let mut child = crate::bin::cmd(tmp.path())
        .args(["capture", "-", "--json", "--out"])
        .arg(tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..3 {
            stdin.write_all(&frame).unwrap();
            stdin.write_all(b"\r\n--boundary\r\n").unwrap();
        }
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert_eq!(lines[2]["seq"], 2);
    assert_eq!(lines[0]["width"], 960);
    let saved = image::open(tmp.path().join("frame_000002.png")).unwrap();
    assert_eq!((saved.width(), saved.height()), (960, 720));
}

#[test]
fn capture_keeps_frames_before_a_damaged_end_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(media("y4m_rav1e_small_input_64x64_420jpeg.y4m")).unwrap();
    let cut = tmp.path().join("cut.y4m");
    std::fs::write(&cut, &bytes[..bytes.len() - 500]).unwrap();
    let out = tmp.path().join("frames");
    let o = dinoedge(
        args!["capture", cut, "--out", out, "--ext", "jpg"],
        tmp.path(),
    );
    let t = text(&o);
    assert!(!o.status.success(), "a truncated file is reported: {t}");
    assert!(t.contains("truncated"), "{t}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4, "{t}");
}

#[test]
fn capture_test_pattern_and_camera_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let o = dinoedge(
        args![
            "capture",
            "synthetic://?width=64&height=48&pace=fast",
            "-n",
            "4"
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("4 frames"), "{t}");
    let o = dinoedge(args!["cameras"], tmp.path());
    let t = text(&o);
    if cfg!(feature = "camera") {
        assert!(o.status.success(), "{t}");
    } else {
        assert!(
            !o.status.success() && t.contains("--features camera"),
            "{t}"
        );
    }
    let o = dinoedge(args!["capture", "v4l2:///dev/video93"], tmp.path());
    let t = text(&o);
    assert!(!o.status.success());
    if cfg!(feature = "camera") {
        assert!(t.contains("/dev/video93") && t.contains("found"), "{t}");
    }
}

#[test]
fn predict_writes_segmentation_and_depth_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    // ViT-S at 224 with a released head on image 23; the outputs land in `tmp/<dir>`
    let predict = |head: &str, dir: &str| -> PathBuf {
        let out = tmp.path().join(dir);
        let model = fixtures().join("dinov2-small/onnx/model.onnx");
        let head = fixtures().join("heads").join(head);
        let o = dinoedge(
            args![
                "predict",
                model,
                "--head",
                head,
                image(23),
                "--size",
                "224",
                "--out",
                out
            ],
            tmp.path(),
        );
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        out
    };
    let out = predict("dinov2_vits14_voc2012_linear_head.pth", "seg");
    let classes = image::open(out.join("23_image_classes.png"))
        .unwrap()
        .into_luma8();
    assert_eq!(classes.dimensions(), (513, 513));
    assert!(classes.pixels().all(|p| p.0[0] < 21));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("predictions.json")).unwrap())
            .unwrap();
    let fractions: f64 = summary[0]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fraction"].as_f64().unwrap())
        .sum();
    assert!(
        (fractions - 1.0).abs() < 1e-9,
        "class fractions add up to 1: {fractions}"
    );
    assert!(out.join("23_image_overlay.png").is_file() && out.join("23_image_seg.png").is_file());

    let out = predict("dinov2_vits14_nyu_linear_head.pth", "depth");
    let mm = image::open(out.join("23_image_depth_mm.png"))
        .unwrap()
        .into_luma16();
    assert_eq!(mm.dimensions(), (513, 513));
    let depth: ndarray::Array2<f32> =
        ndarray_npy::read_npy(out.join("23_image_depth.npy")).unwrap();
    // the 16-bit PNG is the .npy in millimetres, and within the head's 0.001..10 m bins
    for (p, d) in mm.pixels().zip(depth.iter()) {
        assert_eq!(p.0[0], (d * 1000.0).round() as u16);
        assert!((0.001..=10.0).contains(d));
    }

    // a head for another backbone width: a clear error before any work
    let o = dinoedge(
        args![
            "predict",
            tiny_reg(),
            "--head",
            fixtures().join("heads/dinov2_vits14_voc2012_linear_head.pth"),
            image(23),
            "--out",
            tmp.path().join("x")
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("backbone gives 48"),
        "{t}"
    );
}

#[test]
fn predict_with_a_depth_model_needs_no_head() {
    let tmp = tempfile::tempdir().unwrap();
    let da = fixtures().join("tiny/depth-anything-v2-tiny/onnx/model.onnx");
    let out = tmp.path().join("da");
    let o = dinoedge(
        args!["predict", da, image(23), "--size", "308", "--out", out],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("relative depth") && t.contains("no unit"), "{t}");
    // labelled relative in every file name, at the image's own size
    let depth: ndarray::Array2<f32> =
        ndarray_npy::read_npy(out.join("23_image_depth_relative.npy")).unwrap();
    let (w, h) = image::image_dimensions(image(23)).unwrap();
    assert_eq!(depth.dim(), (h as usize, w as usize));
    assert!(depth.iter().all(|v| v.is_finite()));
    assert!(out.join("23_image_depth_relative.png").is_file());
    assert!(!out.join("23_image_depth_mm.png").exists());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("predictions.json")).unwrap())
            .unwrap();
    assert!(
        summary[0]["depth"]
            .as_str()
            .unwrap()
            .starts_with("relative"),
        "{summary}"
    );
    assert!(summary[0]["min_m"].is_null(), "{summary}");

    // the same file with a metric config (the fixture generator's config, `metric`, 20 m):
    // depth in metres, as the depth heads write it
    let model = tiny_da_metric(tmp.path());
    let o = dinoedge(args!["info", model, "--no-compile"], tmp.path());
    let t = text(&o);
    assert!(t.contains("metric depth, metres (0 to 20)"), "{t}");
    let out = tmp.path().join("metric-out");
    let o = dinoedge(
        args!["predict", model, image(23), "--size", "308", "--out", out],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        out.join("23_image_depth_mm.png").is_file() && out.join("23_image_depth.npy").is_file()
    );
    assert!(!out.join("23_image_depth_relative.npy").exists());

    // an encoder alone with no --head: says what to give
    let o = dinoedge(
        args![
            "predict",
            tiny_reg(),
            image(23),
            "--out",
            tmp.path().join("x")
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("no head of its own") && t.contains("--head"),
        "{t}"
    );
}

/// The tiny Depth Anything V2 fixture with the fixture generator's config made metric
/// (`depth_estimation_type: metric`, 20 m), under `dir`: its model file.
pub(crate) fn tiny_da_metric(dir: &std::path::Path) -> PathBuf {
    let metric = dir.join("da-metric");
    std::fs::create_dir_all(metric.join("onnx")).unwrap();
    let src = fixtures().join("tiny/depth-anything-v2-tiny");
    std::fs::copy(src.join("onnx/model.onnx"), metric.join("onnx/model.onnx")).unwrap();
    std::fs::copy(
        src.join("preprocessor_config.json"),
        metric.join("preprocessor_config.json"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["depth_estimation_type"] = "metric".into();
    config["max_depth"] = 20.into();
    std::fs::write(metric.join("config.json"), config.to_string()).unwrap();
    metric.join("onnx/model.onnx")
}

#[test]
fn eval_head_scores_a_depth_models_own_depth_aligning_only_relative_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let relative = fixtures().join("tiny/depth-anything-v2-tiny/onnx/model.onnx");
    let metric = tiny_da_metric(tmp.path());
    // the model's own depth of image 23, as `predict` writes it
    let own = |model: &PathBuf, name: &str| -> ndarray::Array2<f32> {
        let out = tmp.path().join(name);
        let o = dinoedge(
            args![
                "predict",
                model,
                image(23),
                "--size",
                "112x112",
                "--out",
                out
            ],
            tmp.path(),
        );
        assert!(o.status.success(), "{}", text(&o));
        let file = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "npy"))
            .unwrap();
        ndarray_npy::read_npy(file).unwrap()
    };
    // a one-image folder whose truth is `truth` (metres, .npy)
    let folder = |name: &str, truth: &ndarray::Array2<f32>| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(image(23), dir.join("23_image.png")).unwrap();
        ndarray_npy::write_npy(dir.join("23_depth.npy"), truth).unwrap();
        dir
    };
    let score = |model: &PathBuf, data: &PathBuf| -> serde_json::Value {
        let json = data.join("scores.json");
        let o = dinoedge(
            args![
                "eval-head",
                model,
                data,
                "--size",
                "112x112",
                "--json",
                json
            ],
            tmp.path(),
        );
        let t = text(&o);
        assert!(
            o.status.success() && t.contains("AbsRel") && t.contains("alignment"),
            "{t}"
        );
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    // relative inverse depth: any positive scale and shift of it is the same answer
    let rel = own(&relative, "rel");
    let lo = rel.fold(f32::INFINITY, |a, &b| a.min(b));
    let truth = rel.mapv(|r| 1.0 / (2.5 * (r - lo) + 0.4));
    let s = score(&relative, &folder("rel-truth", &truth));
    assert!(
        s["abs_rel"].as_f64().unwrap() < 1e-3 && s["delta1"] == 1.0,
        "{s}"
    );
    assert!(
        s["alignment"].as_str().unwrap().contains("scale and shift"),
        "{s}"
    );
    // metric depth is scored as it is: its own map exact, twice it 50 % off
    let m = own(&metric, "metric");
    let s = score(&metric, &folder("metric-truth", &m));
    assert!(s["abs_rel"].as_f64().unwrap() < 1e-5, "{s}");
    assert!(s["alignment"].as_str().unwrap().starts_with("none"), "{s}");
    let s = score(&metric, &folder("metric-twice", &m.mapv(|d| 2.0 * d)));
    assert!((s["abs_rel"].as_f64().unwrap() - 0.5).abs() < 1e-3, "{s}");

    // an encoder alone needs a head
    let data = tmp.path().join("rel-truth");
    let o = dinoedge(args!["eval-head", tiny_reg(), data], tmp.path());
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("no depth head of its own") && t.contains("--head"),
        "{t}"
    );
}

/// A labelled folder at `dir`: the fixture VOC images `numbers` with their class maps.
pub(crate) fn voc_folder(dir: &std::path::Path, numbers: &[u32]) -> PathBuf {
    std::fs::create_dir(dir).unwrap();
    for n in numbers {
        for kind in ["image", "target"] {
            let name = format!("{n}_{kind}.png");
            let from = fixtures().join("images/voc2012_val_vainf").join(&name);
            std::fs::copy(from, dir.join(&name)).unwrap();
        }
    }
    dir.to_owned()
}

#[test]
fn train_head_then_eval_head_and_predict_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = voc_folder(&tmp.path().join("voc6"), &[0, 1, 8, 20, 23, 60]);
    let model = fixtures().join("dinov2-small/onnx/model.onnx");
    let head = tmp.path().join("voc6.safetensors");
    let train = || {
        dinoedge(
            args![
                "train-head",
                model,
                data,
                "--out",
                head,
                "--size",
                "112x112",
                "--epochs",
                "15",
                "--lr",
                "3e-3",
                "--val-split",
                "0.34"
            ],
            tmp.path(),
        )
    };
    let o = train();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // 4 training images and their mirror images, 2 validation images
    assert!(t.contains("features: 10 computed, 0 from the cache"), "{t}");
    assert!(
        t.contains("training images (4):") && t.contains("validation images (2):"),
        "{t}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(head.with_extension("json")).unwrap())
            .unwrap();
    let epochs = report["report"]["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 15);
    assert!(
        report["train"]["miou"].as_f64().unwrap()
            > report["train"]["majority_baseline"]["miou"]
                .as_f64()
                .unwrap()
    );
    // the second run reads every feature from the cache
    let o = train();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("features: 0 computed, 10 from the cache"), "{t}");

    let scores = tmp.path().join("scores.json");
    let o = dinoedge(
        args!["eval-head", model, "--head", head, data, "--json", scores],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("at 112x112") && t.contains("mIoU"), "{t}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    assert_eq!(s["images"], 6);
    assert_eq!(s["features"]["computed"], 0);
    let miou = s["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou) && s["pixel_accuracy"].as_f64().unwrap() > 0.0);

    // the trained head in `predict`, at its training resolution
    let out = tmp.path().join("pred");
    let o = dinoedge(
        args!["predict", model, "--head", head, image(23), "--out", out],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("23_image_classes.png").is_file());

    // the same width, another family: a DINOv2 head on DINOv3 features, trained or released
    let v3 = fixtures().join("dinov3-small/onnx/model_int8.onnx");
    let o = dinoedge(
        args!["predict", v3, "--head", head, image(23), "--out", out],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success()
            && t.contains("trained on DINOv2 features (DINOv2 ViT-S/14)")
            && t.contains("is DINOv3 ViT-S/16 + 4 registers"),
        "{t}"
    );
    let released = fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth");
    let o = dinoedge(
        args!["predict", v3, "--head", released, image(23), "--out", out],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("DINOv2 (Meta's released heads)"),
        "{t}"
    );

    // wrong backbone width, wrong class count, empty folder
    let o = dinoedge(
        args!["eval-head", tiny_reg(), "--head", head, data],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("head and backbone do not fit"),
        "{t}"
    );
    let o = dinoedge(
        args!["eval-head", model, "--head", head, data, "--classes", "5"],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("the head has 21 classes but the palette given has 5"),
        "{t}"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = dinoedge(args!["train-head", model, empty, "--out", head], tmp.path());
    let t = text(&o);
    assert!(!o.status.success() && t.contains("no images found"), "{t}");

    // a released depth head scored on the RGB-D sample (unit of its depth PNG unknown:
    // this checks the path, not the numbers)
    let o = dinoedge(
        args![
            "eval-head",
            model,
            "--head",
            fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth"),
            fixtures().join("images/nyuv2_esanet"),
            "--size",
            "224x224"
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("AbsRel") && t.contains("over 1 images"),
        "{t}"
    );
}

#[test]
fn a_head_trained_on_dinov3_runs_on_dinov3_and_is_refused_on_dinov2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = voc_folder(&tmp.path().join("voc3"), &[0, 8, 23]);
    let v3 = fixtures().join("tiny/dinov3-tiny/onnx/model.onnx");
    let head = tmp.path().join("v3.safetensors");
    let o = dinoedge(
        args![
            "train-head",
            v3,
            data,
            "--out",
            head,
            "--size",
            "64x96",
            "--epochs",
            "3",
            "--val-split",
            "0.34"
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = dinoedge(args!["eval-head", v3, "--head", head, data], tmp.path());
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("at 64x96") && t.contains("mIoU"),
        "{t}"
    );
    let out = tmp.path().join("pred");
    let o = dinoedge(
        args!["predict", v3, "--head", head, image(23), "--out", out],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("23_image_classes.png").is_file());

    // the same width (48), the other family
    let v2 = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let img = image(23);
    let predict: &[&std::ffi::OsStr] = args!["predict", v2, "--head", head, img, "--out", out];
    let eval: &[&std::ffi::OsStr] = args!["eval-head", v2, "--head", head, data];
    for cmd in [predict, eval] {
        let o = dinoedge(cmd, tmp.path());
        let t = text(&o);
        assert!(
            !o.status.success()
                && t.contains("trained on DINOv3 features (DINOv3 ViT (dim 48, 3 blocks)/16")
                && t.contains("is DINOv2 ViT (dim 48, 3 blocks)/14"),
            "{t}"
        );
    }
}

#[test]
fn generate_writes_man_pages_and_completions_of_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let man = tmp.path().join("man1");
    let o = dinoedge(args!["generate", "man", "--out", man], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    // one page per command, each naming its flags
    for (page, flag) in [
        ("dinoedge.1", "generate"),
        ("dinoedge-run.1", "intrinsics"),
        ("dinoedge-eval-head.1", "head"),
        ("dinoedge-fetch.1", "cache"),
    ] {
        let roff = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(
            roff.starts_with(".ie") || roff.contains(".TH"),
            "{page}: {roff}"
        );
        assert!(roff.contains(flag), "{page} does not mention {flag}");
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef dinoedge"),
        ("fish", "complete -c dinoedge"),
    ] {
        let o = dinoedge(args!["generate", format!("complete-{shell}")], tmp.path());
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && t.contains(marker) && t.contains("intrinsics"),
            "{shell}: {t}"
        );
    }
    let o = dinoedge(args!["generate", "man"], tmp.path());
    let t = text(&o);
    assert!(!o.status.success() && t.contains("--out"), "{t}");
}

/// `dinoedge` with a model cache of its own (and no user manifest).
fn dinoedge_models(args: &[&std::ffi::OsStr], models: &std::path::Path) -> Output {
    crate::bin::cmd(&models.join("compiled"))
        .args(args)
        .env("DINOEDGE_MODELS_DIR", models)
        .env_remove("DINOEDGE_MANIFEST")
        .output()
        .expect("the binary runs")
}

#[test]
fn models_fetch_and_names_in_place_of_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    // nothing cached: the list says so; a name that is not downloaded says how to get it
    let o = dinoedge_models(args!["models", "--json"], &models);
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() >= 20);
    let int8 = rows.iter().find(|r| r["name"] == "vits14-int8").unwrap();
    assert_eq!(int8["cached"], serde_json::Value::Null);
    assert_eq!(
        int8["source"],
        "hf://onnx-community/dinov2-small/onnx/model_int8.onnx"
    );
    let o = dinoedge_models(args!["info", "vits14-int8"], &models);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("dinoedge fetch vits14-int8"),
        "{}",
        text(&o)
    );

    // put by hand where the offline message says: the name now works everywhere
    let by_hand = PathBuf::from(int8["by_hand"].as_str().unwrap());
    assert_eq!(by_hand, models.join("vits14-int8/model_int8.onnx"));
    std::fs::create_dir_all(by_hand.parent().unwrap()).unwrap();
    std::fs::copy(
        fixtures().join("tiny/dinov2-tiny/onnx/model_int8.onnx"),
        &by_hand,
    )
    .unwrap();
    let o = dinoedge_models(args!["info", "vits14-int8"], &models);
    assert!(o.status.success(), "{}", text(&o));
    let o = dinoedge_models(args!["fetch", "vits14-int8"], &models);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("in the cache"), "{}", text(&o));
    let o = dinoedge_models(args!["models"], &models);
    let table = text(&o);
    let line = table
        .lines()
        .find(|l| l.starts_with("vits14-int8 "))
        .unwrap();
    assert!(line.contains("yes"), "{line}");

    // unknown names are refused before anything is downloaded
    let o = dinoedge_models(args!["fetch", "vits14-int8", "vits15"], &models);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no model called \"vits15\"") && text(&o).contains("vits14-nyu-linear"),
        "{}",
        text(&o)
    );

    // offline: which file, and where to put it by hand
    let manifest = tmp.path().join("mine.toml");
    std::fs::write(
        &manifest,
        "[[model]]\nname = \"my-head\"\nkind = \"head\"\ndescription = \"mine\"\nurl = \"http://127.0.0.1:9/my_head.pth\"\n",
    )
    .unwrap();
    let o = dinoedge_models(
        args!["fetch", "my-head", "--manifest", manifest, "--timeout", "2"],
        &models,
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("http://127.0.0.1:9/my_head.pth"), "{t}");
    assert!(
        t.contains(&models.join("my-head/my_head.pth").display().to_string()),
        "{t}"
    );
    assert!(t.contains("1 of 1 not fetched"), "{t}");
}

/// `compare --json` of two fixture models on `inputs`, as JSON.
fn compare(
    a: &str,
    b: &str,
    inputs: &[PathBuf],
    extra: &[&str],
    cache: &std::path::Path,
) -> serde_json::Value {
    let mut args: Vec<std::ffi::OsString> = vec![
        "compare".into(),
        fixtures().join(a).into(),
        fixtures().join(b).into(),
    ];
    args.extend(inputs.iter().map(|p| p.clone().into_os_string()));
    args.extend(extra.iter().map(|e| e.into()));
    args.push("--json".into());
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let o = dinoedge(&args, cache);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn compare_int8_against_fp32_matches_onnxruntime() {
    let cache = tempfile::tempdir().unwrap();
    let parity: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/parity.json")).unwrap(),
    )
    .unwrap();
    let x = fixtures().join("reference/inputs/pixel_values_224x224.npy");
    // the fixtures' figures are onnxruntime's int8 output against PyTorch fp32 on this tensor
    for file in ["model_int8", "model_quantized", "model_qdq"] {
        let v = compare(
            "dinov2-small/onnx/model.onnx",
            &format!("dinov2-small/onnx/{file}.onnx"),
            std::slice::from_ref(&x),
            &[],
            cache.path(),
        );
        let ort = &parity["dinov2-small"]["parity"]["224x224"]
            [format!("ort_{file}_vs_torch_fp32_patch_tokens")];
        let ort_cls = &parity["dinov2-small"]["parity"]["224x224"]
            [format!("ort_{file}_vs_torch_fp32_cls_token")];
        let all = &v["all"];
        println!(
            "{file}: dinoedge {} / ORT {}",
            all["patch_cos_mean"], ort["cos_token_mean"]
        );
        for (ours, theirs) in [
            (&all["patch_cos_mean"], &ort["cos_token_mean"]),
            (&all["patch_cos_min"], &ort["cos_token_min"]),
            (&all["cls_cos"], &ort_cls["cos_token_mean"]),
        ] {
            let (ours, theirs) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
            assert!(
                (ours - theirs).abs() <= 0.002,
                "{file}: {ours} vs onnxruntime {theirs}"
            );
        }
        assert_eq!(v["resolution"], "224x224");
        assert!(
            v["candidate"]["precision"]
                .as_str()
                .unwrap()
                .contains("int8"),
            "{}",
            v["candidate"]
        );
    }
}

#[test]
fn compare_with_heads_scores_outputs_against_the_reference() {
    let cache = tempfile::tempdir().unwrap();
    let images = [image(23), image(1)];
    let voc = fixtures().join("heads/dinov2_vits14_voc2012_linear_head.pth");
    let nyu = fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth");
    let fp32 = "dinov2-small/onnx/model.onnx";
    // a model against itself: identical, by every measure
    let v = compare(
        fp32,
        fp32,
        &images[..1],
        &["--head", voc.to_str().unwrap()],
        cache.path(),
    );
    assert_eq!(v["all"]["patch_cos_mean"].as_f64().unwrap(), 1.0);
    assert_eq!(v["all"]["seg_miou"].as_f64().unwrap(), 1.0);
    assert_eq!(v["all"]["max_abs"].as_f64().unwrap(), 0.0);
    // int8 against fp32: close, not equal
    let v = compare(
        fp32,
        "dinov2-small/onnx/model_int8.onnx",
        &images,
        &["--head", voc.to_str().unwrap()],
        cache.path(),
    );
    let (miou, same) = (
        v["all"]["seg_miou"].as_f64().unwrap(),
        v["all"]["seg_pixel_agreement"].as_f64().unwrap(),
    );
    assert!(
        miou > 0.8 && miou < 1.0 && same > 0.95,
        "mIoU {miou}, pixels {same}"
    );
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    let v = compare(
        fp32,
        "dinov2-small/onnx/model_int8.onnx",
        &images,
        &["--head", nyu.to_str().unwrap()],
        cache.path(),
    );
    let rel = v["all"]["depth_abs_rel"].as_f64().unwrap();
    assert!(rel > 0.0 && rel < 0.05, "AbsRel {rel}");
    // the table for people
    let o = dinoedge(
        args![
            "compare",
            fixtures().join(fp32),
            fixtures().join("dinov2-small/onnx/model_int8.onnx"),
            image(23),
            "--head",
            nyu
        ],
        cache.path(),
    );
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("depth AbsRel") && t.contains("all 1 image"),
        "{t}"
    );
    // two different backbones do not compare
    let o = dinoedge(
        args![
            "compare",
            fixtures().join(fp32),
            fixtures().join("tiny/dinov2-tiny/onnx/model.onnx"),
            image(23)
        ],
        cache.path(),
    );
    assert!(
        !o.status.success() && text(&o).contains("only two versions of one backbone"),
        "{}",
        text(&o)
    );
}

#[test]
fn board_reports_a_raspberry_pi_from_its_files() {
    let root = tempfile::tempdir().unwrap();
    for (rel, content) in [
        ("proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0"),
        ("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n"),
        ("sys/class/thermal/thermal_zone0/temp", "84000\n"),
        (
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            "0x50005\n",
        ),
    ] {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let o = dinoedge(args!["board", "--root", root.path(), "--json"], root.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["board"], "Raspberry Pi 5 Model B Rev 1.0");
    assert_eq!(v["profile"], "rpi5");
    assert_eq!(v["temperature_c"], 84.0);
    assert_eq!(v["throttled_flags"], "0x50005");
    assert_eq!(v["warnings"].as_array().unwrap().len(), 3, "{v}");
    // this machine, as it is: never an error
    let o = dinoedge(args!["board"], root.path());
    assert!(
        o.status.success() && text(&o).contains("board:"),
        "{}",
        text(&o)
    );
}

#[test]
fn board_profiles_and_their_units_reach_the_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("firmware-configs");
    let settings = |args: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.push(std::ffi::OsStr::new("--print-settings"));
        let o = dinoedge_models(&a, &models);
        (
            o.status.success(),
            text(&o),
            serde_json::from_slice::<serde_json::Value>(&o.stdout).ok(),
        )
    };
    // before the models are there, the profile says which to fetch
    let (ok, t, _) = settings(&["run", "--board", "rpi5"]);
    assert!(!ok && t.contains("dinoedge fetch vits14-int8"), "{t}");
    // the files, put where `dinoedge fetch` would (the fixtures stand in for the real ones)
    for (dir, file, fixture) in [
        (
            "vits14-int8",
            "model_int8.onnx",
            "tiny/dinov2-tiny/onnx/model_int8.onnx",
        ),
        ("vits14", "model.onnx", "tiny/dinov2-tiny/onnx/model.onnx"),
        (
            "da2-small-int8",
            "model_int8.onnx",
            "tiny/depth-anything-v2-tiny/onnx/model_int8.onnx",
        ),
        (
            "da2-small",
            "model.onnx",
            "tiny/depth-anything-v2-tiny/onnx/model.onnx",
        ),
        (
            "vits14-nyu-linear",
            "dinov2_vits14_nyu_linear_head.pth",
            "heads/dinov2_vits14_nyu_linear_head.pth",
        ),
    ] {
        std::fs::create_dir_all(models.join(dir)).unwrap();
        std::fs::copy(fixtures().join(fixture), models.join(dir).join(file)).unwrap();
    }
    for (name, _) in dinoedge_board::profile::BUILTIN {
        let p = dinoedge_board::Profile::builtin(name).unwrap();
        // the unit's command line, as systemd would run it (a Depth Anything profile: its
        // board's unit with the profile's name)
        let (folder, _) = dinoedge_board::profile::file_of(name);
        let unit = std::fs::read_to_string(root.join(folder).join("dinoedge.service")).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap()
            .replace(&format!("--board {folder} "), &format!("--board {name} "));
        let argv: Vec<&str> = exec.split_whitespace().skip(1).collect();
        let (ok, t, v) = settings(&argv);
        assert!(ok, "{name}: {exec}: {t}");
        let v = v.unwrap();
        // every [run] key arrived
        let r = &p.run;
        assert_eq!(
            v["model"].as_str().unwrap(),
            models
                .join(p.model())
                .join(if p.model().ends_with("-int8") {
                    "model_int8.onnx"
                } else {
                    "model.onnx"
                })
                .to_str()
                .unwrap(),
            "{name}"
        );
        match p.run.head {
            Some(_) => assert!(
                v["head"]
                    .as_str()
                    .unwrap()
                    .ends_with("dinov2_vits14_nyu_linear_head.pth"),
                "{name}"
            ),
            None => assert!(v["head"].is_null(), "{name}: {v}"),
        }
        assert_eq!(v["source"], r.camera.as_str(), "{name}");
        assert_eq!(v["sinks"], serde_json::json!(r.sinks), "{name}");
        assert_eq!(v["listen"], r.listen.as_deref().unwrap(), "{name}");
        assert_eq!(v["threads"], r.threads, "{name}");
        assert_eq!(v["workers"], r.workers.unwrap_or(1), "{name}");
        assert_eq!(v["size"], r.resolution.as_str(), "{name}");
        let every = match r.every.as_deref() {
            Some("idle") => "WhenIdle".to_string(),
            Some("1") => "EveryFrame".to_string(),
            Some(k) => format!("EveryNth({k})"),
            None => unreachable!(),
        };
        assert_eq!(v["every"], every.as_str(), "{name}");
        assert_eq!(v["gpio"], serde_json::json!(r.gpio), "{name}");
        assert_eq!(
            v["runtime"],
            r.runtime.as_deref().unwrap_or("cpu"),
            "{name}"
        );
    }
    // the Jetson's profile asks for its GPU, where the binary has CUDA and the board a driver
    assert_eq!(
        dinoedge_board::Profile::builtin("jetson-orin-nano")
            .unwrap()
            .run
            .runtime
            .as_deref(),
        Some("cuda-or-cpu")
    );
    // flags win over the profile
    let (ok, t, v) = settings(&[
        "run",
        "--board",
        "rpi4",
        "--source",
        "synthetic://",
        "--threads",
        "1",
        "--workers",
        "3",
        "--sink",
        "jsonl",
        "--every",
        "2",
        "--runtime",
        "cpu",
    ]);
    assert!(ok, "{t}");
    let v = v.unwrap();
    assert_eq!(v["runtime"], "cpu");
    assert_eq!(
        (v["source"].as_str(), v["threads"].as_u64()),
        (Some("synthetic://"), Some(1))
    );
    assert_eq!(v["workers"], 3);
    assert_eq!(
        (v["sinks"].clone(), v["every"].as_str()),
        (serde_json::json!(["jsonl"]), Some("EveryNth(2)"))
    );
    let (ok, t, _) = settings(&["run", "--board", "rpi9"]);
    assert!(
        !ok && t.contains("rpi4, rpi5, jetson-orin-nano, x86"),
        "{t}"
    );
}

#[test]
fn runtime_cuda_without_a_gpu_says_why_and_cuda_or_cpu_runs_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    // whether the binary under test was built with `cuda` (x86 CI: yes; the arm64 package's
    // binary, which .ci/run runs this against under qemu: no), as `dinoedge board` says
    let o = dinoedge(args!["board", "--json"], tmp.path());
    let board: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let built = board["cuda"] != "not built";
    if built {
        assert_eq!(board["cuda"], "unavailable", "{board}");
        assert!(
            board["cuda_reason"].as_str().unwrap().contains("CUDA"),
            "{board}"
        );
    }
    let o = dinoedge(
        args!["info", tiny_reg(), "--size", "28", "--runtime", "cuda"],
        tmp.path(),
    );
    let t = text(&o);
    if built {
        if o.status.success() {
            // a GPU is here
            assert!(t.contains("[cuda, "), "{t}");
            return;
        }
        assert!(t.contains("no usable NVIDIA GPU here"), "{t}");
        // tract-cuda's reason: the driver library, its initialisation, its version or a library
        assert!(t.contains("CUDA driver") || t.contains("dlopen"), "{t}");
    } else {
        assert!(!o.status.success(), "{t}");
        assert!(
            t.contains("built without CUDA") && t.contains("--features cuda"),
            "{t}"
        );
    }
    assert!(
        t.contains("runtime `cpu`") && t.contains("cuda-or-cpu"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");

    let o = dinoedge(
        args![
            "info",
            tiny_reg(),
            "--size",
            "28",
            "--runtime",
            "cuda-or-cpu",
            "--json"
        ],
        tmp.path(),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["load"]["runtime"], "cpu", "{v}");
    let note = v["load"]["runtime_note"].as_str().unwrap();
    assert!(note.starts_with("CUDA unavailable, on the CPU"), "{note}");
    assert!(t.contains("note: CUDA unavailable"), "{t}");
    // this test's own build has the feature exactly when the binary does (unless it is another's)
    if std::env::var_os("DINOEDGE_TEST_BIN").is_none() {
        assert_eq!(built, cfg!(feature = "cuda"), "{board}");
    }

    let o = dinoedge(args!["bench", tiny_reg(), "--runtime", "tpu"], tmp.path());
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("unknown runtime \"tpu\": cpu, cuda or cuda-or-cpu"),
        "{t}"
    );
}

/// `benches/board.sh` on the fixture files: the same table a board prints (both runtimes in
/// one run), and a clear error for a file that is not there. Needs onnxruntime in the venv of
/// `$DINOEDGE_PYTHON` (as `.ci/run` sets it); skipped without, unless `DINOEDGE_REQUIRE_PYTHON=1`.
#[test]
fn board_script_prints_the_ratio_table() {
    let py = std::env::var_os("DINOEDGE_PYTHON").map(PathBuf::from);
    let has_ort = py.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import onnxruntime, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !has_ort {
        assert!(
            std::env::var_os("DINOEDGE_REQUIRE_PYTHON").is_none_or(|v| v != "1"),
            "DINOEDGE_PYTHON has no onnxruntime"
        );
        eprintln!("skipping the board script test: no DINOEDGE_PYTHON with onnxruntime");
        return;
    }
    // the venv the Python lives in: <venv>/bin/python
    let venv = py
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/board.sh");
    let board = |files: &[PathBuf]| {
        Command::new("sh")
            .arg(&script)
            .args(files)
            .env("DINOEDGE", env!("CARGO_BIN_EXE_dinoedge"))
            .env("ORT_VENV", &venv)
            .env("SIZES", "56x56")
            .env("RUNS", "1")
            .output()
            .unwrap()
    };
    let tiny = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let out = board(std::slice::from_ref(&tiny));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("size 56x56"), "{stdout}");
    // one row per thread count: label, threads, both times and their ratio
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("model ") && !l.contains("threads"))
        .collect();
    assert!(!rows.is_empty(), "{stdout}");
    for row in rows {
        let v: Vec<f64> = row
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 4, "{row}");
        assert!(v[1] > 0.0 && v[2] > 0.0, "{row}");
        // times are printed to 0.1 ms, the ratio from the unrounded ones
        let bound = 0.01 + 0.06 / v[1] * (1.0 + v[3]);
        assert!((v[3] - v[2] / v[1]).abs() <= bound, "{row}");
    }
    let out = board(&[tiny.with_file_name("no-such.onnx")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such.onnx: no such file"), "{stderr}");
}
