//! The runner end to end on the fixture backbone: an image-folder source through the NYU
//! depth head into a file sink, a JSON-lines sink and a sink that fails.

use std::io::Write;
use std::sync::{Arc, Mutex};

use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution, load_rgb};
use dinoedge_stream::Output;
use dinoedge_stream::{
    Analysis, Cadence, FileSink, JsonLinesSink, PictureFormat, Region, RunOptions, Sink,
    StreamError, run,
};
use dinoedge_testkit::fixtures;

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Failing(u32);
impl Sink for Failing {
    fn name(&self) -> String {
        "failing".into()
    }
    fn write(&mut self, _: &Output) -> Result<(), StreamError> {
        self.0 += 1;
        if self.0 == 2 {
            return Err(StreamError::Sink {
                name: "failing".into(),
                reason: "disk full".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn image_folder_through_depth_head_to_files_and_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("in");
    std::fs::create_dir(&images).unwrap();
    for n in [0, 1, 8] {
        std::fs::copy(
            fixtures().join(format!("images/voc2012_val_vainf/{n}_image.png")),
            images.join(format!("{n}.png")),
        )
        .unwrap();
    }
    let LinearHead::Depth(head) = LinearHead::load(
        &fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth"),
        None,
    )
    .unwrap() else {
        panic!("depth head")
    };
    let mut options = BackboneOptions {
        resolution: Some(Resolution::new(112, 112)),
        cache: CacheMode::Off,
        ..Default::default()
    };
    head.configure(&mut options, 12);
    let model = fixtures().join("dinov2-small/onnx/model.onnx");
    let load = || {
        let bb = Backbone::load(&model, &options).unwrap();
        let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
        (bb, pre)
    };
    let out = tmp.path().join("out");
    let json = Shared::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(FileSink::new(out.clone(), PictureFormat::Png, 0.5).unwrap()),
        Box::new(JsonLinesSink::new(
            json.clone(),
            "jsonl",
            vec!["low=0.25,0.5,0.75,1".parse::<Region>().unwrap()],
        )),
        Box::new(Failing(0)),
    ];
    let source = dinoedge_camera::open(images.to_str().unwrap()).unwrap();
    let mut statuses = 0;
    let report = run(
        source,
        load(),
        Analysis::Depth(head.clone()),
        sinks,
        RunOptions::default(),
        |_| statuses += 1,
    )
    .unwrap();
    println!("{}", report.stats.line());
    assert_eq!((report.stats.frames_in, report.stats.frames_out), (3, 3));
    assert!(statuses >= 1);
    assert_eq!(report.sink_errors.len(), 1, "{:?}", report.sink_errors);
    assert!(report.sink_errors[0].contains("disk full"));
    let text = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 2);
    // every frame written by the file sink, equal to the head run directly; the JSON
    // summaries agree with the depth map
    let (mut bb, mut pre) = load();
    for (seq, n) in [0, 1, 8].iter().enumerate() {
        let img = load_rgb(&images.join(format!("{n}.png"))).unwrap();
        let f = bb.run_image(&mut pre, &img).unwrap();
        let want = head.predict_features(&f, 513, 513).unwrap();
        let got: ndarray::Array2<f32> =
            ndarray_npy::read_npy(out.join(format!("frame_{seq:06}_depth.npy"))).unwrap();
        assert_eq!(got, want);
        assert!(out.join(format!("frame_{seq:06}_depth_mm.png")).is_file());
        assert!(out.join(format!("frame_{seq:06}_depth.png")).is_file());
        let regions = &lines[seq]["regions"];
        let nearest = |r: &serde_json::Value| r["depth"]["nearest_m"].as_f64().unwrap() as f32;
        assert_eq!(regions[0]["region"], "frame");
        assert_eq!(
            nearest(&regions[0]),
            want.fold(f32::INFINITY, |a, &b| a.min(b))
        );
        // lower middle: rows 256.. (513 * 0.5 floored), columns 128..385
        let low = want.slice(ndarray::s![256.., 128..385]);
        assert_eq!(regions[1]["region"], "low");
        assert_eq!(
            nearest(&regions[1]),
            low.fold(f32::INFINITY, |a, &b| a.min(b))
        );
    }
}

/// The low-rate mode: every frame reaches the sinks with the newest result, the backbone
/// runs on every 3rd; files are written once per result.
#[test]
fn every_third_frame_to_the_backbone_every_frame_to_the_sinks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let options = BackboneOptions {
        resolution: Some(Resolution::new(56, 56)),
        cache: CacheMode::Off,
        ..Default::default()
    };
    let bb = Backbone::load(&model, &options).unwrap();
    let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
    let json = Shared::default();
    let out = tmp.path().join("pca");
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonLinesSink::new(json.clone(), "jsonl", vec![])),
        Box::new(FileSink::new(out.clone(), PictureFormat::Jpeg, 0.5).unwrap()),
    ];
    let source =
        dinoedge_camera::open("synthetic://?width=64&height=48&frames=10&pace=fast").unwrap();
    let board = tempfile::tempdir().unwrap();
    for (rel, text) in [
        ("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n"),
        ("sys/class/thermal/thermal_zone0/temp", "82500\n"),
        (
            "sys/devices/platform/soc/soc:firmware/get_throttled",
            "0x60006\n",
        ),
    ] {
        let p = board.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let report = run(
        source,
        (bb, pre),
        Analysis::Pca,
        sinks,
        RunOptions {
            cadence: Cadence::EveryNth(3),
            // lossless, so that the count is exact
            drop_frames: Some(false),
            // a Raspberry Pi's sensors: hot, throttled now
            board_root: Some(board.path().into()),
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(report.stats.frames_out, 10, "{}", report.stats.line());
    assert_eq!(report.stats.frames_analysed, 4, "{}", report.stats.line());
    let b = report.stats.board.as_ref().unwrap();
    assert_eq!(b.temperature_c, Some(82.5));
    assert!(b.throttled_now && !b.under_voltage_now);
    assert!(
        report.stats.line().ends_with("| SoC 82 °C, THROTTLED"),
        "{}",
        report.stats.line()
    );
    let text = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    // lossless: frame n carries the result of frame 3 * (n / 3), fresh on 0, 3, 6, 9
    for (n, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], n as u64);
        assert_eq!(l["result_seq"], (n / 3 * 3) as u64, "{l}");
        assert_eq!(l["fresh"], n % 3 == 0, "{l}");
    }
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "frame_000000_pca.jpg",
            "frame_000003_pca.jpg",
            "frame_000006_pca.jpg",
            "frame_000009_pca.jpg"
        ]
    );
}

