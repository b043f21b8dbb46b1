//! What the runner hands its sinks: a frame and the newest result there is for it. Its own
//! module, below both the pipeline (which makes these) and the sinks and pictures (which read
//! them), so neither imports the other.

use std::sync::Arc;
use std::time::Duration;

use dinoedge_camera::Frame;
use dinoedge_heads::{Palette, SegOutput};
use dinoedge_model::Features;
use image::RgbImage;
use ndarray::Array2;

/// What came out of the head on one frame: one case per [`crate::Analysis`] (a segmentation
/// beside a depth model's own depth is two of these, see [`FrameResult::beside`]).
pub enum Analysed {
    /// The features (patch grid, CLS, …), for [`crate::Analysis::Features`].
    Features(Features),
    /// The PCA picture at patch resolution, for [`crate::Analysis::Pca`].
    Pca(RgbImage),
    /// Depth in metres at the frame's size.
    Depth(Array2<f32>),
    /// Relative inverse depth at the frame's size (a relative Depth Anything V2 model): larger
    /// is nearer, with no unit; only order and ratios mean anything.
    RelativeDepth(Array2<f32>),
    /// Classes at the frame's size, and the head's palette.
    Seg(SegOutput, Palette),
}

impl Analysed {
    /// Whether the result is a map over the image (depth or classes), which regions summarise.
    pub fn is_map(&self) -> bool {
        matches!(
            self,
            Analysed::Depth(_) | Analysed::RelativeDepth(_) | Analysed::Seg(..)
        )
    }
}

/// The result of the backbone and the head on one frame, with its times.
pub struct FrameResult {
    /// Sequence number of the frame it was computed on.
    pub seq: u64,
    /// What the head made of it.
    pub analysed: Analysed,
    /// A second result of the same backbone pass: the model's own depth beside the classes of a
    /// segmentation head (`run --model da2 --head seg.safetensors`).
    pub beside: Option<Analysed>,
    /// Time in the backbone (with preprocessing).
    pub backbone: Duration,
    /// Time in the head.
    pub head: Duration,
}

impl FrameResult {
    /// Every result of the pass: [`FrameResult::analysed`], then [`FrameResult::beside`].
    pub fn parts(&self) -> impl Iterator<Item = &Analysed> {
        std::iter::once(&self.analysed).chain(self.beside.as_ref())
    }

    /// The depth map of the pass, if it has one, and whether it is relative (no unit).
    pub fn depth(&self) -> Option<(&Array2<f32>, bool)> {
        self.parts().find_map(|a| match a {
            Analysed::Depth(d) => Some((d, false)),
            Analysed::RelativeDepth(d) => Some((d, true)),
            _ => None,
        })
    }
}

/// One frame on its way to the sinks, shared by all of them.
pub struct Output {
    /// The frame.
    pub frame: Arc<Frame>,
    /// The newest result: this frame's own, or in the low-rate modes the last one finished
    /// (`None` until the first one is).
    pub result: Option<Arc<FrameResult>>,
    /// Whether this is the first output to carry `result` (sinks that store results, such as
    /// files, write them only then).
    pub fresh: bool,
    /// Frames dropped before this one, at the source and in the hand-overs.
    pub dropped_before: u64,
}
