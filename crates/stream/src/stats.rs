//! Per-stage times, end-to-end latency, rates and drops, shared by the threads of a run and
//! whoever shows them (the status line, the HTTP view's `/stats`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many recent samples percentiles are taken over.
const WINDOW: usize = 512;
/// How many recent events a frame rate is measured over.
const RATE_WINDOW: usize = 32;

/// A window of recent samples (ms).
#[derive(Debug, Clone, Default)]
struct Samples(VecDeque<f32>);

impl Samples {
    fn push(&mut self, d: Duration) {
        if self.0.len() == WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(d.as_secs_f32() * 1e3);
    }

    fn percentile(&self, q: f32) -> f32 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut s: Vec<f32> = self.0.iter().copied().collect();
        s.sort_by(f32::total_cmp);
        s[((s.len() - 1) as f32 * q).round() as usize]
    }
}

/// Times of recent events, for a current rate.
#[derive(Debug, Clone, Default)]
struct Rate {
    count: u64,
    times: VecDeque<Instant>,
}

impl Rate {
    fn tick(&mut self) {
        self.count += 1;
        if self.times.len() == RATE_WINDOW {
            self.times.pop_front();
        }
        self.times.push_back(Instant::now());
    }

    /// Events per second over the recent window (0 with fewer than two, or when the last
    /// one is older than the window's span: the stream stalled).
    fn per_second(&self) -> f64 {
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) if self.times.len() >= 2 => {
                let span = (*b - *a).as_secs_f64();
                let idle = b.elapsed().as_secs_f64();
                let n = (self.times.len() - 1) as f64;
                if span <= 0.0 {
                    0.0
                } else if idle > span.max(1.0) {
                    // nothing for a while: the rate is what it is now, not what it was
                    n / (span + idle)
                } else {
                    n / span
                }
            }
            _ => 0.0,
        }
    }
}

/// How a sink is doing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Taking results.
    Running,
    /// Flushed and closed after the last result.
    Finished,
    /// Failed and closed; the others went on.
    Failed(String),
}

#[derive(Debug, Clone)]
struct SinkStats {
    name: String,
    written: u64,
    dropped: u64,
    time: Samples,
    latency: Samples,
    state: SinkState,
}

/// Running statistics of a pipeline.
#[derive(Debug, Clone)]
pub struct Stats {
    started: Instant,
    frames_in: Rate,
    analysed: Rate,
    frames_out: Rate,
    dropped: u64,
    source_errors: u64,
    backbone: Samples,
    head: Samples,
    latency: Samples,
    sinks: Vec<SinkStats>,
    board: Option<BoardSnapshot>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_in: Rate::default(),
            analysed: Rate::default(),
            frames_out: Rate::default(),
            dropped: 0,
            source_errors: 0,
            backbone: Samples::default(),
            head: Samples::default(),
            latency: Samples::default(),
            sinks: Vec::new(),
            board: None,
        }
    }
}

/// One sink in a [`StatsSnapshot`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkSnapshot {
    /// The sink (`files:out/`, `mcap:run.mcap`, `http://127.0.0.1:8080`, `jsonl`).
    pub name: String,
    /// Outputs it took.
    pub written: u64,
    /// Outputs it missed because it was still busy with an older one (live runs only).
    pub dropped: u64,
    /// Median time per output, ms.
    pub ms_p50: f32,
    /// Capture-to-this-sink latency, ms: p50, p95, p99.
    pub latency_ms: [f32; 3],
    /// Running, finished or failed (with why).
    pub state: SinkState,
}

