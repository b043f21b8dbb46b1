//! The whole pipeline against the backbone alone, in the same run, on the same frames.
//!
//! 1. Backbone only: frames of the sample clip (decoded once, in memory) through
//!    preprocessing and the backbone in a loop — the ceiling.
//! 2. `dinoedge_stream::run` on the same frames with the NYU depth head and sinks: JSON lines
//!    with a region summary, the live view (no viewer), then also an MCAP recording, then also
//!    the files sink (16-bit depth PNG, depth `.npy`, colour PNG per frame).
//!    Everything after the backbone runs on other threads; the ratio says how well it hides.
//! 3. Workers (`RunOptions::workers`, `dinoedge run --workers`): frames per second and
//!    latency with the cores split between 1, 2, … backbones, fp32 and int8.
//! 4. Memory over a 1,000-frame run (tiny model, so that it takes seconds): resident set and
//!    its peak after 100, 500 and 1,000 frames.
//!
//! `cargo bench --bench pipeline` (fixtures from `../shared/fixtures`; FRAMES=N frames per
//! timing, default 60; ROUNDS=R rounds, default 3, medians reported). Every backbone is run
//! once before it is timed.

use std::path::PathBuf;
use std::time::Instant;

use dinoedge_camera::{Frame, FrameSource, SourceInfo};
use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution};
use dinoedge_stream::{
    Analysis, FileSink, HttpSink, JsonLinesSink, McapSink, PictureFormat, Region, RunOptions,
    SharedStats, Sink, View, run,
};

