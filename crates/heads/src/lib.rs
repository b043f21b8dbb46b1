//! # dinoedge-heads
//!
//! Loading and running heads on frozen DINOv2 features: DINOv2's released linear segmentation
//! and depth heads read from their `.pth` checkpoints ([`pth`]), heads trained by dinoedge read
//! from `.safetensors` ([`st`]), both run by [`linear`] at the backbone's patch grid and
//! upsampled to the image ([`resize`]), with the class names and colours of a head ([`palette`]).
//!
//! May depend on: `dinoedge-model` (the features a head reads). Not on the training code
//! (`dinoedge-train`, which builds on this crate) nor on the pictures (`dinoedge-render`): the
//! live runner links this crate and the pictures, never the trainer.
#![warn(missing_docs)]

pub mod linear;
pub mod palette;
pub mod pth;
pub mod resize;
pub mod st;

pub use linear::{DepthHead, DepthOutput, LinearHead, SegHead, SegOutput};
pub use palette::Palette;

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
