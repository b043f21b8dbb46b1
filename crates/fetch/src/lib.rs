//! The model files dinoedge knows, and getting them onto a board.
//!
//! - [`Manifest`]: `models/manifest.toml` (built in), plus the user's own entries.
//! - [`ModelCache`]: where files live: `$DINOEDGE_MODELS_DIR`, else the XDG cache
//!   (`~/.cache/dinoedge/models`). Hugging Face files in the Hub's own cache layout (through
//!   `hf-hub`), other files as `<name>/<file>`; a file put at `<name>/<file>` by hand is used too.
//! - [`fetch`]: download one entry with progress, resume of an interrupted download, a stall
//!   timeout and sha256 verification (a mismatch deletes the file).
//!
//! Depends on no other dinoedge crate: it knows files and names, not what is in them.

mod cache;
mod download;
mod error;
mod manifest;

pub use cache::{Cached, ModelCache};
pub use download::{FetchOptions, Fetched, Progress, fetch, hub_token, sha256_file};
pub use error::{FetchError, Result};
pub use manifest::{Entry, Kind, Manifest, Source};
