//! # dinoedge-heads
//!
//! What sits on the frozen DINOv2 features. This first landing holds the two views every
//! DINOv2 user looks at first — the principal-component picture of the patch features and
//! the last block's per-head attention — and the colour maps and overlays they are drawn
//! with. The segmentation and depth heads come next (see the project's issues).
#![warn(missing_docs)]

pub mod attention;
pub mod colormap;
pub mod overlay;
pub mod pca;

pub use attention::attention_grid;
pub use colormap::Colormap;
pub use pca::{Pca, PcaView, pca_images};

/// Errors of the heads crate.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    /// No data to work on.
    #[error("nothing to fit: {0}")]
    Empty(String),
    /// Arrays whose shapes do not go together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An option out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Result alias of this crate.
pub type Result<T, E = HeadsError> = std::result::Result<T, E>;