/// Each output's frame number and CLS token.
type Collected = Arc<Mutex<Vec<(u64, Vec<f32>)>>>;

/// Keeps what [`Collected`] holds.
struct Collect(Collected);
impl Sink for Collect {
    fn name(&self) -> String {
        "collect".into()
    }
    fn write(&mut self, out: &Output) -> Result<(), StreamError> {
        let r = out.result.as_ref().expect("every frame has its result");
        assert_eq!(r.seq, out.frame.seq, "a frame with another frame's result");
        let dinoedge_stream::Analysed::Features(f) = &r.analysed else {
            panic!("features asked for")
        };
        self.0
            .lock()
            .unwrap()
            .push((out.frame.seq, f.cls().to_vec()));
        Ok(())
    }
}

/// Three backbone workers on one compiled graph: every frame comes out once, in order, with
/// its own features (the same as one backbone gives on that frame).
#[test]
fn three_workers_deliver_every_frame_in_order_with_its_own_features() {
    let model = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let options = BackboneOptions {
        resolution: Some(Resolution::new(56, 56)),
        threads: Some(2),
        cache: CacheMode::Off,
        ..Default::default()
    };
    let bb = Backbone::load(&model, &options).unwrap();
    let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
    let url = "synthetic://?width=64&height=48&frames=14&pace=fast";
    let got = Arc::new(Mutex::new(Vec::new()));
    let report = run(
        dinoedge_camera::open(url).unwrap(),
        (bb, pre),
        Analysis::Features,
        vec![Box::new(Collect(got.clone()))],
        RunOptions {
            workers: 3,
            drop_frames: Some(false),
            board_root: None,
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(report.stats.frames_out, 14, "{}", report.stats.line());
    let got = got.lock().unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..14).collect::<Vec<u64>>());
    // the same frames through one backbone, one by one
    let mut bb = Backbone::load(&model, &options).unwrap();
    let mut pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
    let mut source = dinoedge_camera::open(url).unwrap();
    let mut distinct = 0;
    for (seq, cls) in got.iter() {
        let frame = source.next_frame().unwrap().unwrap();
        assert_eq!(frame.seq, *seq);
        let want = bb.run_image(&mut pre, &frame.to_image()).unwrap();
        let diff = want
            .cls()
            .iter()
            .zip(cls)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-5, "frame {seq}: CLS differs by {diff}");
        if *seq > 0 && got[0].1 != *cls {
            distinct += 1;
        }
    }
    // the frames differ, so matching each one is not a coincidence
    assert!(
        distinct >= 10,
        "only {distinct} frames differ from the first"
    );
}

