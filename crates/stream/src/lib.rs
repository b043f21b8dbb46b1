//! # dinoedge-stream
//!
//! The runner: frames from any [`dinoedge_camera`] source go through preprocessing, the
//! backbone and a head to one or more [`sink`]s, each stage on its own thread. Live sources
//! are joined to the backbone by newest-wins hand-overs (a slow stage drops old frames
//! instead of growing latency); file sources by small blocking queues (every frame is
//! processed, as fast as the backbone goes). Every stage reports its time per frame
//! ([`stats`]).
#![warn(missing_docs)]

pub mod pipeline;
pub mod sink;
pub mod stats;

pub use pipeline::{Analysis, Output, RunOptions, RunReport, run};
pub use sink::{FileSink, JsonLinesSink, Sink};
pub use stats::{Stats, StatsSnapshot};

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The source failed to open.
    #[error(transparent)]
    Source(#[from] dinoedge_camera::CameraError),
    /// The backbone failed.
    #[error(transparent)]
    Model(#[from] dinoedge_model::ModelError),
    /// A head failed.
    #[error(transparent)]
    Heads(#[from] dinoedge_heads::HeadsError),
    /// A sink failed.
    #[error("sink {name}: {reason}")]
    Sink {
        /// The sink.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = StreamError> = std::result::Result<T, E>;
