//! # dinoedge-train
//!
//! Heads trained on the board, on frozen backbone features: labelled folders of images with
//! class masks or depth maps ([`dataset`]), an on-disk feature cache so the backbone runs once
//! per image however many epochs follow ([`featcache`]), the trainer of linear heads
//! ([`trainer`]), fitting and evaluating a head end to end ([`fit`]), and the metrics of
//! evaluation — mIoU, depth errors, feature agreement between two backbones ([`metrics`]).
//!
//! May depend on: `dinoedge-model` (the backbone that makes the features) and `dinoedge-heads`
//! (the heads it trains and saves, whose error type it shares). Nothing the live runner links
//! depends on this crate.
#![warn(missing_docs)]

pub mod dataset;
pub mod featcache;
pub mod fit;
pub mod metrics;
pub mod trainer;

pub use dinoedge_heads::{HeadsError, Result};
