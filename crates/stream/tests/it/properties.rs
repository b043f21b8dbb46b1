//! Property tests (`proptest`, bounded): arbitrary `--sink` specifications, and a real MCAP
//! recording (made by the runner) with bytes flipped and cut, read back as a source — typed
//! errors or frames, never a panic or an unbounded allocation.

use std::sync::OnceLock;

use dinoedge_camera::FrameSource;
use dinoedge_camera::mcap::McapSource;
use dinoedge_stream::{Analysis, McapSink, RunOptions, Sink, SinkSpec, run};
use proptest::prelude::*;

/// A recording of 4 synthetic frames through the tiny model (PCA), made once.
fn recording() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.mcap");
        let (bb, pre) = crate::run::tiny_backbone(56);
        let sinks: Vec<Box<dyn Sink>> =
            vec![Box::new(McapSink::create(&path, false, 0.5).unwrap())];
        run(
            dinoedge_camera::open("synthetic://?width=64&height=48&frames=4&pace=fast").unwrap(),
            (bb, pre),
            Analysis::Pca,
            sinks,
            RunOptions {
                drop_frames: Some(false),
                board_root: None,
                ..RunOptions::default()
            },
            |_| {},
        )
        .unwrap();
        std::fs::read(&path).unwrap()
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_sink_spec_parses_or_is_an_error(spec in "\\PC{0,60}") {
        let _ = SinkSpec::parse(&spec);
    }

    #[test]
    fn sink_specs_with_kinds_and_options(
        kind in prop::sample::select(vec!["files:", "jsonl:", "mcap:", "http:", "jsonl", "http", ""]),
        rest in "[ -~]{0,40}",
    ) {
        let _ = SinkSpec::parse(&format!("{kind}{rest}"));
    }

    #[test]
    fn damaged_recordings_read_or_fail(
        edits in prop::collection::vec((any::<usize>(), 1u8..), 1..6),
        cut in prop_oneof![Just(usize::MAX - 1), any::<usize>()],
    ) {
        let data = dinoedge_testkit::mutate(recording(), &edits, (0, &[]), cut);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.mcap");
        std::fs::write(&path, &data).unwrap();
        if let Ok(mut source) = McapSource::open(&path, None) {
            for _ in 0..12 {
                match source.next_frame() {
                    Ok(Some(f)) => prop_assert_eq!(f.rgb.len(), (f.width * f.height * 3) as usize),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
    }
}
