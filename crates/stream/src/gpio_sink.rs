//! GPIO as a sink: output pins driven by each new result (through `dinoedge-board`'s rules), and
//! snapshot buttons that save the current frame and result.

use std::collections::HashMap;
use std::path::PathBuf;

use dinoedge_board::gpio::Measures;
use dinoedge_board::{Pins, RuleSet};
use serde_json::Value;

use crate::region::Region;
use crate::render::{View, jpeg, render};
use crate::result::Output;
use crate::sink::{Sink, sink_err};
use crate::{Result, StreamError};

/// A result's per-region summaries, as the rules read them.
struct Summaries(HashMap<String, Value>);

impl Measures for Summaries {
    fn nearest_m(&self, region: &str) -> Option<f32> {
        self.0.get(region)?["depth"]["nearest_m"]
            .as_f64()
            .map(|v| v as f32)
    }

    fn coverage(&self, class: &str, region: &str) -> Option<f32> {
        let classes = self.0.get(region)?["classes"].as_array()?;
        // a class the head knows but that is absent covers 0
        Some(
            classes
                .iter()
                .find(|c| c["name"] == class)
                .and_then(|c| c["fraction"].as_f64())
                .unwrap_or(0.0) as f32,
        )
    }
}

/// Drives pins from results; saves a snapshot when a snapshot input sees a press.
pub struct GpioSink {
    rules: RuleSet,
    pins: Box<dyn Pins + Send>,
    regions: Vec<Region>,
    snapshots: PathBuf,
    alpha: f32,
    taken: u64,
}

impl GpioSink {
    /// Rules over `regions` (the whole frame is always there as `frame`); every region a rule
    /// reads must be among them. Snapshots go to `snapshots`.
    pub fn new(
        rules: RuleSet,
        pins: Box<dyn Pins + Send>,
        regions: Vec<Region>,
        snapshots: PathBuf,
        alpha: f32,
    ) -> Result<GpioSink> {
        let mut all = vec![Region::frame()];
        all.extend(regions);
        // only the regions a rule reads are summarised per result
        all.retain(|x| rules.rules().any(|r| r.region() == Some(x.name.as_str())));
        for r in rules.rules() {
            if let Some(name) = r.region()
                && !all.iter().any(|x| x.name == name)
            {
                return Err(sink_err(
                    "gpio",
                    format!(
                        "the rule for pin {} reads region {name:?}: define it with --region {name}=LEFT,TOP,RIGHT,BOTTOM",
                        r.pin()
                    ),
                ));
            }
        }
        let mut sink = GpioSink {
            rules,
            pins,
            regions: all,
            snapshots,
            alpha,
            taken: 0,
        };
        // every output starts low, and a button already held does not count as a press
        sink.rules
            .apply(None, sink.pins.as_mut())
            .map_err(gpio_err)?;
        sink.rules
            .snapshot_requested(sink.pins.as_mut())
            .map_err(gpio_err)?;
        Ok(sink)
    }

    /// Snapshots saved so far.
    pub fn snapshots_taken(&self) -> u64 {
        self.taken
    }
}

fn gpio_err(e: impl std::fmt::Display) -> StreamError {
    sink_err("gpio", e)
}

impl Sink for GpioSink {
    fn name(&self) -> String {
        "gpio".into()
    }

