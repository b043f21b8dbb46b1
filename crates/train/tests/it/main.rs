//! The integration tests, one binary.

mod train;
