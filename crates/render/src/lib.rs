//! # dinoedge-render
//!
//! Pictures for people, from features and head outputs: colour maps ([`colormap`]), overlays
//! and tiles ([`overlay`]), the output files of a depth or class map — 16-bit depth PNGs, class
//! PNGs, depth in colour with a legend ([`output`]) — and the two views every DINOv2 user looks
//! at first: the principal components of the patch features ([`pca`]) and the last block's
//! per-head attention ([`attention`]).
//!
//! May depend on: `image`, `ndarray` and numeric crates only; nothing of dinoedge's, so the CLI,
//! the runner and the trainer can all draw without linking one another. (The runner's own
//! result views, which draw its result types, are `dinoedge_stream::render`.)
#![warn(missing_docs)]

pub mod attention;
pub mod colormap;
pub mod output;
pub mod overlay;
pub mod pca;

pub use attention::attention_grid;
pub use colormap::Colormap;
pub use pca::{Pca, PcaView, pca_images};

/// Errors of the pictures.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No data to draw.
    #[error("nothing to draw: {0}")]
    Empty(String),
    /// Arrays whose shapes do not go together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An option out of range or unknown.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Result alias of this crate.
pub type Result<T, E = RenderError> = std::result::Result<T, E>;