use dinoedge_testkit::fixtures;

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
        .unwrap_or(60);
    let clip = dinoedge_testkit::sample_clip();
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
    // loaded from the compile cache and run once, so that no timing includes a cold start
    let load = |model: &PathBuf, options: &BackboneOptions| {
        let mut bb = Backbone::load(model, options).unwrap();
        let mut pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
        bb.run_image(&mut pre, &frames[0].to_image()).unwrap();
        (bb, pre)
    };
    let (w, h) = (frames[0].width, frames[0].height);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "pipeline bench: ViT-S/14 fp32 at 224x224 + NYU linear depth head, {n} frames of the {w}x{h} sample clip, {} threads, {rounds} rounds (median)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let tmp = tempfile::tempdir().unwrap();
    let region: Region = "ahead=0.33,0.5,0.67,1".parse().unwrap();
    let configs = [
        "backbone alone",
        "pipeline: depth head, no sink",
        "pipeline: depth head, JSON lines, live view",
        "pipeline: depth head, JSON lines, live view, MCAP",
        "pipeline: depth head, JSON, live view, MCAP, files",
    ];
    // rounds interleave the configurations, so that a slow spell of a shared machine hits
    // them alike
    let mut fps = vec![Vec::new(); configs.len()];
    let mut latency = vec![0f32; configs.len()];
    for round in 0..rounds {
        for (c, name) in configs.iter().enumerate() {
            let (mut bb, mut pre) = load(&model, &options);
            if c == 0 {
                // 1. the backbone alone: preprocessing and the backbone in a loop
                let t = Instant::now();
                for i in 0..n as usize {
                    let img = frames[i % frames.len()].to_image();
                    std::hint::black_box(bb.run_image(&mut pre, &img).unwrap());
                }
                fps[c].push(n as f64 / t.elapsed().as_secs_f64());
            } else {
                // 2. the runner with the head and sinks on their own threads
                let stats = SharedStats::default();
                let mut sinks: Vec<Box<dyn Sink>> = vec![];
                if c >= 2 {
                    sinks.push(Box::new(JsonLinesSink::new(
                        std::io::sink(),
                        "jsonl",
                        vec![region.clone()],
                    )));
                    sinks.push(Box::new(
                        HttpSink::bind("127.0.0.1:0", "bench", &View::ALL[..2], stats.clone(), 0.5)
                            .unwrap(),
                    ));
                }
                if c >= 3 {
                    sinks.push(Box::new(
                        McapSink::create(&tmp.path().join("bench.mcap"), true, 0.5).unwrap(),
                    ));
                }
                if c == 4 {
                    sinks.push(Box::new(
                        FileSink::new(tmp.path().join("files"), PictureFormat::Png, 0.5).unwrap(),
                    ));
                }
                let source = Box::new(Memory {
                    frames: frames.clone(),
                    n,
                    seq: 0,
                });
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
                let s = &report.stats;
                fps[c].push(s.frames_out as f64 / s.seconds);
                latency[c] = s.latency_ms[0];
            }
            println!(
                "  round {}: {name:<50} {:>6.2} fps",
                round + 1,
                fps[c][round]
            );
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&fps[0]);
    println!("{:<52} {base:>7.2} fps", configs[0]);
    for (c, name) in configs.iter().enumerate().skip(1) {
        let f = median(&fps[c]);
        let lat = if c >= 2 {
            format!(" (latency p50 {:.0} ms)", latency[c])
        } else {
            String::new()
        };
        println!(
            "{name:<52} {f:>7.2} fps  = {:.1} % of the backbone alone{lat}",
            100.0 * f / base
        );
    }

    // 3. workers: frames per second and latency with the backbone's threads split between
    //    1, 2, … backbones (results in frame order), fp32 and int8
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("workers (depth head, JSON lines; latency = capture to sink, p50):");
    for (label, file) in [
        ("fp32", "dinov2-small/onnx/model.onnx"),
        ("int8 (S8 weights)", "dinov2-small/onnx/model_int8.onnx"),
    ] {
        let model = fixtures().join(file);
        let mut results = vec![Vec::new(); cores];
        for _round in 0..rounds {
            for (w, result) in results.iter_mut().enumerate() {
                let report = run(
                    Box::new(Memory {
                        frames: frames.clone(),
                        n,
                        seq: 0,
                    }),
                    load(&model, &options),
                    Analysis::Depth(head.clone()),
                    vec![Box::new(JsonLinesSink::new(
                        std::io::sink(),
                        "jsonl",
                        vec![region.clone()],
                    ))],
                    RunOptions {
                        workers: w + 1,
                        board_root: None,
                        ..RunOptions::default()
                    },
                    |_| {},
                )
                .unwrap();
                let s = &report.stats;
                result.push((s.frames_out as f64 / s.seconds, s.latency_ms[0] as f64));
            }
        }
        for (w, r) in results.iter().enumerate() {
            let fps = median(&r.iter().map(|x| x.0).collect::<Vec<_>>());
            let lat = median(&r.iter().map(|x| x.1).collect::<Vec<_>>());
            let one = median(&results[0].iter().map(|x| x.0).collect::<Vec<_>>());
            println!(
                "  {label:<18} {} worker(s) × {} thread(s): {fps:>6.2} fps ({:.2}x), latency p50 {lat:.0} ms",
                w + 1,
                (cores / (w + 1)).max(1),
                fps / one
            );
        }
    }

    // 4. memory over 1,000 frames
    let tiny = fixtures().join("tiny/dinov2-tiny/onnx/model.onnx");
    let options = BackboneOptions {
        resolution: Some(Resolution::new(112, 112)),
        cache: CacheMode::Dir(cache),
        ..Default::default()
    };
    let stats = SharedStats::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonLinesSink::new(std::io::sink(), "jsonl", vec![region])),
        Box::new(
            HttpSink::bind("127.0.0.1:0", "bench", &View::ALL[..2], stats.clone(), 0.5).unwrap(),
        ),
        Box::new(McapSink::create(&tmp.path().join("long.mcap"), true, 0.5).unwrap()),
    ];
    let source = Box::new(Memory {
        frames: frames.clone(),
        n: 1000,
        seq: 0,
    });
    let mut marks = Vec::new();
    let mut next = 100u64;
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
                next = match next {
                    100 => 500,
                    500 => 1000,
                    _ => u64::MAX,
                };
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
