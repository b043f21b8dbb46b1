//! The threads of a run: source → backbone + head → one thread per sink.
//!
//! Two ways to go:
//! - **every frame** (the default): each frame the backbone takes goes through the head and
//!   on to the sinks with its own result;
//! - **low rate** ([`Cadence::EveryNth`] / [`Cadence::WhenIdle`]): every frame goes to the
//!   sinks at once, carrying the newest result there is; the backbone only sees every k-th
//!   frame (or the newest one whenever it is free). A weak board shows the camera live with a
//!   result that is a few frames old instead of a stuttering picture.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinoedge_camera::{Frame, FrameSource, LatestReceiver, LatestSender, latest};
use dinoedge_heads::{DepthHead, SegHead};
use dinoedge_model::{Backbone, DepthConfig, Features, Preprocessor};
use dinoedge_render::{PcaView, RenderError, pca_images};

use crate::render::View;
use crate::result::{Analysed, FrameResult, Output};
use crate::sink::Sink;
use crate::stats::{BoardSnapshot, SharedStats, SinkState, StatsSnapshot};
use crate::{Result, StreamError};

/// What runs on each frame after the backbone.
pub enum Analysis {
    /// Keep the features (patch grid, CLS, …).
    Features,
    /// The DINOv2 PCA picture of the patch features (first three components as RGB).
    Pca,
    /// A segmentation head.
    Seg(SegHead),
    /// A depth head.
    Depth(DepthHead),
    /// The model's own depth head (Depth Anything V2): metres or relative, as its config says.
    ModelDepth(DepthConfig),
    /// A segmentation head on the encoder tokens of a depth model, and the model's own depth
    /// from the same pass: classes and depth per frame at the cost of one backbone run.
    SegWithModelDepth(SegHead, DepthConfig),
}

impl Analysis {
    /// `features`, `pca`, `seg` or `depth`.
    pub fn name(&self) -> &'static str {
        match self {
            Analysis::Features => "features",
            Analysis::Pca => "pca",
            Analysis::Seg(_) => "seg",
            Analysis::Depth(_) | Analysis::ModelDepth(_) => "depth",
            Analysis::SegWithModelDepth(..) => "seg+depth",
        }
    }

    /// The pictures a viewer can ask for: the camera and the result, and the depth beside
    /// the classes when there are both.
    pub fn views(&self) -> &'static [View] {
        match self {
            Analysis::SegWithModelDepth(..) => &View::ALL,
            _ => &[View::Camera, View::Result],
        }
    }
}

/// Which frames the backbone sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cadence {
    /// Every frame it can take (every frame of a file; the newest of a live source).
    #[default]
    EveryFrame,
    /// Every k-th frame; every frame still reaches the sinks with the newest result.
    EveryNth(u64),
    /// The newest frame whenever the backbone is free; every frame reaches the sinks.
    WhenIdle,
}

/// How a run behaves.
#[derive(Clone)]
pub struct RunOptions {
    /// Stop after this many frames reached the sinks.
    pub max_frames: Option<u64>,
    /// Set to stop (Ctrl-C): the source stops, what is in flight is finished, every sink is
    /// flushed.
    pub stop: Arc<AtomicBool>,
    /// How often `on_status` is called.
    pub status_every: Duration,
    /// Whether hand-overs are newest-wins (live: a slow stage drops old frames) or blocking
    /// (every frame is processed). `None`: newest-wins for live sources.
    pub drop_frames: Option<bool>,
    /// Which frames the backbone sees.
    pub cadence: Cadence,
    /// Where the numbers are kept (share it with a sink that shows them).
    pub stats: SharedStats,
    /// Where the board's sensors are read at each status (`/`; a sample tree in tests; `None`:
    /// not read). Temperature and throttling go into the stats; new warnings are logged.
    pub board_root: Option<std::path::PathBuf>,
    /// SoC temperature that warns, °C.
    pub hot_c: f32,
    /// Backbones working on frames side by side, the backbone's threads split between them
    /// (results still reach the head in frame order). More frames per second where one
    /// frame cannot use every core; each frame's latency grows. 0 or 1: one.
    pub workers: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_frames: None,
            stop: Arc::new(AtomicBool::new(false)),
            status_every: Duration::from_secs(1),
            drop_frames: None,
            cadence: Cadence::EveryFrame,
            board_root: Some("/".into()),
            hot_c: 80.0,
            stats: SharedStats::default(),
            workers: 1,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The final numbers.
    pub stats: StatsSnapshot,
    /// Errors of the source (it went on or ended after them).
    pub source_errors: Vec<String>,
    /// Sinks that failed, with why (the others kept going).
    pub sink_errors: Vec<String>,
    /// Whether the run ended because `stop` was set (Ctrl-C) rather than the source ending
    /// or `max_frames`.
    pub stopped: bool,
}

