//! # dinoedge-heads
//!
//! What sits on the frozen DINOv2 features: DINOv2's released linear segmentation and depth
//! heads read from their `.pth` checkpoints ([`linear`], [`pth`]), the two views every DINOv2
//! user looks at first — the principal-component picture of the patch features and the last
//! block's per-head attention — and the colour maps, palettes and overlays they are drawn with.
//!
//! Heads are also trained here, on the board: labelled folders ([`dataset`]), an on-disk
//! feature cache so the backbone runs once per image ([`featcache`]), the trainer
//! ([`train`]), and the metrics of evaluation ([`metrics`]).
#![warn(missing_docs)]

pub mod attention;
pub mod colormap;
pub mod dataset;
pub mod featcache;
pub mod fit;
pub mod linear;
pub mod metrics;
pub mod output;
pub mod overlay;
pub mod palette;
pub mod pca;
pub mod pth;
pub mod resize;
pub mod st;
pub mod train;

pub use attention::attention_grid;
pub use colormap::Colormap;
pub use linear::{DepthHead, DepthOutput, LinearHead, SegHead, SegOutput};
pub use palette::Palette;
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
    /// A file that does not exist.
    #[error("{}: no such file", .0.display())]
    NotFound(std::path::PathBuf),
    /// A checkpoint that cannot be read.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A readable checkpoint that is not a head dinoedge knows.
    #[error("{} is not a DINOv2 linear head: {reason}", path.display())]
    NotAHead {
        /// The file.
        path: std::path::PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// A head that does not fit the backbone it is used with.
    #[error("head and backbone do not fit: {0}")]
    Incompatible(String),
    /// A labelled folder, an image or a label that cannot be used.
    #[error("{}: {reason}", path.display())]
    Dataset {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The backbone failed.
    #[error(transparent)]
    Model(#[from] dinoedge_model::ModelError),
    /// Writing an output failed.
    #[error("{}: {reason}", path.display())]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = HeadsError> = std::result::Result<T, E>;
