//! Memory stays flat over a long run: the peak resident set after 1,000 frames is within a
//! few MB of the peak after 200. The peak is the process's, so the measuring test runs in a
//! process of its own (the test binary started again for that one test), where no other
//! test's allocations count.

use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution};
use dinoedge_stream::{
    Analysis, HttpSink, JsonLinesSink, McapSink, RunOptions, SharedStats, Sink, View, run,
};
use dinoedge_testkit::fixtures;

/// Peak resident set, kB.
fn hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn peak_memory_is_flat_over_1000_frames() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory::peak_memory_alone",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .output()
        .expect("the test binary starts again");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "the measuring process failed");
    assert!(text.contains("1 passed"), "the measuring test did not run");
}

#[test]
#[ignore = "run in a process of its own by peak_memory_is_flat_over_1000_frames"]
fn peak_memory_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let options = BackboneOptions {
        resolution: Some(Resolution::new(56, 56)),
        cache: CacheMode::Off,
        ..Default::default()
    };
    let bb = Backbone::load(
        fixtures().join("tiny/dinov2-tiny/onnx/model.onnx"),
        &options,
    )
    .unwrap();
    let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
    let stats = SharedStats::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonLinesSink::new(
            std::io::sink(),
            "jsonl",
            vec!["low=0,0.5,1,1".parse().unwrap()],
        )),
        Box::new(
            HttpSink::bind("127.0.0.1:0", "memory", &View::ALL[..2], stats.clone(), 0.5).unwrap(),
        ),
        Box::new(McapSink::create(&tmp.path().join("long.mcap"), false, 0.5).unwrap()),
    ];
    let source =
        dinoedge_camera::open("synthetic://?width=320&height=240&frames=1000&pace=fast").unwrap();
    let mut at = Vec::new();
    let report = run(
        source,
        (bb, pre),
        Analysis::Pca,
        sinks,
        RunOptions {
            stats,
            status_every: std::time::Duration::from_millis(10),
            ..RunOptions::default()
        },
        |s| {
            if (s.frames_out >= 200 && at.is_empty()) || s.frames_out >= 1000 {
                at.push((s.frames_out, hwm_kb()));
            }
        },
    )
    .unwrap();
    assert_eq!(report.stats.frames_out, 1000);
    let (first, last) = (at[0], *at.last().unwrap());
    eprintln!(
        "peak resident: {:.1} MB after {} frames, {:.1} MB after {}",
        first.1 as f64 / 1024.0,
        first.0,
        last.1 as f64 / 1024.0,
        last.0
    );
    assert!(
        last.1 < first.1 + 8 * 1024,
        "peak memory grew by {} kB between frame {} and {}",
        last.1 - first.1,
        first.0,
        last.0
    );
}
