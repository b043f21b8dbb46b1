//! # dinoedge-model
//!
//! DINOv2 on [tract](https://github.com/sonos/tract): load the ONNX files people actually
//! have (Hugging Face exports in fp32, dynamic int8 and QDQ int8, with or without register
//! tokens), fix the input resolution at load time, preprocess RGB images, and extract dense
//! features — the CLS token, register tokens, the `[h, w, D]` patch grid, intermediate
//! blocks and the last block's attention. Depth Anything V2 files (the same encoder with a DPT
//! depth head in the file, found by structure in [`graph`]) load the same way and add the depth
//! map to the features ([`Features::depth`]; relative or metric as [`ModelInfo::depth`] says).
//!
//! Depends on no other dinoedge crate but its kernels (`dinoedge-kernels`); everything else
//! builds on it. Where the CPU allows, the weight products run on dinoedge's own kernels
//! (`dinoedge_kernels::qgemm` and `sgemm`, swapped in by [`qmatmul`]), each block's attention
//! as one fused operator ([`attention`]; int8 in an int8 file), every LayerNorm as one operator
//! ([`layer_norm`]), image resizes a plane at a time ([`resize`]), and the MLPs' exact GELU and
//! the u8 → i8 offset in front of tract's int8 products as dinoedge loops ([`element_wise`]); the
//! rest of the graph on tract's.
//!
//! ```no_run
//! use dinoedge_model::{Backbone, BackboneOptions, Resolution, ResizeMode, load_rgb};
//! # fn main() -> Result<(), dinoedge_model::ModelError> {
//! let options = BackboneOptions {
//!     resolution: Some(Resolution::new(308, 448)),
//!     blocks: vec![8, 11],
//!     attention: true,
//!     ..Default::default()
//! };
//! let mut backbone = Backbone::load("dinov2-small/onnx/model.onnx", &options)?;
//! let mut pre = backbone.preprocessor(ResizeMode::Stretch)?;
//! let features = backbone.run_image(&mut pre, &load_rgb("photo.jpg".as_ref())?)?;
//! assert_eq!(features.patches().dim(), (22, 32, 384));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod attention;
mod awake;
pub mod backbone;
pub mod cache;
pub mod config;
pub mod conv;
pub mod element_wise;
pub mod error;
pub mod features;
pub mod graph;
pub mod layer_norm;
mod nnef;
pub mod ops;
pub mod preprocess;
pub mod qdq;
pub mod qmatmul;
pub mod resize;
pub mod resolution;
pub mod rotary;
pub mod runtime;

pub use backbone::{Backbone, BackboneOptions, LoadReport, LoadSource, ModelInfo, OpProfile};
pub use cache::CacheMode;
pub use config::DepthConfig;
pub use dinoedge_kernels::qgemm::Sums as Int8Sums;
pub use error::{ModelError, Result};
pub use features::{BlockFeatures, Features, TokenLayout, Tokens};
pub use graph::{DepthHead, Family, GraphInfo, Precision};
pub use preprocess::{Normalization, Placement, Preprocessor, ResizeMode, load_rgb};
pub use resolution::Resolution;
pub use runtime::{CUDA_BUILT, CudaStatus, Runtime, cuda_status};
