//! `dinoedge run --model M --source URI [--head H | --task …] --sink …`: the live runner.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dinoedge_camera::{Pace, SourceSpec};
use dinoedge_heads::LinearHead;
use dinoedge_model::{DepthConfig, ResizeMode, Resolution, Runtime};
use dinoedge_stream::points::Points;
use dinoedge_stream::{
    Analysis, Cadence, DEFAULT_LISTEN, GpioSink, Region, RunOptions, RunReport, SharedStats, Sink,
    SinkContext, SinkSpec, SinkState, StatsSnapshot,
};

use super::{ModelArgs, head_options};

/// What to compute on each frame when no head is given.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// The DINOv2 PCA picture of the patch features (no head needed).
    Pca,
    /// Patch features and CLS token (`.npy` with a files sink).
    Features,
    /// Depth (a depth head: --head dinov2_vits14_nyu_linear_head.pth, or a depth model such as
    /// Depth Anything V2, where it is the default).
    Depth,
    /// Segmentation (needs a segmentation head: --head dinov2_vits14_voc2012_linear_head.pth).
    Seg,
}

/// How the numbers are shown while running.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMode {
    /// A status line redrawn in place on a terminal; plain lines every 5 s otherwise.
    Auto,
    /// Plain lines.
    Line,
    /// One JSON object per update (on stderr).
    Json,
    /// Only the final numbers.
    Off,
}

/// Arguments of `dinoedge run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ONNX model file, or a name from `dinoedge models` once fetched (vits14, vits14-int8 on
    /// small boards); default: $DINOEDGE_MODEL.
    #[arg(long, short = 'm', env = "DINOEDGE_MODEL", value_parser = crate::cmd::fetch::model_ref)]
    model: Option<PathBuf>,
    /// Where frames come from: v4l2:///dev/video0, csi://0, clip.mjpeg, clip.mp4, frames/,
    /// run.mcap, rtsp://…, synthetic:// (see `dinoedge capture --help` for options such as
    /// ?loop&fps=10).
    #[arg(long, short = 'i')]
    source: Option<String>,
    /// A linear head: DINOv2's released .pth (VOC/ADE20K segmentation, NYU/KITTI depth; or its
    /// name once fetched, e.g. vits14-nyu-linear) or one from `dinoedge train-head`. Sets the task.
    /// A segmentation head on a depth model (Depth Anything V2) runs beside the model's own
    /// depth: classes and depth from one pass (`--task seg` for the classes alone).
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: Option<PathBuf>,
    /// The camera's intrinsics, for point clouds from metric depth (MCAP sink,
    /// `/dinoedge/points`): `fx,fy,cx,cy` in pixels of the frames as the source delivers them,
    /// or `hfov=DEGREES`. A recording with a calibration topic (ROS 2 CameraInfo, Foxglove
    /// CameraCalibration) needs none.
    #[arg(long, value_name = "FX,FY,CX,CY|hfov=DEG")]
    intrinsics: Option<dinoedge_camera::Intrinsics>,
    /// What to compute without a head (seg needs --head; depth needs --head or a depth model).
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Where results go (repeat for several): `files:DIR` (`?format=jpg` for JPEG
    /// overlays), `jsonl` (stdout) or `jsonl:FILE`, `mcap:FILE.mcap` (`?overwrite`),
    /// `http` (the live view on --listen) or `http:ADDR`.
    #[arg(long = "sink", short = 'o')]
    sinks: Vec<String>,
    /// Address of the live view (default 127.0.0.1:8080: only this machine; 0.0.0.0:8080
    /// exposes it to the network).
    #[arg(long)]
    listen: Option<String>,
    /// Take defaults from a board profile: rpi4, rpi5, jetson-orin-nano, x86, `auto` (the
    /// detected board), or a profile.toml (firmware-configs/). Flags given here win.
    #[arg(long)]
    board: Option<String>,
    /// Print the settings the run would use (after the profile and the flags) as JSON, and exit.
    #[arg(long)]
    print_settings: bool,
    /// The backbone runs on every N-th frame, or with `idle` on the newest frame whenever it
    /// is free; every frame still reaches the sinks with the newest result drawn over it.
    #[arg(long, value_parser = parse_every)]
    every: Option<Cadence>,
    /// Process every frame of a live or paced source, however late (default: a slow
    /// pipeline drops old frames of live sources and keeps latency low).
    #[arg(long)]
    lossless: bool,
    /// Stop after this many frames reached the sinks.
    #[arg(long)]
    frames: Option<u64>,
    /// A region summarised in the JSON lines: NAME=LEFT,TOP,RIGHT,BOTTOM in fractions of the
    /// frame (repeatable), e.g. ahead=0.33,0.5,0.67,1 for the nearest depth in front.
    #[arg(long = "region")]
    regions: Vec<Region>,
    /// A GPIO rule (repeatable; Raspberry Pi, build with `--features rpi`):
    /// `17=high:nearest(ahead)<0.8`, `18=pwm:proximity(ahead,0.3,2)`,
    /// `22=high:class(person)>0.05`, `27=snapshot` (BCM pin numbers; regions from --region).
    #[arg(long = "gpio")]
    gpio: Vec<String>,
    /// Where a snapshot button's pictures go.
    #[arg(long, default_value = "snapshots")]
    snapshot_dir: PathBuf,
    /// Opacity of segmentation over the frame (0..1).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Depth heads: the largest bin depth in metres (default: from the checkpoint).
    #[arg(long)]
    max_depth: Option<f32>,
    /// How the numbers are shown while running.
    #[arg(long, value_enum, default_value = "auto")]
    status: StatusMode,
    /// Input size HxW, both multiples of 14 (default: a trained head's, else the model's).
    #[arg(long, short)]
    size: Option<Resolution>,
    /// Backbone threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Backbones working on frames side by side, the threads split between them: more frames
    /// per second on several cores (results stay in frame order; each frame takes longer;
    /// default: the board profile's, else 1).
    #[arg(long,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    workers: Option<usize>,
    /// Where compiled models are cached (default: $DINOEDGE_CACHE_DIR or ~/.cache/dinoedge/compiled).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the compile cache.
    #[arg(long)]
    no_cache: bool,
    /// Where the backbone runs: `cpu`, `cuda` (an NVIDIA GPU, built with `--features cuda`),
    /// or `cuda-or-cpu` (the GPU where there is one, else the CPU; default: the board
    /// profile's, else `cpu`).
    #[arg(long, value_parser = super::parse_runtime)]
    runtime: Option<Runtime>,
}