/// A view of [`Stats`] for status lines and JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    /// Seconds since the start.
    pub seconds: f64,
    /// Frames the source delivered.
    pub frames_in: u64,
    /// Frames the backbone and head ran on.
    pub frames_analysed: u64,
    /// Frames handed to the sinks.
    pub frames_out: u64,
    /// Frames dropped before the backbone (the source's own drops and newest-wins
    /// hand-overs). In the low-rate modes the frames the backbone skips on purpose are not
    /// counted.
    pub dropped: u64,
    /// Source errors.
    pub source_errors: u64,
    /// Current input frame rate (over the last 32 frames).
    pub fps_in: f64,
    /// Current backbone frame rate.
    pub fps_analysed: f64,
    /// Current output frame rate.
    pub fps_out: f64,
    /// Median backbone time per frame (preprocessing included), ms.
    pub backbone_ms_p50: f32,
    /// Median head time per frame, ms.
    pub head_ms_p50: f32,
    /// Capture-to-sink latency over every sink, ms: p50, p95, p99.
    pub latency_ms: [f32; 3],
    /// Each sink.
    pub sinks: Vec<SinkSnapshot>,
    /// The board's temperature and throttling, when the run reads them.
    pub board: Option<BoardSnapshot>,
}

/// What the board's sensors said at the last status.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BoardSnapshot {
    /// SoC temperature, °C.
    pub temperature_c: Option<f32>,
    /// The SoC is throttled or its clock capped now (Raspberry Pi firmware flags).
    pub throttled_now: bool,
    /// The supply is too low now (Raspberry Pi).
    pub under_voltage_now: bool,
    /// What the user should be told.
    pub warnings: Vec<String>,
}

impl BoardSnapshot {
    /// From a reading; temperatures at or above `hot_c` warn.
    pub fn from_health(h: &dinoedge_board::Health, hot_c: f32) -> BoardSnapshot {
        BoardSnapshot {
            temperature_c: h.temperature_c,
            throttled_now: h
                .throttling
                .is_some_and(|t| t.throttled_now() || t.freq_capped_now()),
            under_voltage_now: h.throttling.is_some_and(|t| t.under_voltage_now()),
            warnings: h.warnings(hot_c),
        }
    }
}

/// [`Stats`] behind a lock, cheap to clone and share between threads.
#[derive(Debug, Clone, Default)]
pub struct SharedStats(Arc<Mutex<Stats>>);

impl SharedStats {
    fn with<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Start over, with these sinks.
    pub fn restart(&self, sinks: Vec<String>) {
        self.with(|s| {
            *s = Stats {
                sinks: sinks
                    .into_iter()
                    .map(|name| SinkStats {
                        name,
                        written: 0,
                        dropped: 0,
                        time: Samples::default(),
                        latency: Samples::default(),
                        state: SinkState::Running,
                    })
                    .collect(),
                ..Stats::default()
            }
        })
    }

    /// The source delivered a frame (after losing `dropped_before` itself).
    pub fn frame_in(&self, dropped_before: u64) {
        self.with(|s| {
            s.frames_in.tick();
            s.dropped += dropped_before;
        })
    }

    /// Frames were overwritten in the hand-over to the backbone.
    pub fn dropped(&self, n: u64) {
        self.with(|s| s.dropped += n)
    }

    /// The source failed once.
    pub fn source_error(&self) {
        self.with(|s| s.source_errors += 1)
    }

    /// The backbone and head ran on a frame.
    pub fn analysed(&self, backbone: Duration, head: Duration) {
        self.with(|s| {
            s.analysed.tick();
            s.backbone.push(backbone);
            s.head.push(head);
        })
    }

    /// A frame was handed to the sinks.
    pub fn frame_out(&self) {
        self.with(|s| s.frames_out.tick())
    }

    /// Sink `i` wrote an output in `time`, `latency` after capture, having missed `dropped`.
    pub fn sink_wrote(&self, i: usize, dropped: u64, time: Duration, latency: Duration) {
        self.with(|s| {
            s.latency.push(latency);
            if let Some(k) = s.sinks.get_mut(i) {
                k.written += 1;
                k.dropped += dropped;
                k.time.push(time);
                k.latency.push(latency);
            }
        })
    }

    /// Sink `i` finished or failed.
    pub fn sink_state(&self, i: usize, state: SinkState) {
        self.with(|s| {
            if let Some(k) = s.sinks.get_mut(i) {
                k.state = state;
            }
        })
    }

