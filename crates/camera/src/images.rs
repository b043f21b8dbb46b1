//! Image files as frames: one file, a directory, or a glob pattern, in natural,
//! case-insensitive order (`frame2.png` before `frame10.png`).

use std::path::{Path, PathBuf};

use crate::error::{CameraError, Result};
use crate::frame::{Frame, FrameSource, SourceInfo};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A list of image files delivered one frame each.
pub struct ImageFiles {
    paths: Vec<PathBuf>,
    next: usize,
    seq: u64,
    what: String,
}

impl ImageFiles {
    /// These files, in this order.
    pub fn new(paths: Vec<PathBuf>, what: impl Into<String>) -> Self {
        ImageFiles {
            paths,
            next: 0,
            seq: 0,
            what: what.into(),
        }
    }

    /// The image files in `dir` (not recursing), in natural order.
    pub fn dir(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CameraError::NotFound(dir.to_owned()),
            _ => CameraError::io(dir.display().to_string(), e),
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CameraError::io(dir.display().to_string(), e))?;
            let path = entry.path();
            if path.is_file() && is_image_path(&path) {
                paths.push(path);
            }
        }
        Self::sorted(paths, dir.display().to_string())
    }

    /// The image files matching a glob pattern (`frames/*.jpg`), in natural order.
    pub fn glob(pattern: &str) -> Result<Self> {
        let entries = glob::glob(pattern)
            .map_err(|e| CameraError::bad_uri(pattern, format!("bad glob pattern: {e}")))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| CameraError::io(pattern.to_owned(), e.into()))?;
            if path.is_file() && is_image_path(&path) {
                paths.push(path);
            }
        }
        Self::sorted(paths, pattern.to_owned())
    }

    fn sorted(mut paths: Vec<PathBuf>, what: String) -> Result<Self> {
        if paths.is_empty() {
            return Err(CameraError::NoImages {
                what,
                extensions: IMAGE_EXTENSIONS.join(", "),
            });
        }
        // natural and case-insensitive, as file managers show them
        paths.sort_by(|a, b| {
            alphanumeric_sort::compare_str(
                a.to_string_lossy().to_lowercase(),
                b.to_string_lossy().to_lowercase(),
            )
        });
        Ok(Self::new(paths, what))
    }

    /// The files, in delivery order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl FrameSource for ImageFiles {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.paths.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        // A bad file is reported and skipped: the next call reads the next file.
        let loaded = dinoedge_imagefile::load(path).map_err(|e| match e {
            dinoedge_imagefile::ImageFileError::NotFound(p) => CameraError::NotFound(p),
            dinoedge_imagefile::ImageFileError::Io { path, error } => {
                CameraError::io(path.display().to_string(), error)
            }
            dinoedge_imagefile::ImageFileError::Decode { path, reason } => {
                CameraError::decode(path.display().to_string(), reason)
            }
        })?;
        if let Some(damage) = &loaded.damage {
            tracing::warn!("{}: {damage}", path.display());
        }
        let img = loaded.image;
        let (w, h) = img.dimensions();
        let frame = Frame::new(img.into_raw(), w, h, self.seq);
        self.seq += 1;
        Ok(Some(frame))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "images",
            description: format!("{} ({} files)", self.what, self.paths.len()),
            size: None,
            fps: None,
            live: false,
        }
    }
}