fn parse_every(s: &str) -> Result<Cadence, String> {
    match s {
        "idle" => Ok(Cadence::WhenIdle),
        n => match n.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!(
                "`{s}`: give a frame count ≥ 1 (every 3rd frame: 3) or `idle`"
            )),
            Ok(1) => Ok(Cadence::EveryFrame),
            Ok(k) => Ok(Cadence::EveryNth(k)),
        },
    }
}

/// Where the model comes from, with the message a newcomer needs when it is nowhere.
fn model_path(arg: Option<PathBuf>) -> Result<PathBuf> {
    let Some(p) = arg else {
        bail!(
            "no model: `dinoedge fetch vits14-int8` downloads DINOv2 ViT-S/14 (int8, for small \
             boards; vits14 is fp32), then pass --model vits14-int8 (or set DINOEDGE_MODEL); \
             --model also takes the path of any DINOv2 ONNX file"
        );
    };
    if !p.is_file() {
        bail!(
            "model {} not found: `dinoedge fetch vits14-int8` downloads DINOv2 ViT-S/14 and \
             `--model vits14-int8` uses it (`dinoedge models` lists the others)",
            p.display()
        );
    }
    Ok(p)
}

/// Shows the numbers as the run goes.
struct Status {
    mode: StatusMode,
    tty: bool,
    drawn: bool,
    last: std::time::Instant,
}

impl Status {
    fn new(mode: StatusMode) -> Status {
        Status {
            mode,
            tty: std::io::stderr().is_terminal(),
            drawn: false,
            last: std::time::Instant::now(),
        }
    }

