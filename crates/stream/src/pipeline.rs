//! The threads of a run: source → backbone + head → one thread per sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dinoedge_camera::{Frame, FrameSource, LatestReceiver, LatestSender, latest};
use dinoedge_heads::{DepthHead, SegHead, SegOutput};
use dinoedge_model::{Backbone, Features, Preprocessor};
use ndarray::Array2;

use crate::Result;
use crate::sink::Sink;
use crate::stats::{Stats, StatsSnapshot};

/// What runs on each frame after the backbone.
pub enum Analysis {
    /// Keep the features (patch grid, CLS, …).
    Features,
    /// A segmentation head.
    Seg(SegHead),
    /// A depth head.
    Depth(DepthHead),
}

/// One frame's result, shared by every sink.
pub struct Output {
    /// The frame.
    pub frame: Arc<Frame>,
    /// Features, for [`Analysis::Features`].
    pub features: Option<Features>,
    /// Depth in metres at the frame's size.
    pub depth: Option<Array2<f32>>,
    /// Classes at the frame's size.
    pub seg: Option<SegOutput>,
    /// Time spent in the backbone (with preprocessing), the head and (set by the sink
    /// thread) the sink.
    pub stage_times: [Duration; 3],
    /// Frames dropped before this one, at the source and in the hand-over.
    pub dropped_before: u64,
}

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop after this many frames reached the sinks.
    pub max_frames: Option<u64>,
    /// Set to stop (Ctrl-C): the source stops, what is in flight is finished, every sink is
    /// flushed.
    pub stop: Arc<AtomicBool>,
    /// How often `on_status` is called.
    pub status_every: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_frames: None,
            stop: Arc::new(AtomicBool::new(false)),
            status_every: Duration::from_secs(1),
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

/// Run `source` through `backbone` and `analysis` into `sinks` until the source ends,
/// `max_frames` are done or `stop` is set. `on_status` gets the numbers every
/// `status_every`. Source and sink errors are collected in the report, not returned: a
/// failing sink is closed and the others go on.
pub fn run(
    mut source: Box<dyn FrameSource>,
    (mut backbone, mut pre): (Backbone, Preprocessor),
    analysis: Analysis,
    sinks: Vec<Box<dyn Sink>>,
    options: RunOptions,
    mut on_status: impl FnMut(&StatsSnapshot),
) -> Result<RunReport> {
    let live = source.info().live;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let source_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let stop = options.stop.clone();

    std::thread::scope(|sc| -> Result<()> {
        // source
        let (frame_tx, frame_rx) = queue::<Frame>(live);
        {
            let (stats, errors, stop) = (stats.clone(), source_errors.clone(), stop.clone());
            sc.spawn(move || {
                let mut consecutive = 0;
                while !stop.load(Ordering::Relaxed) {
                    match source.next_frame() {
                        Ok(Some(f)) => {
                            consecutive = 0;
                            {
                                let mut s = lock(&stats);
                                s.frames_in += 1;
                                s.dropped += f.dropped_before;
                            }
                            if !frame_tx.send(f) {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!("source: {e}");
                            lock(&stats).source_errors += 1;
                            lock(&errors).push(e.to_string());
                            consecutive += 1;
                            if consecutive >= 50 {
                                lock(&errors).push("50 errors in a row: giving up".into());
                                break;
                            }
                        }
                    }
                }
            });
        }

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
                        failed = true;
                        continue;
                    }
                    if i == 0 {
                        let mut s = lock(&stats);
                        s.dropped += dropped;
                        let times = [out.stage_times[0], out.stage_times[1], t0.elapsed()];
                        s.record(times, out.frame.captured.elapsed());
                    }
                }
                if !failed && let Err(e) = sink.finish() {
                    lock(&errors).push(e.to_string());
                }
            });
        }

        // backbone and head
        let inference = {
            let (stats, done, stop) = (stats.clone(), done.clone(), stop.clone());
            let max = options.max_frames;
            sc.spawn(move || -> Result<()> {
                let mut n = 0u64;
                let result = (|| -> Result<()> {
                    while let Some((frame, dropped)) = frame_rx.recv() {
                        if max.is_some_and(|m| n >= m) {
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        lock(&stats).dropped += dropped;
                        let img = frame.to_image();
                        let (h, w) = (frame.height as usize, frame.width as usize);
                        let t0 = Instant::now();
                        let f = backbone.run_image(&mut pre, &img)?;
                        let t1 = Instant::now();
                        let mut out = Output {
                            dropped_before: frame.dropped_before + dropped,
                            frame: Arc::new(frame),
                            features: None,
                            depth: None,
                            seg: None,
                            stage_times: [t1 - t0, Duration::ZERO, Duration::ZERO],
                        };
                        match &analysis {
                            Analysis::Features => out.features = Some(f),
                            Analysis::Seg(s) => out.seg = Some(s.predict_features(&f, h, w)?),
                            Analysis::Depth(d) => out.depth = Some(d.predict_features(&f, h, w)?),
                        }
                        out.stage_times[1] = t1.elapsed();
                        let out = Arc::new(out);
                        for tx in &sink_txs {
                            tx.send(out.clone());
                        }
                        n += 1;
                        if max.is_some_and(|m| n >= m) {
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    Ok(())
                })();
                // closing the sink queues lets every sink finish
                drop(sink_txs);
                stop.store(true, Ordering::Relaxed);
                done.store(true, Ordering::Relaxed);
                result
            })
        };

        let mut last = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            if last.elapsed() >= options.status_every {
                last = Instant::now();
                on_status(&lock(&stats).snapshot());
            }
        }
        inference.join().expect("inference thread panicked")
    })?;
    let stats = lock(&stats).snapshot();
    on_status(&stats);
    Ok(RunReport {
        stats,
        source_errors: lock(&source_errors).clone(),
        sink_errors: lock(&sink_errors).clone(),
    })
}
