//! # dinoedge-kernels
//!
//! dinoedge's own CPU kernels, with no knowledge of models or graphs (as tract-linalg is to
//! tract-core): the int8 matrix product over weights packed once ([`qgemm`]: AVX2, AVX-512
//! VNNI and AMX, exact), the `f32` one ([`sgemm`]: AVX2 + FMA and AVX-512), and the loops over
//! activations — quantisers, dequantisers, softmax — compiled for each instruction set and
//! picked at run time ([`activations`]). `dinoedge-model` puts them into tract's graph as
//! operators; each kernel here is tested against its portable reference, bit for bit where the
//! arithmetic is exact.
//!
//! Depends on tract-linalg only (its thread pool), so it builds beside tract-core.
#![warn(missing_docs)]

pub mod activations;
pub mod qgemm;
pub mod sgemm;
