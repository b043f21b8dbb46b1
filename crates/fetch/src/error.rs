//! What can go wrong getting a model.

use std::path::PathBuf;

/// Errors of this crate. Each names the file and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The manifest does not parse or an entry is inconsistent.
    #[error("manifest {origin}: {reason}")]
    Manifest {
        /// Which manifest (`built-in` or a path).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// No entry of that name.
    #[error("no model called {name:?}; known: {known}")]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The server has no such file.
    #[error("{url}: not found (HTTP 404); the manifest entry {name:?} may be out of date")]
    NotFound {
        /// Entry name.
        name: String,
        /// The address asked.
        url: String,
    },
    /// The server answered with another error status.
    #[error("{url}: HTTP {status}{hint}")]
    Http {
        /// The address asked.
        url: String,
        /// HTTP status.
        status: u16,
        /// What to do about it (a token for gated repositories), or nothing.
        hint: String,
    },
    /// The server could not be reached (offline, DNS, refused).
    #[error(
        "cannot reach {url} ({reason}). Offline? Download that file by hand and put it at {by_hand}; \
         dinoedge uses it from there"
    )]
    Offline {
        /// The address asked.
        url: String,
        /// The network error.
        reason: String,
        /// Where the file may be put by hand.
        by_hand: PathBuf,
    },
    /// No data for longer than the timeout.
    #[error(
        "{url}: no data for {seconds} s, gave up; what arrived is kept in {partial} and the next \
         `dinoedge fetch` resumes from there"
    )]
    Stalled {
        /// The address asked.
        url: String,
        /// The timeout.
        seconds: u64,
        /// The partial file (or its directory).
        partial: PathBuf,
    },
    /// The connection ended before the whole file arrived.
    #[error(
        "{url}: the download broke off after {got} of {total} bytes ({reason}); what arrived is kept in \
         {partial} and the next `dinoedge fetch` resumes from there"
    )]
    Interrupted {
        /// The address asked.
        url: String,
        /// Bytes on disk.
        got: u64,
        /// Bytes expected (0: unknown).
        total: u64,
        /// The transport's words.
        reason: String,
        /// The partial file.
        partial: PathBuf,
    },
    /// The file arrived but is not the published one.
    #[error(
        "{name}: sha256 mismatch: expected {expected}, got {got}; the file was deleted ({path}). \
         Run `dinoedge fetch {name}` again; if it repeats, the source or the manifest changed"
    )]
    Checksum {
        /// Entry name.
        name: String,
        /// The published digest.
        expected: String,
        /// The digest of what arrived.
        got: String,
        /// The deleted file.
        path: PathBuf,
    },
    /// The file arrived with a size other than the published one.
    #[error("{name}: {got} bytes, expected {expected}; the file was deleted ({path})")]
    Size {
        /// Entry name.
        name: String,
        /// Published size.
        expected: u64,
        /// Size that arrived.
        got: u64,
        /// The deleted file.
        path: PathBuf,
    },
    /// Another process is downloading the same file.
    #[error("{0} is being downloaded by another process (its lock is held)")]
    Locked(PathBuf),
    /// No cache directory could be found.
    #[error("no cache directory: set DINOEDGE_MODELS_DIR or pass --cache-dir")]
    NoCacheDir,
    /// A file operation failed.
    /// (The error is in the message, and not also given as `source()`.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The Hugging Face client failed in another way.
    #[error("{url}: {reason}")]
    Hub {
        /// The address asked.
        url: String,
        /// hf-hub's words.
        reason: String,
    },
}

/// This crate's result.
pub type Result<T, E = FetchError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |error| FetchError::Io {
        path: path.to_owned(),
        error,
    }
}