    /// The current numbers.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.with(|s| {
            let pct = |v: &Samples| [v.percentile(0.5), v.percentile(0.95), v.percentile(0.99)];
            StatsSnapshot {
                seconds: s.started.elapsed().as_secs_f64(),
                frames_in: s.frames_in.count,
                frames_analysed: s.analysed.count,
                frames_out: s.frames_out.count,
                dropped: s.dropped,
                source_errors: s.source_errors,
                fps_in: s.frames_in.per_second(),
                fps_analysed: s.analysed.per_second(),
                fps_out: s.frames_out.per_second(),
                backbone_ms_p50: s.backbone.percentile(0.5),
                head_ms_p50: s.head.percentile(0.5),
                latency_ms: pct(&s.latency),
                sinks: s
                    .sinks
                    .iter()
                    .map(|k| SinkSnapshot {
                        name: k.name.clone(),
                        written: k.written,
                        dropped: k.dropped,
                        ms_p50: k.time.percentile(0.5),
                        latency_ms: pct(&k.latency),
                        state: k.state.clone(),
                    })
                    .collect(),
                board: s.board.clone(),
            }
        })
    }

    /// Keep the board's latest reading.
    pub fn set_board(&self, board: BoardSnapshot) {
        self.with(|s| s.board = Some(board));
    }
}

impl StatsSnapshot {
    /// One status line.
    pub fn line(&self) -> String {
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|k| match &k.state {
                SinkState::Failed(_) => format!("{} FAILED", k.name),
                _ => format!("{} {:.1} ms", k.name, k.ms_p50),
            })
            .collect();
        let analysed = if self.frames_analysed != self.frames_out {
            format!(
                ", backbone ran on {} ({:.1} fps)",
                self.frames_analysed, self.fps_analysed
            )
        } else {
            String::new()
        };
        let board = match &self.board {
            Some(b) => {
                let mut v: Vec<String> = b
                    .temperature_c
                    .map(|t| format!("SoC {t:.0} °C"))
                    .into_iter()
                    .collect();
                if b.throttled_now {
                    v.push("THROTTLED".into());
                }
                if b.under_voltage_now {
                    v.push("UNDER-VOLTAGE".into());
                }
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" | {}", v.join(", "))
                }
            }
            None => String::new(),
        };
        format!(
            "{} in ({:.1} fps), {} out ({:.1} fps){analysed}, {} dropped | backbone {:.1} ms, head {:.1} ms, {} | latency p50 {:.0} p95 {:.0} p99 {:.0} ms{board}",
            self.frames_in,
            self.fps_in,
            self.frames_out,
            self.fps_out,
            self.dropped,
            self.backbone_ms_p50,
            self.head_ms_p50,
            sinks.join(", "),
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_rates_and_sinks() {
        let s = SharedStats::default();
        s.restart(vec!["a".into(), "b".into()]);
        for i in 1..=100 {
            s.frame_in(0);
            s.analysed(Duration::from_millis(i), Duration::from_millis(1));
            s.frame_out();
            s.sink_wrote(0, 0, Duration::from_millis(2), Duration::from_millis(i * 2));
        }
        s.sink_state(1, SinkState::Failed("disk full".into()));
        let snap = s.snapshot();
        assert_eq!(snap.frames_out, 100);
        assert_eq!(snap.sinks[0].written, 100);
        assert!((snap.latency_ms[0] - 100.0).abs() <= 2.0, "{snap:?}");
        assert!((snap.latency_ms[2] - 198.0).abs() <= 2.0, "{snap:?}");
        assert!((snap.backbone_ms_p50 - 50.0).abs() <= 1.0, "{snap:?}");
        assert!(snap.fps_in > 0.0);
        let line = snap.line();
        assert!(
            line.contains("100 in") && line.contains("b FAILED"),
            "{line}"
        );
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["sinks"][1]["state"]["failed"], "disk full");
    }
}
