//! # dinoedge-stream
//!
//! The runner: frames from any [`dinoedge_camera`] source go through preprocessing, the
//! backbone and a head to one or more [`sink`]s, each stage on its own thread. Live sources
//! are joined to the backbone by newest-wins hand-overs (a slow stage drops old frames
//! instead of growing latency); file sources by small blocking queues (every frame is
//! processed, as fast as the backbone goes). Every stage reports its time per frame
//! ([`stats`]).
//!
//! Sinks: files ([`FileSink`]), JSON lines ([`JsonLinesSink`]), MCAP recordings with
//! Foxglove schemas ([`McapSink`]) and a live view in the browser ([`HttpSink`]).
//!
//! Depends on every crate of the live path — model, heads, render, camera, board — and on
//! none of the training code (`dinoedge-train`), so a board's runner does not link it.
#![warn(missing_docs)]

pub mod gpio_sink;
pub mod http;
pub mod mcap_sink;
pub mod pipeline;
pub mod points;
pub mod region;
pub mod render;
pub mod result;
pub mod sink;
pub mod sink_spec;
pub mod stats;

pub use gpio_sink::GpioSink;
pub use http::HttpSink;
pub use mcap_sink::McapSink;
pub use pipeline::{Analysis, Cadence, RunOptions, RunReport, run};
pub use region::Region;
pub use render::View;
pub use result::{Analysed, FrameResult, Output};
pub use sink::{FileSink, JsonLinesSink, PictureFormat, Sink};
pub use sink_spec::{DEFAULT_LISTEN, SinkContext, SinkSpec};
pub use stats::{BoardSnapshot, SharedStats, SinkState, StatsSnapshot};

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
    /// Drawing a result failed.
    #[error(transparent)]
    Render(#[from] dinoedge_render::RenderError),
    /// A `--sink` specification is malformed.
    #[error("sink `{spec}`: {reason}")]
    InvalidSink {
        /// The specification as given.
        spec: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A sink failed.
    #[error("sink {name}: {reason}")]
    Sink {
        /// The sink.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A stage of the run stopped on an internal error (a panic, caught): the run ends with
    /// it, every sink closed.
    #[error("the {stage} stage stopped on an internal error: {reason} (please report it)")]
    Internal {
        /// The stage: source, backbone, head or a sink's name.
        stage: String,
        /// The panic's message.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = StreamError> = std::result::Result<T, E>;