    fn show(&mut self, s: &StatsSnapshot) {
        match self.mode {
            StatusMode::Off => {}
            StatusMode::Json => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{}",
                    serde_json::to_string(s).unwrap_or_default()
                );
            }
            StatusMode::Auto if self.tty => {
                let _ = write!(std::io::stderr(), "\r\x1b[2K{}", s.line());
                self.drawn = true;
            }
            StatusMode::Auto | StatusMode::Line => {
                let every = if self.mode == StatusMode::Auto { 5 } else { 1 };
                if self.last.elapsed() >= Duration::from_secs(every) {
                    self.last = std::time::Instant::now();
                    let _ = writeln!(std::io::stderr(), "{}", s.line());
                }
            }
        }
    }

    fn end(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// `--print-settings`: what the run would use, after the profile and the flags, as JSON.
fn print_settings(args: &Args) {
    let v = serde_json::json!({
        "board": args.board,
        "model": args.model,
        "head": args.head,
        "source": args.source,
        "sinks": args.sinks,
        "listen": args.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        "threads": args.threads,
        "workers": args.workers.unwrap_or(1),
        "runtime": args.runtime.unwrap_or_default().name(),
        "size": args.size.map(|s| s.to_string()),
        "every": args.every.map(|e| format!("{e:?}")),
        "gpio": args.gpio,
    });
    println!("{v}");
}

/// The task: the head's, unless `--task` asks for one (which must fit the head, or not need one);
/// with no head, a depth model's own depth (`model_depth`), else the PCA picture.
fn choose_task(
    head: Option<&LinearHead>,
    task: Option<Task>,
    head_path: Option<&std::path::Path>,
    model_depth: bool,
) -> Result<Task> {
    Ok(match (head, task) {
        (None, None | Some(Task::Depth)) if model_depth => Task::Depth,
        (Some(LinearHead::Seg(_)), None | Some(Task::Seg)) => Task::Seg,
        (Some(LinearHead::Depth(_)), None | Some(Task::Depth)) => Task::Depth,
        (Some(h), Some(t)) => bail!(
            "--task {t:?} does not fit the head {} (a {} head): drop --task or pick another head",
            head_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            match h {
                LinearHead::Seg(_) => "segmentation",
                LinearHead::Depth(_) => "depth",
            }
        ),
        (None, Some(Task::Depth)) => bail!(
            "--task depth needs a depth head: --head dinov2_vits14_nyu_linear_head.pth (DINOv2's release) or one from `dinoedge train-head`, or a depth model such as Depth Anything V2"
        ),
        (None, Some(Task::Seg)) => bail!(
            "--task seg needs a segmentation head: --head dinov2_vits14_voc2012_linear_head.pth (DINOv2's release) or one from `dinoedge train-head`"
        ),
        (None, t) => t.unwrap_or(Task::Pca),
    })
}

/// Point clouds need depth in metres and intrinsics: `--intrinsics` or an explicit
/// `mcap:…?points=stride:N` that cannot give one is an error before anything opens.
fn check_points(
    args: &Args,
    analysis: &Analysis,
    sinks: &[SinkSpec],
    source: &dinoedge_camera::SourceSpec,
    model: &ModelArgs,
    info: &dinoedge_model::ModelInfo,
) -> Result<()> {
    let asked = sinks.iter().find_map(|s| match s {
        SinkSpec::Mcap {
            points: Some(Points::Stride(n)),
            ..
        } => Some(format!("mcap:…?points=stride:{n}")),
        _ => None,
    });
    let what = match (&asked, args.intrinsics.is_some()) {
        (Some(a), _) => a.clone(),
        (None, true) => "--intrinsics".to_string(),
        (None, false) => return Ok(()),
    };
    let metres = match analysis {
        Analysis::Depth(_) | Analysis::ModelDepth(DepthConfig::Metric { .. }) => true,
        Analysis::SegWithModelDepth(_, DepthConfig::Metric { .. }) => true,
        Analysis::ModelDepth(DepthConfig::Relative)
        | Analysis::SegWithModelDepth(_, DepthConfig::Relative) => bail!(
            "{what}: a point cloud needs depth in metres, and {} ({}) gives relative depth, with no unit: use a metric model (a Depth Anything V2 Metric export, whose config.json says depth_estimation_type: metric) or a DINOv2 depth head (--head)",
            model.model.display(),
            info.variant()
        ),
        Analysis::Features | Analysis::Pca | Analysis::Seg(_) => false,
    };
    if !metres && asked.is_some() {
        bail!(
            "{what}: a point cloud needs depth in metres, and this run computes {}: give a depth head (--head) or a metric depth model",
            analysis.name()
        );
    }
    let recording = matches!(source.kind, dinoedge_camera::SourceKind::Mcap { .. });
    if asked.is_some() && args.intrinsics.is_none() && !recording {
        bail!(
            "{what}: a point cloud needs the camera's intrinsics: --intrinsics fx,fy,cx,cy (pixels of the frames) or --intrinsics hfov=DEGREES"
        );
    }
    Ok(())
}

/// A flag Ctrl-C, SIGTERM or SIGHUP sets (the runner finishes what is in flight and closes
/// every sink); a second one quits at once. The flag is set before anything is written, and
/// the message's write may fail (stderr a closed pipe, as in `dinoedge run … 2>&1 | head -1`)
/// without stopping the stop.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let presses = AtomicU32::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::Relaxed) == 0 {
            flag.store(true, Ordering::Relaxed);
            let _ = writeln!(
                std::io::stderr(),
                "\nstopping: finishing the frames in flight and closing every sink (Ctrl-C again to quit at once)"
            );
        } else {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C/SIGTERM/SIGHUP handler")?;
    Ok(stop)
}

