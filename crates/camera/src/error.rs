//! The camera crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong opening or reading a frame source.
///
/// A source returns these as values; none of them is a panic. After an error the caller
/// may ask the source for the next frame again: a source that cannot go on returns
/// `Ok(None)` from then on (see [`crate::FrameSource`]).
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The source URI could not be understood.
    #[error("bad source `{uri}`: {reason}")]
    BadUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory named by the source does not exist.
    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    /// A directory or glob matched no image files.
    #[error("no image files in {what} (looked for {extensions})")]
    NoImages {
        /// The directory or pattern.
        what: String,
        /// The extensions that count as images.
        extensions: String,
    },
    /// Reading from a file, pipe or device failed.
    /// (The underlying error is in the message, and not also given as `source()`.)
    #[error("{what}: {error}")]
    Io {
        /// What was being read.
        what: String,
        /// The underlying error.
        error: std::io::Error,
    },
    /// An image or frame could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// The file or frame.
        what: String,
        /// The decoder's message.
        reason: String,
    },
    /// A file ended in the middle of a frame; the frames before it were delivered.
    #[error("{what} is truncated: {reason}")]
    Truncated {
        /// The file or stream.
        what: String,
        /// Where it was cut.
        reason: String,
    },
    /// The data is in a layout or pixel format this reader does not handle.
    #[error("{what}: unsupported {reason}")]
    Unsupported {
        /// The file or device.
        what: String,
        /// What is not supported.
        reason: String,
    },
    /// A helper program (ffmpeg, rpicam-vid) is not installed.
    #[error("`{program}` was not found on PATH: {hint}")]
    ProgramMissing {
        /// The program looked for.
        program: String,
        /// How to get it.
        hint: String,
    },
    /// A helper program exited: the camera or stream behind it is gone.
    #[error("`{program}` exited ({status}){}", stderr_suffix(.stderr))]
    ChildExited {
        /// The program.
        program: String,
        /// Its exit status, as text.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// A camera device could not be opened or stopped delivering frames.
    #[error("camera {device}: {reason}")]
    Device {
        /// The device (path or index).
        device: String,
        /// What went wrong, including the devices that were found when opening failed.
        reason: String,
    },
    /// This build has no support for the requested kind of source.
    #[error("{0}")]
    NotBuilt(String),
    /// A reconnecting source gave up after its retry limit.
    #[error("{what}: gave up after {attempts} attempts to reopen: {last}")]
    GaveUp {
        /// The source.
        what: String,
        /// How many reopen attempts were made.
        attempts: u32,
        /// The last error.
        last: Box<CameraError>,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = CameraError> = std::result::Result<T, E>;

impl CameraError {
    pub(crate) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        CameraError::Io {
            what: what.into(),
            error,
        }
    }

    pub(crate) fn bad_uri(uri: &str, reason: impl Into<String>) -> Self {
        CameraError::BadUri {
            uri: uri.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode(what: impl Into<String>, reason: impl ToString) -> Self {
        CameraError::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
