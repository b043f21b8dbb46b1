//! The integration tests, one binary (each module was once a test binary of its own; one
//! binary links the crate graph once instead of once per file).

mod bin;
mod cli;
mod parity;
mod run;
