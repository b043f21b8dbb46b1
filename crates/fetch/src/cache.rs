//! Where model files live on the board.

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::error::{FetchError, Result};
use crate::manifest::{Entry, Source};

/// A file found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The model cache: `<root>/hub/` in the Hugging Face Hub's layout (`models--owner--name/
/// {blobs,snapshots,refs}`, written by `hf-hub`), and `<root>/<name>/<file>` for other
/// downloads and for files put there by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCache {
    root: PathBuf,
}

impl ModelCache {
    /// A cache at `root` (created on the first download).
    pub fn new(root: impl Into<PathBuf>) -> ModelCache {
        ModelCache { root: root.into() }
    }

    /// `$DINOEDGE_MODELS_DIR`, else `$XDG_CACHE_HOME/dinoedge/models` (`~/.cache/dinoedge/models`).
    pub fn default_root() -> Result<PathBuf> {
        std::env::var_os("DINOEDGE_MODELS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("dinoedge").join("models")))
            .ok_or(FetchError::NoCacheDir)
    }

    /// The cache at [`ModelCache::default_root`].
    pub fn at_default() -> Result<ModelCache> {
        Ok(ModelCache::new(ModelCache::default_root()?))
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the Hub's layout lives.
    pub fn hub_dir(&self) -> PathBuf {
        self.root.join("hub")
    }

    /// `<root>/<name>/<file>`: where a non-Hub download goes, and where any file of `entry` may
    /// be put by hand (it is found there first).
    pub fn by_hand_path(&self, entry: &Entry) -> PathBuf {
        self.root.join(&entry.name).join(entry.file_name())
    }

    pub(crate) fn hub_repo(source: &Source) -> Option<Repo> {
        match source {
            Source::Hub { repo, revision, .. } => Some(Repo::with_revision(
                repo.clone(),
                RepoType::Model,
                revision.clone(),
            )),
            Source::Url(_) => None,
        }
    }

    /// `<root>/hub/models--owner--name/blobs`: where the Hub's partial downloads are kept.
    pub(crate) fn hub_blobs(&self, repo: &Repo) -> PathBuf {
        self.hub_dir().join(repo.folder_name()).join("blobs")
    }

    /// The cached file of `entry`, if there is one: put there by hand, or downloaded.
    pub fn find(&self, entry: &Entry) -> Option<Cached> {
        let by_hand = self.by_hand_path(entry);
        let path = if by_hand.is_file() {
            Some(by_hand)
        } else {
            match (&entry.source, Self::hub_repo(&entry.source)) {
                (Source::Hub { file, .. }, Some(repo)) => hf_hub::Cache::new(self.hub_dir())
                    .repo(repo)
                    .get(file)
                    .filter(|p| p.is_file()),
                _ => None,
            }
        }?;
        let bytes = std::fs::metadata(&path).ok()?.len();
        Some(Cached { path, bytes })
    }
}
