//! The threads of a run: source → backbone + head → one thread per sink.
//!
//! Two ways to go:
//! - **every frame** (the default): each frame the backbone takes goes through the head and
//!   on to the sinks with its own result;
//! - **low rate** ([`Cadence::EveryNth`] / [`Cadence::WhenIdle`]): every frame goes to the
//!   sinks at once, carrying the newest result there is; the backbone only sees every k-th
//!   frame (or the newest one whenever it is free). A weak board shows the camera live with a
//!   result that is a few frames old instead of a stuttering picture.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinoedge_camera::{Frame, FrameSource, LatestReceiver, LatestSender, latest};
use dinoedge_heads::{DepthHead, SegHead};
use dinoedge_model::{Backbone, Features, Preprocessor};
use dinoedge_render::{PcaView, RenderError, pca_images};

use crate::Result;
use crate::result::{Analysed, FrameResult, Output};
use crate::sink::Sink;
use crate::stats::{BoardSnapshot, SharedStats, SinkState, StatsSnapshot};

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
}

impl Analysis {
    /// `features`, `pca`, `seg` or `depth`.
    pub fn name(&self) -> &'static str {
        match self {
            Analysis::Features => "features",
            Analysis::Pca => "pca",
            Analysis::Seg(_) => "seg",
            Analysis::Depth(_) => "depth",
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

/// The head on one frame's features.
fn head_stage(
    analysis: &Analysis,
    frame: &Frame,
    f: Features,
    backbone: Duration,
) -> Result<FrameResult> {
    let (h, w) = (frame.height as usize, frame.width as usize);
    let t0 = Instant::now();
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
    };
    Ok(FrameResult {
        seq: frame.seq,
        analysed,
        backbone,
        head: t0.elapsed(),
    })
}

/// Run `source` through `backbone` and `analysis` into `sinks` until the source ends,
/// `max_frames` are done or `stop` is set. `on_status` gets the numbers every
/// `status_every`. Source and sink errors are collected in the report, not returned: a
/// failing sink is closed and the others go on. A backbone or head error ends the run
/// (after every sink is flushed) and is returned.
pub fn run(
    mut source: Box<dyn FrameSource>,
    (mut backbone, mut pre): (Backbone, Preprocessor),
    analysis: Analysis,
    sinks: Vec<Box<dyn Sink>>,
    options: RunOptions,
    mut on_status: impl FnMut(&StatsSnapshot),
) -> Result<RunReport> {
    let live = options.drop_frames.unwrap_or(source.info().live);
    let stats = options.stats.clone();
    stats.restart(sinks.iter().map(|s| s.name()).collect());
    let source_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    // set when the run itself decides to stop (max frames, a backbone error), so that a
    // stop asked from outside can be told apart
    let internal_stop = Arc::new(AtomicBool::new(false));
    let stop = options.stop.clone();
    let should_stop = {
        let (stop, internal) = (stop.clone(), internal_stop.clone());
        move || stop.load(Ordering::Relaxed) || internal.load(Ordering::Relaxed)
    };
    let cadence = options.cadence;
    let max = options.max_frames;

    let result = std::thread::scope(|sc| -> Result<()> {
        // sinks, each on its own thread with its own queue
        let mut sink_txs = Vec::new();
        for (i, mut sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = queue::<Arc<Output>>(live);
            sink_txs.push(tx);
            let (stats, errors) = (stats.clone(), sink_errors.clone());
            sc.spawn(move || {
                let mut failed = false;
                while let Some((out, dropped)) = rx.recv() {
                    if failed {
                        continue;
                    }
                    let t0 = Instant::now();
                    if let Err(e) = sink.write(&out) {
                        tracing::error!("{e}");
                        lock(&errors).push(e.to_string());
                        stats.sink_state(i, SinkState::Failed(e.to_string()));
                        failed = true;
                        continue;
                    }
                    stats.sink_wrote(i, dropped, t0.elapsed(), out.frame.captured.elapsed());
                }
                if !failed {
                    match sink.finish() {
                        Ok(()) => stats.sink_state(i, SinkState::Finished),
                        Err(e) => {
                            tracing::error!("{e}");
                            lock(&errors).push(e.to_string());
                            stats.sink_state(i, SinkState::Failed(e.to_string()));
                        }
                    }
                }
            });
        }
        let emitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let emit = {
            let (stats, emitted, internal) =
                (stats.clone(), emitted.clone(), internal_stop.clone());
            move |txs: &[Tx<Arc<Output>>], out: Output| {
                stats.frame_out();
                let out = Arc::new(out);
                for tx in txs {
                    tx.send(out.clone());
                }
                let n = emitted.fetch_add(1, Ordering::Relaxed) + 1;
                if max.is_some_and(|m| n >= m) {
                    internal.store(true, Ordering::Relaxed);
                }
            }
        };

        // frames for the backbone: every one, or in the low-rate modes the chosen ones;
        // newest-wins for live runs, lossless otherwise
        let low_rate = cadence != Cadence::EveryFrame;
        let (frame_tx, frame_rx) = queue::<Arc<Frame>>(live);
        let newest: Arc<Mutex<Option<Arc<FrameResult>>>> = Arc::default();
        // low rate, lossless (files): the source waits for each chosen frame's result, so
        // that frame n carries the result of the last chosen frame up to n, exactly
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // whoever hands frames to the sinks owns their queues: when it ends, they close
        let (src_txs, inf_txs) = if low_rate {
            (sink_txs, Vec::new())
        } else {
            (Vec::new(), sink_txs)
        };

        // the source thread (in the low-rate modes it also hands every frame to the sinks)
        let source_thread = {
            let (stats, errors) = (stats.clone(), source_errors.clone());
            let (newest, emit, should_stop) = (newest.clone(), emit.clone(), should_stop.clone());
            let sink_txs = src_txs;
            sc.spawn(move || {
                let mut consecutive = 0;
                let mut last_result_seq = None;
                while !should_stop() {
                    match source.next_frame() {
                        Ok(Some(f)) => {
                            consecutive = 0;
                            stats.frame_in(f.dropped_before);
                            let f = Arc::new(f);
                            let to_backbone = match cadence {
                                Cadence::EveryFrame | Cadence::WhenIdle => true,
                                Cadence::EveryNth(k) => f.seq.is_multiple_of(k.max(1)),
                            };
                            if to_backbone && !frame_tx.send(f.clone()) {
                                break;
                            }
                            if to_backbone && low_rate && !live && done_rx.recv().is_err() {
                                break;
                            }
                            if low_rate {
                                let result = lock(&newest).clone();
                                let seq = result.as_ref().map(|r| r.seq);
                                let fresh = seq.is_some() && seq != last_result_seq;
                                last_result_seq = seq;
                                emit(
                                    &sink_txs,
                                    Output {
                                        dropped_before: f.dropped_before,
                                        frame: f,
                                        result,
                                        fresh,
                                    },
                                );
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("source: {e}");
                            stats.source_error();
                            lock(&errors).push(e.to_string());
                            consecutive += 1;
                            if consecutive >= 50 {
                                lock(&errors).push("50 errors in a row: giving up".into());
                                break;
                            }
                        }
                    }
                }
                // in the low-rate modes the sinks' queues close when this thread ends
            })
        };

        // the backbone on its own thread, the head on another: the next frame's backbone
        // runs while the head finishes this one
        let (feat_tx, feat_rx) = queue::<(Arc<Frame>, Features, Duration, u64)>(live);
        let inference = {
            let (stats, internal, should_stop) =
                (stats.clone(), internal_stop.clone(), should_stop.clone());
            sc.spawn(move || -> Result<()> {
                let result = (|| -> Result<()> {
                    while let Some((frame, dropped)) = frame_rx.recv() {
                        if !low_rate && should_stop() {
                            break;
                        }
                        stats.dropped(dropped);
                        let (f, took) = backbone_stage(&mut backbone, &mut pre, &frame)?;
                        if !feat_tx.send((frame, f, took, dropped)) {
                            break;
                        }
                    }
                    Ok(())
                })();
                if result.is_err() {
                    internal.store(true, Ordering::Relaxed);
                }
                result
            })
        };
        let head = {
            let (stats, done, internal) = (stats.clone(), done.clone(), internal_stop.clone());
            let newest = newest.clone();
            let sink_txs = inf_txs;
            sc.spawn(move || -> Result<()> {
                let result = (|| -> Result<()> {
                    while let Some(((frame, f, took, before), lost)) = feat_rx.recv() {
                        stats.dropped(lost);
                        let a = Arc::new(head_stage(&analysis, &frame, f, took)?);
                        stats.analysed(a.backbone, a.head);
                        if low_rate {
                            *lock(&newest) = Some(a);
                            let _ = done_tx.send(());
                        } else {
                            emit(
                                &sink_txs,
                                Output {
                                    dropped_before: frame.dropped_before + before + lost,
                                    frame,
                                    result: Some(a),
                                    fresh: true,
                                },
                            );
                        }
                    }
                    Ok(())
                })();
                if result.is_err() {
                    internal.store(true, Ordering::Relaxed);
                }
                // dropping `sink_txs` (every-frame mode) lets every sink finish
                drop(sink_txs);
                done.store(true, Ordering::Relaxed);
                result
            })
        };

        let mut last = Instant::now();
        let mut warned: Vec<String> = Vec::new();
        let mut read_board = || {
            if let Some(root) = &options.board_root {
                let b =
                    BoardSnapshot::from_health(&dinoedge_board::read_health(root), options.hot_c);
                // each warning once while it lasts, again if it comes back
                for w in b.warnings.iter().filter(|w| !warned.contains(w)) {
                    tracing::warn!("board: {w}");
                }
                warned = b.warnings.clone();
                stats.set_board(b);
            }
        };
        read_board();
        loop {
            let finished = done.load(Ordering::Relaxed) && source_thread.is_finished();
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() >= options.status_every {
                last = Instant::now();
                read_board();
                on_status(&stats.snapshot());
            }
        }
        let backbone_result = inference.join().expect("backbone thread panicked");
        let head_result = head.join().expect("head thread panicked");
        source_thread.join().expect("source thread panicked");
        backbone_result.and(head_result)
    });
    let snap = stats.snapshot();
    on_status(&snap);
    result?;
    Ok(RunReport {
        stats: snap,
        source_errors: lock(&source_errors).clone(),
        sink_errors: lock(&sink_errors).clone(),
        stopped: stop.load(Ordering::Relaxed),
    })
}