/// The final numbers, where results went (`wheres`: one per sink, in the sinks' order; a
/// sink that failed is not said to have written anything), and an error naming what failed
/// along the way.
fn summarise(report: &RunReport, status: StatusMode, wheres: &[Option<String>]) -> Result<()> {
    // written even to a closed stderr (`… 2>&1 | head -1`): a failed write is no reason to fail
    // a run whose outputs are complete
    let mut err = std::io::stderr();
    if status != StatusMode::Json {
        let _ = writeln!(err, "{}", report.stats.line());
    } else {
        let _ = writeln!(
            err,
            "{}",
            serde_json::to_string(&report.stats).unwrap_or_default()
        );
    }
    for (i, w) in wheres.iter().enumerate() {
        let Some(w) = w else { continue };
        match report.stats.sinks.get(i).map(|s| &s.state) {
            Some(SinkState::Failed(why)) => {
                let _ = writeln!(err, "FAILED, incomplete: {w} ({why})");
            }
            _ => {
                let _ = writeln!(err, "wrote {w}");
            }
        }
    }
    if report.stopped {
        let _ = writeln!(
            err,
            "stopped (Ctrl-C, SIGTERM or SIGHUP); every sink was flushed"
        );
    }
    let mut problems = Vec::new();
    if !report.source_errors.is_empty() {
        for e in &report.source_errors {
            let _ = writeln!(err, "source error: {e}");
        }
        problems.push(format!(
            "the source failed {} time(s) (last: {})",
            report.source_errors.len(),
            report
                .source_errors
                .last()
                .map(String::as_str)
                .unwrap_or("")
        ));
    }
    if !report.sink_errors.is_empty() {
        for e in &report.sink_errors {
            let _ = writeln!(err, "sink error: {e}");
        }
        problems.push(format!(
            "{} sink(s) failed; the other sinks' outputs are complete",
            report.sink_errors.len()
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Fill what the flags leave open from the board profile (`--board`): the profile's
/// [`Profile::apply`](dinoedge_board::Profile::apply) decides what is filled; here its text is
/// parsed as the flags are.
fn apply_board(mut args: Args) -> Result<Args> {
    let Some(spec) = args.board.clone() else {
        return Ok(args);
    };
    let p = dinoedge_board::Profile::load(&spec)?;
    // typed flags the user gave stand as a marker: the profile fills only what is unset
    let given = |set: bool| set.then(String::new);
    let mut s = dinoedge_board::RunSettings {
        model: given(args.model.is_some()),
        head: given(args.head.is_some()),
        task_given: args.task.is_some(),
        threads: args.threads,
        workers: args.workers,
        runtime: given(args.runtime.is_some()),
        resolution: given(args.size.is_some()),
        camera: args.source.clone(),
        sinks: args.sinks.clone(),
        listen: args.listen.clone(),
        every: given(args.every.is_some()),
        gpio: args.gpio.clone(),
    };
    p.apply(&mut s);
    let err = |what: &str, e: String| anyhow::anyhow!("board {spec}: {what}{e}");
    if args.model.is_none() {
        args.model = s
            .model
            .map(|m| crate::cmd::fetch::model_ref(&m))
            .transpose()
            .map_err(|e| err("", e))?;
    }
    if args.head.is_none() {
        args.head = s
            .head
            .map(|h| crate::cmd::fetch::model_ref(&h))
            .transpose()
            .map_err(|e| err("", e))?;
    }
    if args.runtime.is_none() {
        args.runtime = s
            .runtime
            .map(|r| r.parse::<Runtime>().map_err(|e| e.to_string()))
            .transpose()
            .map_err(|e| err("run.runtime: ", e))?;
    }
    if args.size.is_none() {
        args.size = s
            .resolution
            .map(|r| r.parse::<Resolution>().map_err(|e| e.to_string()))
            .transpose()
            .map_err(|e| err("run.resolution: ", e))?;
    }
    if args.every.is_none() {
        args.every = s
            .every
            .map(|e| parse_every(&e))
            .transpose()
            .map_err(|e| err("", e))?;
    }
    args.threads = s.threads;
    args.workers = s.workers;
    args.source = s.camera;
    args.sinks = s.sinks;
    args.listen = s.listen;
    args.gpio = s.gpio;
    Ok(args)
}

/// Run the pipeline until the source ends, --frames are done or Ctrl-C.
pub fn run(args: Args) -> Result<()> {
    let args = apply_board(args)?;
    if args.print_settings {
        print_settings(&args);
        return Ok(());
    }
    let Some(source) = args.source.clone() else {
        bail!(
            "no source: --source URI (v4l2:///dev/video0, csi://0, clip.mp4, frames/, run.mcap, …) or --board NAME"
        );
    };
    anyhow::ensure!(
        !args.sinks.is_empty(),
        "no sink: --sink http (the live view), files:DIR, jsonl, mcap:FILE.mcap — or --board NAME"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.alpha),
        "--alpha must be within 0..1"
    );
    // every sink spec checked before the model loads: a typo costs nothing
    let sink_specs = args
        .sinks
        .iter()
        .map(|s| SinkSpec::parse(s).map(|spec| (s.as_str(), spec)))
        .collect::<Result<Vec<_>, _>>()?;
    SinkSpec::check_distinct(&sink_specs)?;
    let sink_specs: Vec<SinkSpec> = sink_specs.into_iter().map(|(_, spec)| spec).collect();
    let model = ModelArgs {
        model: model_path(args.model.clone())?,
        size: args.size,
        threads: args.threads,
        cache_dir: args.cache_dir.clone(),
        no_cache: args.no_cache,
        runtime: args.runtime.unwrap_or_default(),
    };
    // the source is checked before the model compiles: a typo fails in a second
    let spec = SourceSpec::parse(&source).with_context(|| format!("source `{source}`"))?;
    let head = match &args.head {
        Some(h) => Some(
            LinearHead::load(h, args.max_depth)
                .with_context(|| format!("loading the head {}", h.display()))?,
        ),
        None => None,
    };
    let model_info = model.read()?;
    let model_depth = model_info.depth();
    let task = choose_task(
        head.as_ref(),
        args.task,
        args.head.as_deref(),
        model_depth.is_some(),
    )?;
    let options = match &head {
        Some(h) => head_options(h, &model_info, &model)?,
        None => model.options(),
    };
    let analysis = match head {
        // a seg head on a depth model: the classes and the model's own depth from one pass
        // (`--task seg` keeps the classes alone)
        Some(LinearHead::Seg(s)) => match (model_depth, args.task) {
            (Some(kind), None) => Analysis::SegWithModelDepth(s, kind),
            _ => Analysis::Seg(s),
        },
        Some(LinearHead::Depth(d)) => Analysis::Depth(d),
        None if task == Task::Features => Analysis::Features,
        None => match (task, model_depth) {
            (Task::Depth, Some(kind)) => Analysis::ModelDepth(kind),
            _ => Analysis::Pca,
        },
    };
    // a rule in metres cannot read a depth that has no unit: said before anything opens
    let relative = matches!(
        analysis,
        Analysis::ModelDepth(DepthConfig::Relative)
            | Analysis::SegWithModelDepth(_, DepthConfig::Relative)
    );
    if relative && !args.gpio.is_empty() {
        let rules = dinoedge_board::RuleSet::parse(&args.gpio)?;
        let metres = rules.depth_rules();
        anyhow::ensure!(
            metres.is_empty(),
            "--gpio {}: a rule in metres needs depth in metres, and {} ({}) gives relative depth, with no unit: use a metric model (a Depth Anything V2 Metric export, whose config.json says depth_estimation_type: metric) or a DINOv2 depth head (--head)",
            metres.join(", "),
            model.model.display(),
            model_info.variant()
        );
    }

    check_points(&args, &analysis, &sink_specs, &spec, &model, &model_info)?;

    let stats = SharedStats::default();
    let title = format!(
        "{} on {} ({})",
        analysis.name(),
        source,
        model
            .model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut wheres = Vec::new();
    let cx = SinkContext {
        alpha: args.alpha,
        regions: &args.regions,
        listen: args.listen.as_deref(),
        title: &title,
        views: analysis.views(),
        intrinsics: args.intrinsics,
        stats: &stats,
    };
    for spec in &sink_specs {
        let (s, w) = spec.open(&cx)?;
        if let (SinkSpec::Http { .. }, Some(w)) = (spec, &w) {
            let _ = writeln!(
                std::io::stderr(),
                "live view: {}",
                w.trim_start_matches("live view at ")
            );
        }
        sinks.push(s);
        wheres.push(w);
    }
    if !args.gpio.is_empty() {
        // the rules first (a typo is reported as such), then the pins (off a Pi: an error)
        let rules = dinoedge_board::RuleSet::parse(&args.gpio)?;
        let pins = dinoedge_board::open_pins(&rules)?;
        let s = GpioSink::new(
            rules,
            pins,
            args.regions.clone(),
            args.snapshot_dir.clone(),
            args.alpha,
        )?;
        sinks.push(Box::new(s));
        wheres.push(Some(format!("GPIO ({} rules)", args.gpio.len())));
    }
    let source = spec
        .open()
        .with_context(|| format!("opening the source `{source}`"))?;
    let info = source.info();
    let bb = model.load_info(model_info, &options)?;
    let pre = bb.preprocessor(ResizeMode::Stretch)?;
    tracing::info!(
        "{} from {} ({}), backbone at {} on {}",
        analysis.name(),
        info.description,
        info.kind,
        bb.resolution(),
        bb.runtime()
    );

    let stop = stop_on_ctrl_c()?;
    // live sources and paced files: newest-wins, unless every frame is wanted
    let paced = spec.pace != Pace::Fast;
    let options = RunOptions {
        max_frames: args.frames,
        stop,
        status_every: Duration::from_millis(500),
        drop_frames: Some(!args.lossless && (info.live || paced)),
        cadence: args.every.unwrap_or_default(),
        stats,
        workers: args.workers.unwrap_or(1),
        // the board's temperature and throttling in the stats, warnings when it throttles
        ..RunOptions::default()
    };
    let mut status = Status::new(args.status);
    let report = dinoedge_stream::run(source, (bb, pre), analysis, sinks, options, |s| {
        status.show(s)
    });
    status.end();
    let report = report.context("the backbone or head failed; every sink was closed")?;
    summarise(&report, args.status, &wheres)
}