/// A backbone split into more workers than threads still runs (one thread each), and a
/// worker asked for no threads is an error, not a hang.
#[test]
fn a_worker_with_no_threads_is_an_error() {
    let model = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let options = BackboneOptions {
        resolution: Some(Resolution::new(56, 56)),
        threads: Some(1),
        cache: CacheMode::Off,
        ..Default::default()
    };
    let bb = Backbone::load(&model, &options).unwrap();
    let e = bb.worker(0).unwrap_err().to_string();
    assert!(e.contains("threads must be at least 1"), "{e}");
    let w = bb.worker(1).unwrap();
    assert_eq!((w.threads(), w.resolution()), (1, bb.resolution()));
}

/// Panics on its third output (a bug in a sink, say).
struct Panicking(u32);
impl Sink for Panicking {
    fn name(&self) -> String {
        "panicking".into()
    }
    fn write(&mut self, _: &Output) -> Result<(), StreamError> {
        self.0 += 1;
        assert!(self.0 < 3, "a bug in the sink");
        Ok(())
    }
}

/// A sink that panics is reported and closed while the others finish; a run whose status
/// callback panics would have hung before (the stages never heard of it): here every stage's
/// panic becomes an error and the run ends.
#[test]
fn a_panicking_sink_is_an_error_and_the_others_finish() {
    let (bb, pre) = tiny_backbone(56);
    let got = Arc::new(Mutex::new(Vec::new()));
    let report = run(
        dinoedge_camera::open("synthetic://?width=64&height=48&frames=6&pace=fast").unwrap(),
        (bb, pre),
        Analysis::Features,
        vec![Box::new(Panicking(0)), Box::new(Collect(got.clone()))],
        RunOptions {
            drop_frames: Some(false),
            board_root: None,
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(report.stats.frames_out, 6, "{}", report.stats.line());
    assert_eq!(got.lock().unwrap().len(), 6);
    assert_eq!(report.sink_errors.len(), 1, "{:?}", report.sink_errors);
    let e = &report.sink_errors[0];
    assert!(
        e.contains("sink panicking") && e.contains("a bug in the sink"),
        "{e}"
    );
}

/// A camera that sends two frames and then nothing (unplugged without an error, say).
struct Stalling(u64);
impl dinoedge_camera::FrameSource for Stalling {
    fn next_frame(&mut self) -> dinoedge_camera::Result<Option<dinoedge_camera::Frame>> {
        if self.0 == 2 {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        self.0 += 1;
        Ok(Some(dinoedge_camera::Frame::new(
            vec![128; 64 * 48 * 3],
            64,
            48,
            self.0 - 1,
        )))
    }
    fn info(&self) -> dinoedge_camera::SourceInfo {
        dinoedge_camera::SourceInfo {
            kind: "stalling",
            description: "two frames, then silence".into(),
            size: Some((64, 48)),
            fps: None,
            live: true,
        }
    }
}

/// Sets the run's stop flag (as Ctrl-C does) at its second output.
struct StopAtSecond(Arc<std::sync::atomic::AtomicBool>, u32);
impl Sink for StopAtSecond {
    fn name(&self) -> String {
        "stop".into()
    }
    fn write(&mut self, _: &Output) -> Result<(), StreamError> {
        self.1 += 1;
        if self.1 == 2 {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A stop while the source is blocked (no frame for an hour) ends the run, every sink
/// finished, without waiting for the source's next frame.
#[test]
fn a_stop_does_not_wait_for_a_stalled_source() {
    let (bb, pre) = tiny_backbone(56);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(StopAtSecond(stop.clone(), 0))];
    std::thread::spawn(move || {
        let report = run(
            Box::new(Stalling(0)),
            (bb, pre),
            Analysis::Features,
            sinks,
            RunOptions {
                stop,
                drop_frames: Some(false),
                board_root: None,
                ..RunOptions::default()
            },
            |_| {},
        );
        let _ = tx.send(report.map(|r| (r.stats.frames_out, r.stopped)));
    });
    // an hour's stall, so any answer at all shows the run did not wait for the source
    let report = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the run waited for the stalled source")
        .unwrap();
    assert_eq!(report, (2, true));
}

/// A full disk: the files sink fails with the operating system's reason, and every file it
/// left under a final name is whole (it writes to a hidden name and renames when complete).
/// Needs a small tmpfs, so root (as in CI); elsewhere it says why it did not run.
/// A tmpfs of `size` mounted on `dir` for the guard's life, or `None` with the reason printed
/// (it needs root, as in CI).
fn small_tmpfs(dir: &std::path::Path, size: &str) -> Option<Unmount> {
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output();
    match mounted {
        Ok(o) if o.status.success() => Some(Unmount(dir.to_owned())),
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a small tmpfs here ({}); CI runs it as root",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: no `mount` ({e})");
            None
        }
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_files_sink_with_its_reason_and_leaves_no_half_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_unmount) = small_tmpfs(dir.path(), "48k") else {
        return;
    };
    let (bb, pre) = tiny_backbone(112);
    let out = dir.path().join("out");
    let report = run(
        dinoedge_camera::open("synthetic://?width=64&height=48&frames=40&pace=fast").unwrap(),
        (bb, pre),
        Analysis::Features,
        vec![Box::new(
            FileSink::new(out.clone(), PictureFormat::Png, 0.5).unwrap(),
        )],
        RunOptions {
            drop_frames: Some(false),
            board_root: None,
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(report.sink_errors.len(), 1, "{:?}", report.sink_errors);
    assert!(
        report.sink_errors[0].contains("No space left on device"),
        "{:?}",
        report.sink_errors
    );
    let mut whole = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part"),
            "a temporary file was left: {name}"
        );
        if name.ends_with("_patches.npy") {
            let a: ndarray::Array3<f32> = ndarray_npy::read_npy(&path).unwrap();
            assert_eq!(a.dim(), (8, 8, 48), "{name}");
            whole += 1;
        }
    }
    assert!((1..40).contains(&whole), "{whole} whole files");
}

/// A full disk under a JSON-lines file and an MCAP recording: both sinks fail with the
/// operating system's reason, the JSON lines file holds whole lines only, and the recording is
/// closed at its last whole chunk, so it opens in an MCAP reader with every message up to it.
#[test]
fn a_full_disk_leaves_whole_json_lines_and_a_readable_mcap() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_unmount) = small_tmpfs(dir.path(), "96k") else {
        return;
    };
    let (bb, pre) = tiny_backbone(112);
    let jsonl = dir.path().join("run.jsonl");
    let mcap_path = dir.path().join("run.mcap");
    let report = run(
        dinoedge_camera::open("synthetic://?width=160&height=120&frames=400&pace=fast").unwrap(),
        (bb, pre),
        Analysis::Features,
        vec![
            Box::new(JsonLinesSink::create(&jsonl, vec![]).unwrap()),
            // a chunk per frame, so the disk fills between chunks and inside one
            Box::new(
                dinoedge_stream::McapSink::create(&mcap_path, false, 0.5)
                    .unwrap()
                    .flush_every(std::time::Duration::ZERO),
            ),
        ],
        RunOptions {
            drop_frames: Some(false),
            board_root: None,
            ..RunOptions::default()
        },
        |_| {},
    )
    .unwrap();
    let errors = report.sink_errors.join("\n");
    assert_eq!(report.sink_errors.len(), 2, "{errors}");
    assert!(
        report
            .sink_errors
            .iter()
            .all(|e| e.contains("No space left on device")),
        "{errors}"
    );
    assert!(
        errors.contains("closed at its last whole chunk"),
        "{errors}"
    );

    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a half line was left"
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }

    let bytes = std::fs::read(&mcap_path).unwrap();
    let mut images = 0;
    for m in mcap::MessageStream::new(&bytes).unwrap() {
        let m = m.unwrap_or_else(|e| panic!("unreadable after {images} images: {e}"));
        images += usize::from(m.channel.topic == "/camera/image");
    }
    println!(
        "full disk: {} JSON lines, {images} recorded frames of {} written",
        text.lines().count(),
        report.stats.frames_in
    );
    assert!(images >= 1, "the recording lost every frame");
    // and it plays back as a source, every recorded frame
    let mut source = dinoedge_camera::open(mcap_path.to_str().unwrap()).unwrap();
    let mut played = 0;
    while let Some(_frame) = source.next_frame().unwrap() {
        played += 1;
    }
    assert_eq!(played, images);
}

/// The tiny DINOv2 fixture at `side`x`side` on one thread, uncached, with its preprocessor.
pub fn tiny_backbone(side: u32) -> (Backbone, dinoedge_model::Preprocessor) {
    let options = BackboneOptions {
        resolution: Some(Resolution::new(side, side)),
        threads: Some(1),
        cache: CacheMode::Off,
        ..Default::default()
    };
    let model = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let bb = Backbone::load(&model, &options).unwrap();
    let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
    (bb, pre)
}