/// A queue between two stages: newest-wins for live sources, blocking and lossless for files.
enum Tx<T> {
    Live(LatestSender<T>),
    Lossless(SyncSender<T>),
}

enum Rx<T> {
    Live(LatestReceiver<T>),
    Lossless(Receiver<T>),
}

fn queue<T>(live: bool) -> (Tx<T>, Rx<T>) {
    if live {
        let (t, r) = latest();
        (Tx::Live(t), Rx::Live(r))
    } else {
        let (t, r) = sync_channel(2);
        (Tx::Lossless(t), Rx::Lossless(r))
    }
}

impl<T> Tx<T> {
    /// `false` once the receiver is gone.
    fn send(&self, item: T) -> bool {
        match self {
            Tx::Live(t) => t.send(item).is_ok(),
            Tx::Lossless(t) => t.send(item).is_ok(),
        }
    }
}

impl<T> Rx<T> {
    /// The next item and how many were dropped before it; `None` when the sender is gone.
    fn recv(&self) -> Option<(T, u64)> {
        match self {
            Rx::Live(r) => r.recv().map(|r| (r.item, r.dropped)),
            Rx::Lossless(r) => r.recv().ok().map(|i| (i, 0)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The backbone on one frame: its features and the time it took (preprocessing included).
fn backbone_stage(
    backbone: &mut Backbone,
    pre: &mut Preprocessor,
    frame: &Frame,
) -> Result<(Features, Duration)> {
    let img = frame.to_image();
    let t0 = Instant::now();
    let f = backbone.run_image(pre, &img)?;
    Ok((f, t0.elapsed()))
}

/// The model's own depth map at the frame's `h` x `w` (bilinear, as the depth heads
/// upsample), labelled metric or relative as `kind` says.
fn model_depth(f: &Features, kind: &DepthConfig, h: usize, w: usize) -> Result<Analysed> {
    let depth = f
        .depth
        .as_ref()
        .ok_or_else(|| dinoedge_model::ModelError::Input("the model gave no depth map".into()))?;
    let (dh, dw) = depth.dim();
    let planes = depth
        .view()
        .into_shape_with_order((1, dh, dw))
        .map_err(|e| dinoedge_model::ModelError::Input(e.to_string()))?;
    let resized = dinoedge_heads::resize::resize_bilinear(planes, h, w);
    let depth = resized.index_axis_move(ndarray::Axis(0), 0);
    Ok(match kind {
        DepthConfig::Metric { .. } => Analysed::Depth(depth),
        DepthConfig::Relative => Analysed::RelativeDepth(depth),
    })
}

/// The head on one frame's features.
fn head_stage(
    analysis: &Analysis,
    frame: &Frame,
    f: Features,
    backbone: Duration,
) -> Result<FrameResult> {
    let (h, w) = (frame.height as usize, frame.width as usize);
    let t0 = Instant::now();
    let mut beside = None;
    let analysed = match analysis {
        Analysis::Features => Analysed::Features(f),
        Analysis::Pca => {
            let picture = pca_images(&[f.patches().view()], PcaView::default())?
                .into_iter()
                .next()
                .ok_or_else(|| RenderError::Empty("no PCA picture".into()))?;
            Analysed::Pca(picture)
        }
        Analysis::Seg(s) => Analysed::Seg(s.predict_features(&f, h, w)?, s.palette.clone()),
        Analysis::Depth(d) => Analysed::Depth(d.predict_features(&f, h, w)?),
        Analysis::ModelDepth(kind) => model_depth(&f, kind, h, w)?,
        Analysis::SegWithModelDepth(s, kind) => {
            beside = Some(model_depth(&f, kind, h, w)?);
            Analysed::Seg(s.predict_features(&f, h, w)?, s.palette.clone())
        }
    };
    Ok(FrameResult {
        seq: frame.seq,
        analysed,
        beside,
        backbone,
        head: t0.elapsed(),
    })
}

/// What every thread of a run shares.
#[derive(Clone)]
struct Shared {
    stats: SharedStats,
    /// Set from outside (Ctrl-C).
    stop: Arc<AtomicBool>,
    /// Set when the run itself decides to stop (max frames, a backbone error), so that a
    /// stop asked from outside can be told apart.
    internal_stop: Arc<AtomicBool>,
    /// Set when the head thread has ended.
    done: Arc<AtomicBool>,
    source_errors: Arc<Mutex<Vec<String>>>,
    sink_errors: Arc<Mutex<Vec<String>>>,
    emitted: Arc<AtomicU64>,
    max_frames: Option<u64>,
}

impl Shared {
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.internal_stop.load(Ordering::Relaxed)
    }

    /// Hand one output to every sink's queue, and stop the run at `max_frames`.
    fn emit(&self, txs: &[Tx<Arc<Output>>], out: Output) {
        self.stats.frame_out();
        let out = Arc::new(out);
        for tx in txs {
            tx.send(out.clone());
        }
        let n = self.emitted.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_frames.is_some_and(|m| n >= m) {
            self.internal_stop.store(true, Ordering::Relaxed);
        }
    }

    /// A stage's result; an error stops the run.
    fn stage_ended(&self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            self.internal_stop.store(true, Ordering::Relaxed);
        }
        result
    }

    fn sink_failed(&self, i: usize, e: &crate::StreamError) {
        tracing::error!("{e}");
        lock(&self.sink_errors).push(e.to_string());
        self.stats.sink_state(i, SinkState::Failed(e.to_string()));
    }
}

/// `f()`, with a panic in it turned into [`StreamError::Internal`] for `stage`: a stage that
/// panics ends the run with an error (every sink closed) instead of leaving it waiting.
fn guarded<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(StreamError::Internal {
            stage: stage.to_owned(),
            reason,
        })
    })
}

