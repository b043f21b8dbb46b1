//! Per-stage times, end-to-end latency, rates and drops.

use std::time::{Duration, Instant};

/// How many recent samples percentiles are taken over.
const WINDOW: usize = 1024;

/// Stage names, in pipeline order.
pub const STAGES: [&str; 3] = ["backbone", "head", "sinks"];

/// Running statistics of a pipeline (owned by the collector thread).
#[derive(Debug, Clone)]
pub struct Stats {
    started: Instant,
    /// Frames the source delivered.
    pub frames_in: u64,
    /// Frames that reached the sinks.
    pub frames_out: u64,
    /// Frames dropped on the way (hand-overs and the source's own drops).
    pub dropped: u64,
    /// Source errors seen.
    pub source_errors: u64,
    stage_ms: [Vec<f32>; 3],
    latency_ms: Vec<f32>,
}

/// A view of [`Stats`] for status lines and JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    /// Seconds since the start.
    pub seconds: f64,
    /// Frames the source delivered.
    pub frames_in: u64,
    /// Frames that reached the sinks.
    pub frames_out: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Source errors.
    pub source_errors: u64,
    /// Input frame rate since the start.
    pub fps_in: f64,
    /// Output frame rate since the start.
    pub fps_out: f64,
    /// Median time per frame of each stage, ms (`backbone`, `head`, `sinks`).
    pub stage_ms_p50: Vec<(String, f32)>,
    /// Capture-to-sink latency percentiles, ms: p50, p95, p99.
    pub latency_ms: [f32; 3],
}

fn push(v: &mut Vec<f32>, x: f32) {
    if v.len() == WINDOW {
        v.remove(0);
    }
    v.push(x);
}

fn percentile(v: &[f32], q: f32) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let i = ((s.len() - 1) as f32 * q).round() as usize;
    s[i]
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            frames_in: 0,
            frames_out: 0,
            dropped: 0,
            source_errors: 0,
            stage_ms: [Vec::new(), Vec::new(), Vec::new()],
            latency_ms: Vec::new(),
        }
    }
}

impl Stats {
    /// Record one frame that went through: its stage times and its end-to-end latency.
    pub fn record(&mut self, stages: [Duration; 3], latency: Duration) {
        self.frames_out += 1;
        for (v, d) in self.stage_ms.iter_mut().zip(stages) {
            push(v, d.as_secs_f32() * 1e3);
        }
        push(&mut self.latency_ms, latency.as_secs_f32() * 1e3);
    }

    /// The current numbers.
    pub fn snapshot(&self) -> StatsSnapshot {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        StatsSnapshot {
            seconds: secs,
            frames_in: self.frames_in,
            frames_out: self.frames_out,
            dropped: self.dropped,
            source_errors: self.source_errors,
            fps_in: self.frames_in as f64 / secs,
            fps_out: self.frames_out as f64 / secs,
            stage_ms_p50: STAGES
                .iter()
                .zip(&self.stage_ms)
                .map(|(n, v)| (n.to_string(), percentile(v, 0.5)))
                .collect(),
            latency_ms: [
                percentile(&self.latency_ms, 0.5),
                percentile(&self.latency_ms, 0.95),
                percentile(&self.latency_ms, 0.99),
            ],
        }
    }
}

impl StatsSnapshot {
    /// One status line.
    pub fn line(&self) -> String {
        let stages: Vec<String> = self
            .stage_ms_p50
            .iter()
            .map(|(n, v)| format!("{n} {v:.1} ms"))
            .collect();
        format!(
            "{} frames in ({:.1} fps), {} out ({:.1} fps), {} dropped | {} | latency p50 {:.0} p95 {:.0} p99 {:.0} ms",
            self.frames_in,
            self.fps_in,
            self.frames_out,
            self.fps_out,
            self.dropped,
            stages.join(", "),
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
    fn percentiles_and_rates() {
        let mut s = Stats::default();
        for i in 1..=100 {
            s.frames_in += 1;
            s.record([Duration::from_millis(i); 3], Duration::from_millis(i * 2));
        }
        let snap = s.snapshot();
        assert_eq!(snap.frames_out, 100);
        assert!(
            (snap.latency_ms[0] - 100.0).abs() <= 2.0,
            "{:?}",
            snap.latency_ms
        );
        assert!(
            (snap.latency_ms[2] - 198.0).abs() <= 2.0,
            "{:?}",
            snap.latency_ms
        );
        assert!(snap.line().contains("100 frames in"));
    }
}
