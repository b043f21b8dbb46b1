//! The whole pipeline against the backbone alone, in the same run, on the same frames.
//!
//! 1. Backbone only: frames of the sample clip (decoded once, in memory) through
//!    preprocessing and the backbone in a loop — the ceiling.
//! 2. `dinoedge_stream::run` on the same frames with the NYU depth head and sinks: JSON lines
//!    with a region summary, the live view (no viewer), and then also an MCAP recording.
//!    Everything after the backbone runs on other threads; the ratio says how well it hides.
//! 3. Memory over a 1,000-frame run (tiny model, so that it takes seconds): resident set and
//!    its peak after 100, 500 and 1,000 frames.
//!
//! `cargo bench --bench pipeline` (fixtures from `../shared/fixtures`; FRAMES=N to change
//! the number of frames timed, default 40; rates are over the last 32
//! frames, so the first frame's warm-up is left out as it is for the backbone alone).

use std::path::PathBuf;
use std::time::Instant;

use dinoedge_camera::{Frame, FrameSource, SourceInfo};
use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution};
use dinoedge_stream::{
    Analysis, HttpSink, JsonLinesSink, McapSink, Region, RunOptions, SharedStats, Sink, run,
};

fn fixtures() -> PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"))
}

/// The clip's frames from memory, round and round, `n` in all (a file-like source: every
/// frame is processed).
struct Memory {
    frames: Vec<Frame>,
    n: u64,
    seq: u64,
}

impl FrameSource for Memory {
    fn next_frame(&mut self) -> dinoedge_camera::Result<Option<Frame>> {
        if self.seq >= self.n {
            return Ok(None);
        }
        let mut f = self.frames[(self.seq % self.frames.len() as u64) as usize].clone();
        f.seq = self.seq;
        f.captured = Instant::now();
        f.wall = std::time::SystemTime::now();
        self.seq += 1;
        Ok(Some(f))
    }
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "memory",
            description: "sample clip in memory".into(),
            size: None,
            fps: None,
            live: false,
        }
    }
}

fn rss_kb() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let model = fixtures().join("dinov2-small/onnx/model.onnx");
    if !model.is_file() {
        eprintln!(
            "skipping the pipeline bench: no fixtures at {}",
            fixtures().display()
        );
        return;
    }
    let n: u64 = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let clip =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sample/vtest_pedestrians.mjpeg");
    let mut src = dinoedge_camera::open(clip.to_str().unwrap()).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = src.next_frame().unwrap() {
        frames.push(f);
    }
    let LinearHead::Depth(head) = LinearHead::load(
        &fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth"),
        None,
    )
    .unwrap() else {
        panic!("a depth head")
    };
    let cache = std::env::temp_dir().join("dinoedge-bench-cache");
    let mut options = BackboneOptions {
        resolution: Some(Resolution::new(224, 224)),
        cache: CacheMode::Dir(cache.clone()),
        ..Default::default()
    };
    head.configure(&mut options, 12);
    let load = |model: &PathBuf, options: &BackboneOptions| {
        let bb = Backbone::load(model, options).unwrap();
        let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
        (bb, pre)
    };
    let (w, h) = (frames[0].width, frames[0].height);
    println!(
        "pipeline bench: ViT-S/14 fp32 at 224x224 + NYU linear depth head, {n} frames of the {w}x{h} sample clip, {} threads",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // 1. backbone alone
    let (mut bb, mut pre) = load(&model, &options);
    let img = frames[0].to_image();
    bb.run_image(&mut pre, &img).unwrap(); // warm-up
    let t = Instant::now();
    for i in 0..n as usize {
        let img = frames[i % frames.len()].to_image();
        std::hint::black_box(bb.run_image(&mut pre, &img).unwrap());
    }
    let backbone_fps = n as f64 / t.elapsed().as_secs_f64();
    println!("{:<52} {backbone_fps:>7.2} fps", "backbone alone");
    drop(bb);

    // 2. the pipeline
    let tmp = tempfile::tempdir().unwrap();
    let region: Region = "ahead=0.33,0.5,0.67,1".parse().unwrap();
    for with_mcap in [false, true] {
        let stats = SharedStats::default();
        let mut sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(JsonLinesSink::new(
                std::io::sink(),
                "jsonl",
                vec![region.clone()],
            )),
            Box::new(HttpSink::bind("127.0.0.1:0", "bench", stats.clone(), 0.5).unwrap()),
        ];
        if with_mcap {
            sinks.push(Box::new(
                McapSink::create(&tmp.path().join("bench.mcap"), true, 0.5).unwrap(),
            ));
        }
        let source = Box::new(Memory {
            frames: frames.clone(),
            n,
            seq: 0,
        });
        let (bb, pre) = load(&model, &options);
        let report = run(
            source,
            (bb, pre),
            Analysis::Depth(head.clone()),
            sinks,
            RunOptions {
                stats,
                ..RunOptions::default()
            },
            |_| {},
        )
        .unwrap();
        // the rate over the last 32 frames: the first frame's warm-up is left out, as it is
        // for the backbone alone
        let s = &report.stats;
        let fps = s.fps_out;
        let name = if with_mcap {
            "pipeline: depth head, JSON lines, live view, MCAP"
        } else {
            "pipeline: depth head, JSON lines, live view"
        };
        println!(
            "{name:<52} {fps:>7.2} fps  = {:.1} % of the backbone alone (latency p50 {:.0} ms)",
            100.0 * fps / backbone_fps,
            s.latency_ms[0]
        );
    }

    // 3. memory over 1,000 frames
    let tiny = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let options = BackboneOptions {
        resolution: Some(Resolution::new(112, 112)),
        cache: CacheMode::Dir(cache),
        ..Default::default()
    };
    let stats = SharedStats::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonLinesSink::new(std::io::sink(), "jsonl", vec![region])),
        Box::new(HttpSink::bind("127.0.0.1:0", "bench", stats.clone(), 0.5).unwrap()),
        Box::new(McapSink::create(&tmp.path().join("long.mcap"), true, 0.5).unwrap()),
    ];
    let source = Box::new(Memory {
        frames,
        n: 1000,
        seq: 0,
    });
    let mut marks = Vec::new();
    let mut next = 100;
    run(
        source,
        load(&tiny, &options),
        Analysis::Pca,
        sinks,
        RunOptions {
            stats,
            status_every: std::time::Duration::from_millis(20),
            ..RunOptions::default()
        },
        |s| {
            if s.frames_out >= next {
                marks.push((s.frames_out, rss_kb()));
                next = if next == 100 { 500 } else { 1000 };
            }
        },
    )
    .unwrap();
    for (frames, (rss, hwm)) in marks {
        println!(
            "memory after {frames:>4} frames (tiny model, PCA, 3 sinks): resident {:.1} MB, peak {:.1} MB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
}