/// One sink's thread: write each output, then finish; after an error (or a panic in the
/// sink) the sink is closed and its queue drained.
fn drive_sink(i: usize, mut sink: Box<dyn Sink>, rx: Rx<Arc<Output>>, sh: &Shared) {
    // named once, not per frame
    let stage = format!("sink {}", sink.name());
    let mut failed = false;
    while let Some((out, dropped)) = rx.recv() {
        if failed {
            continue;
        }
        let t0 = Instant::now();
        if let Err(e) = guarded(&stage, || sink.write(&out)) {
            sh.sink_failed(i, &e);
            failed = true;
            continue;
        }
        sh.stats
            .sink_wrote(i, dropped, t0.elapsed(), out.frame.captured.elapsed());
    }
    if !failed {
        match guarded(&stage, || sink.finish()) {
            Ok(()) => sh.stats.sink_state(i, SinkState::Finished),
            Err(e) => sh.sink_failed(i, &e),
        }
    }
}

/// How frames flow between the source, the backbone and the sinks in one run.
struct Flow {
    cadence: Cadence,
    /// Newest-wins queues (live sources) rather than lossless ones.
    live: bool,
    /// The newest result, which the low-rate modes draw over every frame.
    newest: Mutex<Option<Arc<FrameResult>>>,
}

impl Flow {
    fn low_rate(&self) -> bool {
        self.cadence != Cadence::EveryFrame
    }

    fn to_backbone(&self, f: &Frame) -> bool {
        match self.cadence {
            Cadence::EveryFrame | Cadence::WhenIdle => true,
            Cadence::EveryNth(k) => f.seq.is_multiple_of(k.max(1)),
        }
    }
}

/// What the source's reader hands over: a frame, the end, or an error's message.
type SourceRead = std::result::Result<Option<Frame>, String>;

