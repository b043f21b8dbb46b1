//! The runner end to end on the fixture backbone: an image-folder source through the NYU
//! depth head into a file sink, a JSON-lines sink and a sink that fails.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, ResizeMode, Resolution, load_rgb};
use dinoedge_stream::pipeline::Output;
use dinoedge_stream::{Analysis, FileSink, JsonLinesSink, RunOptions, Sink, StreamError, run};

fn fixtures() -> PathBuf {
    std::env::var_os("DINOEDGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        })
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Failing(u32);
impl Sink for Failing {
    fn name(&self) -> String {
        "failing".into()
    }
    fn write(&mut self, _: &Output) -> Result<(), StreamError> {
        self.0 += 1;
        if self.0 == 2 {
            return Err(StreamError::Sink {
                name: "failing".into(),
                reason: "disk full".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn image_folder_through_depth_head_to_files_and_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("in");
    std::fs::create_dir(&images).unwrap();
    for n in [0, 1, 8] {
        std::fs::copy(
            fixtures().join(format!("images/voc2012_val_vainf/{n}_image.png")),
            images.join(format!("{n}.png")),
        )
        .unwrap();
    }
    let LinearHead::Depth(head) = LinearHead::load(
        &fixtures().join("heads/dinov2_vits14_nyu_linear_head.pth"),
        None,
    )
    .unwrap() else {
        panic!("depth head")
    };
    let mut options = BackboneOptions {
        resolution: Some(Resolution::new(112, 112)),
        cache: CacheMode::Off,
        ..Default::default()
    };
    head.configure(&mut options, 12);
    let model = fixtures().join("dinov2-small/onnx/model.onnx");
    let load = || {
        let bb = Backbone::load(&model, &options).unwrap();
        let pre = bb.preprocessor(ResizeMode::Stretch).unwrap();
        (bb, pre)
    };
    let out = tmp.path().join("out");
    let json = Shared::default();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(FileSink::new(out.clone(), None).unwrap()),
        Box::new(JsonLinesSink::new(json.clone(), "jsonl")),
        Box::new(Failing(0)),
    ];
    let source = dinoedge_camera::open(images.to_str().unwrap()).unwrap();
    let mut statuses = 0;
    let report = run(
        source,
        load(),
        Analysis::Depth(head.clone()),
        sinks,
        RunOptions::default(),
        |_| statuses += 1,
    )
    .unwrap();
    println!("{}", report.stats.line());
    assert_eq!((report.stats.frames_in, report.stats.frames_out), (3, 3));
    assert!(statuses >= 1);
    assert_eq!(report.sink_errors.len(), 1, "{:?}", report.sink_errors);
    assert!(report.sink_errors[0].contains("disk full"));
    // every frame written by the file sink, equal to the head run directly
    let (mut bb, mut pre) = load();
    for (seq, n) in [0, 1, 8].iter().enumerate() {
        let img = load_rgb(&images.join(format!("{n}.png"))).unwrap();
        let f = bb.run_image(&mut pre, &img).unwrap();
        let want = head.predict_features(&f, 513, 513).unwrap();
        let got: ndarray::Array2<f32> =
            ndarray_npy::read_npy(out.join(format!("frame_{seq:06}_depth.npy"))).unwrap();
        assert_eq!(got, want);
        assert!(out.join(format!("frame_{seq:06}_depth_mm.png")).is_file());
    }
    let text = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 2);
    assert!(lines[0]["depth"]["max_m"].as_f64().unwrap() <= 10.0);
}
