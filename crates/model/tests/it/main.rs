//! The integration tests, one binary (each module was once a test binary of its own; one
//! binary links the crate graph once instead of once per file).

mod cache;
mod common;
mod depth_anything;
mod dinov3;
mod errors;
mod hub_export;
mod parity_small;
mod parity_tiny;
mod preprocess;
mod quantize_script;
mod runtime;
