//! Live depth in the browser: frames from a camera or a clip, DINOv2 and a linear depth head
//! (DINOv2's released NYU head, or one from `dinoedge train-head`), shown by the live view.
//!
//! ```sh
//! cargo run --release --example live_depth -- MODEL.onnx DEPTH_HEAD.pth [SOURCE] [ADDR]
//! # e.g. the repository's clip, looped, with the test fixtures (random weights: the depth is
//! # noise, the pipeline is real); then open http://127.0.0.1:8080/
//! cargo run --release --example live_depth -- \
//!     ../shared/fixtures/dinov2-small/onnx/model_int8.onnx \
//!     ../shared/fixtures/heads/dinov2_vits14_nyu_linear_head.pth \
//!     'assets/sample/vtest_pedestrians.mjpeg?loop&fps=10'
//! ```
//!
//! SOURCE defaults to the first camera (`v4l2:///dev/video0`),
//! ADDR to 127.0.0.1:8080. The same as `dinoedge run --head HEAD --sink http`.

use anyhow::{Context, Result, bail};
use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, BackboneOptions, ModelInfo, ResizeMode};
use dinoedge_stream::{Analysis, HttpSink, RunOptions, SharedStats, View};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, head, rest @ ..] = &args[..] else {
        bail!("usage: live_depth MODEL.onnx DEPTH_HEAD.pth [SOURCE] [ADDR]");
    };
    let source = rest.first().map_or("v4l2:///dev/video0", |s| s.as_str());
    let addr = rest.get(1).map_or("127.0.0.1:8080", |s| s.as_str());

    let LinearHead::Depth(depth) = LinearHead::load(head.as_ref(), None)? else {
        bail!("{head} is a segmentation head: give a depth head (e.g. the NYU one)");
    };
    let info = ModelInfo::read(model).with_context(|| format!("reading {model}"))?;
    depth.check_backbone(info.graph.embed_dim)?;
    // the head says which blocks it reads and at what size
    let mut options = BackboneOptions::default();
    depth.configure(&mut options, info.graph.num_blocks);
    let backbone = Backbone::from_model_info(info, &options)?;
    let pre = backbone.preprocessor(ResizeMode::Stretch)?;

    let stats = SharedStats::default();
    let view = HttpSink::bind(addr, "live depth", &View::ALL[..2], stats.clone(), 0.5)?;
    println!("live view: http://{}/ (Ctrl-C to stop)", view.addr());
    let frames = dinoedge_camera::open(source).with_context(|| format!("opening {source}"))?;
    let options = RunOptions {
        stats,
        ..Default::default()
    };
    let report = dinoedge_stream::run(
        frames,
        (backbone, pre),
        Analysis::Depth(depth),
        vec![Box::new(view)],
        options,
        |_| {},
    )?;
    println!("{}", report.stats.line());
    Ok(())
}