    fn write(&mut self, out: &Output) -> Result<()> {
        if let Some(a) = out.result.as_deref().filter(|_| out.fresh) {
            let summaries = Summaries(
                self.regions
                    .iter()
                    .map(|r| (r.name.clone(), r.summarise_all(a)))
                    .collect(),
            );
            self.rules
                .apply(Some(&summaries), self.pins.as_mut())
                .map_err(gpio_err)?;
        }
        if self
            .rules
            .snapshot_requested(self.pins.as_mut())
            .map_err(gpio_err)?
        {
            std::fs::create_dir_all(&self.snapshots).map_err(gpio_err)?;
            for view in [View::Camera, View::Result] {
                let path = self.snapshots.join(format!(
                    "snapshot_{:06}_{}.jpg",
                    out.frame.seq,
                    view.name()
                ));
                let bytes = jpeg(&render(out, view, self.alpha), 90).map_err(gpio_err)?;
                std::fs::write(&path, bytes).map_err(gpio_err)?;
            }
            self.taken += 1;
            tracing::info!(
                "snapshot of frame {} saved in {}",
                out.frame.seq,
                self.snapshots.display()
            );
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // leave nothing switched on after the run
        self.rules.apply(None, self.pins.as_mut()).map_err(gpio_err)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dinoedge_camera::Frame;
    use ndarray::Array2;

    use super::*;
    use crate::result::{Analysed, FrameResult};

    /// Output levels, PWM duties and the input's levels to play back.
    type State = (HashMap<u8, bool>, HashMap<u8, f32>, Vec<bool>);

    /// Pins whose state the test reads through a shared handle.
    #[derive(Clone, Default)]
    struct Board(Arc<Mutex<State>>);

    impl Pins for Board {
        fn set(&mut self, pin: u8, high: bool) -> dinoedge_board::Result<()> {
            self.0.lock().unwrap().0.insert(pin, high);
            Ok(())
        }
        fn pwm(&mut self, pin: u8, duty: f32) -> dinoedge_board::Result<()> {
            self.0.lock().unwrap().1.insert(pin, duty);
            Ok(())
        }
        fn read(&mut self, _pin: u8) -> dinoedge_board::Result<bool> {
            let mut s = self.0.lock().unwrap();
            Ok(if s.2.len() > 1 { s.2.remove(0) } else { s.2[0] })
        }
    }

    fn output(seq: u64, near_left: f32) -> Output {
        let (h, w) = (20usize, 40usize);
        // near on the left half, 5 m on the right
        let depth = Array2::from_shape_fn((h, w), |(_, x)| if x < w / 2 { near_left } else { 5.0 });
        Output {
            frame: Arc::new(Frame::new(vec![128; w * h * 3], w as u32, h as u32, seq)),
            result: Some(Arc::new(FrameResult {
                seq,
                analysed: Analysed::Depth(depth),
                beside: None,
                backbone: Duration::ZERO,
                head: Duration::ZERO,
            })),
            fresh: true,
            dropped_before: 0,
        }
    }

    #[test]
    fn pins_follow_the_nearest_depth_and_a_press_saves_a_snapshot() {
        let rules = RuleSet::parse(&[
            "17=high:nearest(left)<1",
            "18=pwm:proximity(right,1,9)",
            "27=snapshot",
        ])
        .unwrap();
        let board = Board::default();
        // the button: up at start, then pressed at the third frame
        board.0.lock().unwrap().2 = vec![true, false, false, true, true];
        let dir = tempfile::tempdir().unwrap();
        let regions = vec![
            "left=0,0,0.5,1".parse::<Region>().unwrap(),
            "right=0.5,0,1,1".parse().unwrap(),
        ];
        let mut sink = GpioSink::new(
            rules,
            Box::new(board.clone()),
            regions,
            dir.path().into(),
            0.5,
        )
        .unwrap();
        assert!(!board.0.lock().unwrap().0[&17]);
        sink.write(&output(0, 0.5)).unwrap();
        assert!(board.0.lock().unwrap().0[&17], "0.5 m on the left: high");
        assert!(
            (board.0.lock().unwrap().1[&18] - 0.5).abs() < 1e-6,
            "5 m: half duty"
        );
        sink.write(&output(1, 3.0)).unwrap();
        assert!(!board.0.lock().unwrap().0[&17]);
        assert_eq!(sink.snapshots_taken(), 0);
        sink.write(&output(2, 3.0)).unwrap();
        assert_eq!(sink.snapshots_taken(), 1);
        for v in ["camera", "result"] {
            let p = dir.path().join(format!("snapshot_000002_{v}.jpg"));
            assert!(image::open(&p).is_ok(), "{}", p.display());
        }
        sink.write(&output(3, 0.5)).unwrap();
        assert_eq!(sink.snapshots_taken(), 1, "held, not pressed again");
        sink.finish().unwrap();
        let s = board.0.lock().unwrap();
        assert!(!s.0[&17] && s.1[&18] == 0.0, "all off after the run");
    }

    #[test]
    fn a_rule_on_an_undefined_region_is_refused() {
        let rules = RuleSet::parse(&["17=high:nearest(ahead)<1"]).unwrap();
        let board = Board::default();
        let e = GpioSink::new(rules, Box::new(board), vec![], "snaps".into(), 0.5)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--region ahead="), "{e}");
    }
}