/// The source read on a thread of its own that the run does not wait for: `next_frame` may
/// block as long as the source likes (a camera that stopped sending, `?fps=0.01`) and a stop
/// must not wait for it. Frames are handed over one at a time; the reader ends at the
/// source's end, at a panic in it (sent as an error), or at its next frame once the run has
/// stopped listening. The source is dropped (closed) on that thread.
fn read_detached(mut source: Box<dyn FrameSource>) -> Result<Receiver<SourceRead>> {
    // a rendezvous: the next frame is read once this one is taken, as a direct read would
    let (tx, rx) = sync_channel::<SourceRead>(0);
    std::thread::Builder::new()
        .name("dinoedge-source".into())
        .spawn(move || {
            loop {
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    source.next_frame().map_err(|e| e.to_string())
                }));
                let (read, last) = match read {
                    Ok(Ok(None)) => (Ok(None), true),
                    Ok(read) => (read, false),
                    Err(_) => (
                        Err(
                            "the source stopped on an internal error (a panic; please report it)"
                                .to_owned(),
                        ),
                        true,
                    ),
                };
                if tx.send(read).is_err() || last {
                    break;
                }
            }
        })
        .map_err(|e| StreamError::Internal {
            stage: "source".into(),
            reason: format!("cannot start its thread: {e}"),
        })?;
    Ok(rx)
}

/// The source's thread: frames to the backbone (every one, or the chosen ones), and in the
/// low-rate modes every frame to the sinks with the newest result. 50 errors in a row end it;
/// a stop ends it within 50 ms, whatever the source is doing.
fn drive_source(
    frames: Receiver<SourceRead>,
    flow: &Flow,
    frame_tx: Tx<Arc<Frame>>,
    // low rate, lossless (files): each chosen frame's result is waited for, so that frame n
    // carries the result of the last chosen frame up to n, exactly
    result_done: std::sync::mpsc::Receiver<()>,
    sink_txs: Vec<Tx<Arc<Output>>>,
    sh: &Shared,
) {
    let mut consecutive = 0;
    let mut last_result_seq = None;
    while !sh.should_stop() {
        let read = match frames.recv_timeout(Duration::from_millis(50)) {
            Ok(read) => read,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match read {
            Ok(Some(f)) => {
                consecutive = 0;
                sh.stats.frame_in(f.dropped_before);
                let f = Arc::new(f);
                let to_backbone = flow.to_backbone(&f);
                if to_backbone && !frame_tx.send(f.clone()) {
                    break;
                }
                if to_backbone && flow.low_rate() && !flow.live && result_done.recv().is_err() {
                    break;
                }
                if flow.low_rate() {
                    let result = lock(&flow.newest).clone();
                    let seq = result.as_ref().map(|r| r.seq);
                    let fresh = seq.is_some() && seq != last_result_seq;
                    last_result_seq = seq;
                    let out = Output {
                        dropped_before: f.dropped_before,
                        frame: f,
                        result,
                        fresh,
                    };
                    sh.emit(&sink_txs, out);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("source: {e}");
                sh.stats.source_error();
                lock(&sh.source_errors).push(e.to_string());
                consecutive += 1;
                if consecutive >= 50 {
                    lock(&sh.source_errors).push("50 errors in a row: giving up".into());
                    break;
                }
            }
        }
    }
    // in the low-rate modes the sinks' queues close when this thread ends
}

/// Features of one frame on their way to the head: the frame, its features, the backbone's
/// time, frames dropped before it.
type Analysing = (Arc<Frame>, Features, Duration, u64);

/// An [`Analysing`] with the order in which its frame was taken from the source's queue.
type Ticketed = (u64, Analysing);

/// The source's queue as the backbone workers share it: whoever takes a frame takes the next
/// ticket with it.
struct FrameDesk {
    rx: Rx<Arc<Frame>>,
    next_ticket: u64,
}

/// `n` backbones on the same compiled graph with `backbone`'s threads split between them
/// (the first ones get one more where they do not divide evenly).
fn team(
    (backbone, pre): (Backbone, Preprocessor),
    n: usize,
) -> Result<Vec<(Backbone, Preprocessor)>> {
    if n <= 1 {
        return Ok(vec![(backbone, pre)]);
    }
    let threads = backbone.threads();
    if n > threads {
        tracing::warn!(
            "{n} workers on {threads} backbone threads: each runs on one thread, and they share cores"
        );
    }
    (0..n)
        .map(|i| {
            let own = (threads / n + usize::from(i < threads % n)).max(1);
            Ok((backbone.worker(own)?, pre.fresh()?))
        })
        .collect()
}

/// One backbone worker's thread: frames from the shared desk, features to the head with their
/// tickets.
fn drive_backbone(
    (backbone, pre): (&mut Backbone, &mut Preprocessor),
    flow: &Flow,
    desk: &Mutex<FrameDesk>,
    feat_tx: Tx<Ticketed>,
    sh: &Shared,
) -> Result<()> {
    loop {
        let (ticket, (frame, dropped)) = {
            let mut d = lock(desk);
            let Some(item) = d.rx.recv() else {
                break;
            };
            d.next_ticket += 1;
            (d.next_ticket - 1, item)
        };
        if !flow.low_rate() && sh.should_stop() {
            break;
        }
        sh.stats.dropped(dropped);
        let (f, took) = backbone_stage(backbone, pre, &frame)?;
        if !feat_tx.send((ticket, (frame, f, took, dropped))) {
            break;
        }
    }
    Ok(())
}

/// The head's side of the backbones' queue, in ticket order: with several workers a frame
/// that finishes early waits for those taken before it. A ticket that never comes (its
/// worker stopped) is skipped once every worker has ended.
struct InOrder {
    rx: Rx<Ticketed>,
    /// Wait for missing tickets (several workers, lossless queue); one worker's queue is in
    /// order already, and a newest-wins one skips tickets on purpose.
    reorder: bool,
    pending: std::collections::BTreeMap<u64, Analysing>,
    next: u64,
}

impl InOrder {
    fn recv(&mut self) -> Option<(Analysing, u64)> {
        if !self.reorder {
            return self.rx.recv().map(|((_, a), lost)| (a, lost));
        }
        loop {
            if let Some(a) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some((a, 0));
            }
            match self.rx.recv() {
                Some(((ticket, a), _)) => {
                    self.pending.insert(ticket, a);
                }
                // every worker has ended: what is left, in order
                None => self.next = *self.pending.keys().next()?,
            }
        }
    }
}

/// The head's thread: each result to the sinks (every-frame mode) or to `flow.newest`.
fn drive_head(
    analysis: &Analysis,
    flow: &Flow,
    mut feat_rx: InOrder,
    result_done: std::sync::mpsc::Sender<()>,
    sink_txs: &[Tx<Arc<Output>>],
    sh: &Shared,
) -> Result<()> {
    while let Some(((frame, f, took, before), lost)) = feat_rx.recv() {
        sh.stats.dropped(lost);
        let a = Arc::new(head_stage(analysis, &frame, f, took)?);
        sh.stats.analysed(a.backbone, a.head);
        if flow.low_rate() {
            *lock(&flow.newest) = Some(a);
            let _ = result_done.send(());
        } else {
            let out = Output {
                dropped_before: frame.dropped_before + before + lost,
                frame,
                result: Some(a),
                fresh: true,
            };
            sh.emit(sink_txs, out);
        }
    }
    Ok(())
}

/// The board's temperature and throttling into the stats, each warning logged once while it
/// lasts (again if it comes back).
struct BoardWatch<'a> {
    root: Option<&'a std::path::Path>,
    hot_c: f32,
    warned: Vec<String>,
}

