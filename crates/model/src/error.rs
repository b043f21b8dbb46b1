//! Typed errors of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading a DINOv2 model or extracting features.
///
/// Every variant carries enough context (paths, sizes, what was expected) to be shown to a
/// user as is.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file does not exist.
    #[error("model file not found: {}", path.display())]
    NotFound {
        /// The path that was asked for.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    /// (The OS error is in the message, and not also given as `source()`: a chain printer
    /// would say it twice.)
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The model keeps its weights in an external data file that is not there.
    #[error("{} keeps its weights in {}, which is missing: put it beside the model (a download of the model includes it)", model.display(), data.display())]
    MissingExternalData {
        /// The ONNX file.
        model: PathBuf,
        /// The external data file it names.
        data: PathBuf,
    },
    /// The bytes are not a valid ONNX protobuf (truncated download, wrong file, corruption).
    #[error("{} is not a readable ONNX model ({reason}); is the file truncated or corrupt? Re-download it", path.display())]
    InvalidOnnx {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A valid ONNX model, but not a DINOv2 vision transformer.
    #[error("{} is not a DINOv2 model: {reason}", path.display())]
    NotDinov2 {
        /// The file.
        path: PathBuf,
        /// Which part of the DINOv2 structure is missing.
        reason: String,
    },
    /// The requested input resolution cannot be used with this model.
    #[error("input size {height}x{width} is not valid: {reason}")]
    InvalidResolution {
        /// Requested height.
        height: u32,
        /// Requested width.
        width: u32,
        /// Why, and which sizes would work.
        reason: String,
    },
    /// A size string such as `224x224` could not be parsed.
    #[error(
        "cannot parse size {text:?}: expected HEIGHTxWIDTH (e.g. 224x224, 308x448) or one number for a square"
    )]
    ParseResolution {
        /// The text given.
        text: String,
    },
    /// A request that contradicts the model (a block it does not have, a batch of 0, …).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// `config.json` or `preprocessor_config.json` beside the model is malformed.
    #[error("cannot use {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An input tensor or image of the wrong shape was given to a loaded model.
    #[error("wrong input: {0}")]
    Input(String),
    /// An image file could not be decoded.
    #[error("cannot decode image {}: {reason}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The compile cache could not be written (reading problems are recovered from by
    /// recompiling, never reported as errors).
    #[error("compile cache {}: {reason}", path.display())]
    Cache {
        /// The cache file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The CUDA runtime was asked for, but this binary was built without it.
    #[error(
        "runtime `cuda`: this dinoedge was built without CUDA; rebuild it with `--features cuda`, or run on the CPU (runtime `cpu`, or `cuda-or-cpu` to use a GPU only where there is one)"
    )]
    CudaNotBuilt,
    /// The CUDA runtime was asked for, but there is no usable NVIDIA GPU here.
    #[error(
        "runtime `cuda`: no usable NVIDIA GPU here: {reason}\nRun on the CPU instead with runtime `cpu`, or `cuda-or-cpu` to fall back to it by itself"
    )]
    CudaUnavailable {
        /// What tract-cuda found missing (driver library, device, version, a library).
        reason: String,
    },
    /// tract failed while analysing, optimising or running the graph.
    #[error("tract could not {stage}: {message}")]
    Tract {
        /// What dinoedge was doing.
        stage: &'static str,
        /// tract's error chain.
        message: String,
    },
}

impl ModelError {
    pub(crate) fn tract(stage: &'static str, err: tract_core::prelude::TractError) -> Self {
        ModelError::Tract {
            stage,
            message: format!("{err:#}"),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