impl BoardWatch<'_> {
    fn read(&mut self, stats: &SharedStats) {
        let Some(root) = self.root else {
            return;
        };
        let b = BoardSnapshot::from_health(&dinoedge_board::read_health(root), self.hot_c);
        for w in b.warnings.iter().filter(|w| !self.warned.contains(w)) {
            tracing::warn!("board: {w}");
        }
        self.warned = b.warnings.clone();
        stats.set_board(b);
    }
}

/// Run `source` through `backbone` and `analysis` into `sinks` until the source ends,
/// `max_frames` are done or `stop` is set. `on_status` gets the numbers every
/// `status_every`. Source and sink errors are collected in the report, not returned: a
/// failing sink is closed and the others go on. A backbone or head error ends the run
/// (after every sink is flushed) and is returned. With `options.workers` above 1 the
/// backbone is split into that many workers first (see [`Backbone::worker`]).
pub fn run(
    source: Box<dyn FrameSource>,
    backbone: (Backbone, Preprocessor),
    analysis: Analysis,
    sinks: Vec<Box<dyn Sink>>,
    options: RunOptions,
    mut on_status: impl FnMut(&StatsSnapshot),
) -> Result<RunReport> {
    let flow = Flow {
        cadence: options.cadence,
        live: options.drop_frames.unwrap_or(source.info().live),
        newest: Mutex::new(None),
    };
    let sh = Shared {
        stats: options.stats.clone(),
        stop: options.stop.clone(),
        internal_stop: Arc::default(),
        done: Arc::default(),
        source_errors: Arc::default(),
        sink_errors: Arc::default(),
        emitted: Arc::default(),
        max_frames: options.max_frames,
    };
    let mut workers = team(backbone, options.workers)?;
    let frames = read_detached(source)?;
    sh.stats.restart(sinks.iter().map(|s| s.name()).collect());

    // the source's queue, which the backbone workers share
    let (frame_tx, frame_rx) = queue::<Arc<Frame>>(flow.live);
    let desk = Mutex::new(FrameDesk {
        rx: frame_rx,
        next_ticket: 0,
    });
    let result = std::thread::scope(|sc| -> Result<()> {
        let (flow, sh) = (&flow, &sh);
        let mut sink_txs = Vec::new();
        for (i, sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = queue::<Arc<Output>>(flow.live);
            sink_txs.push(tx);
            sc.spawn(move || drive_sink(i, sink, rx, sh));
        }
        // whoever hands frames to the sinks owns their queues: when it ends, they close
        let (source_txs, head_txs) = if flow.low_rate() {
            (sink_txs, Vec::new())
        } else {
            (Vec::new(), sink_txs)
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let source_thread = sc.spawn(move || {
            let ran = guarded("source", || {
                drive_source(frames, flow, frame_tx, done_rx, source_txs, sh);
                Ok(())
            });
            if let Err(e) = ran {
                tracing::error!("{e}");
                lock(&sh.source_errors).push(e.to_string());
            }
        });
        // the backbone on its own thread(s), the head on another: the next frame's backbone
        // runs while the head finishes this one
        let reorder = workers.len() > 1;
        // one sender per worker: several share a lossless queue, one has the queue of old
        let (feat_txs, feat_rx) = if reorder {
            let (t, r) = sync_channel(2 * workers.len());
            let txs: Vec<_> = workers.iter().map(|_| Tx::Lossless(t.clone())).collect();
            (txs, Rx::Lossless(r))
        } else {
            let (t, r) = queue::<Ticketed>(flow.live);
            (vec![t], r)
        };
        let feat_rx = InOrder {
            rx: feat_rx,
            reorder,
            pending: Default::default(),
            next: 0,
        };
        let desk = &desk;
        let mut inference = Vec::new();
        for ((backbone, pre), feat_tx) in workers.iter_mut().zip(feat_txs) {
            inference.push(sc.spawn(move || {
                sh.stage_ended(guarded("backbone", || {
                    drive_backbone((backbone, pre), flow, desk, feat_tx, sh)
                }))
            }));
        }
        let head = sc.spawn(move || {
            let result = guarded("head", || {
                drive_head(&analysis, flow, feat_rx, done_tx, &head_txs, sh)
            });
            // dropping the sinks' queues (every-frame mode) lets every sink finish
            drop(head_txs);
            sh.done.store(true, Ordering::Relaxed);
            sh.stage_ended(result)
        });

        let mut board = BoardWatch {
            root: options.board_root.as_deref(),
            hot_c: options.hot_c,
            warned: Vec::new(),
        };
        board.read(&sh.stats);
        let mut last = Instant::now();
        while !(sh.done.load(Ordering::Relaxed) && source_thread.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() >= options.status_every {
                last = Instant::now();
                board.read(&sh.stats);
                on_status(&sh.stats.snapshot());
            }
        }
        let backbone_results: Vec<Result<()>> = inference
            .into_iter()
            .map(|t| t.join().expect("backbone thread panicked"))
            .collect();
        let head_result = head.join().expect("head thread panicked");
        source_thread.join().expect("source thread panicked");
        backbone_results
            .into_iter()
            .collect::<Result<Vec<()>>>()
            .and(head_result)
    });
    let snap = sh.stats.snapshot();
    on_status(&snap);
    result?;
    Ok(RunReport {
        stats: snap,
        source_errors: lock(&sh.source_errors).clone(),
        sink_errors: lock(&sh.sink_errors).clone(),
        stopped: sh.stop.load(Ordering::Relaxed),
    })
}
