//! The compile cache: a model prepared for one (file, resolution, outputs) is saved as NNEF
//! (tract-OPL) so the next start skips ONNX parsing, type analysis and decluttering.
//!
//! What is cached is tract's *decluttered* typed model with the input fact fixed, i.e. with
//! the position-embedding interpolation already folded into constants. tract's optimised
//! (kernel-selected) form has no NNEF serialisation, so the last step, `into_optimized`,
//! runs at every start; it is the cheap one.
//!
//! Every entry has a JSON sidecar naming what it was built from — the digest of every file
//! the model reads (the `.onnx` and its external data), the versions, the options — and the
//! sha256 of the archive itself. An entry whose sidecar does not match (another dinoedge or
//! tract version, another model file or external data) is stale; one whose archive's digest
//! differs from the sidecar's (a flipped byte, a half copy), or that fails to load, is
//! corrupt: both are rebuilt and overwritten, never an error.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// tract version the cache format depends on (kept equal to the pinned dependency).
pub const TRACT_VERSION: &str = "0.23.9";
/// Cache layout version: 2 since int8 convolutions are rewritten before compiling (`conv`),
/// 3 since the key covers external data and the sidecar holds the archive's digest, 4 since a
/// per-channel dynamic-int8 file's epilogues (a scale per column) are fused before caching.
const FORMAT: u32 = 4;

/// Where compiled models are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `$DINOEDGE_CACHE_DIR`, else the user cache directory (`$XDG_CACHE_HOME/dinoedge/compiled`,
    /// `~/.cache/dinoedge/compiled` on Linux); no caching when neither can be found.
    #[default]
    Auto,
    /// This directory.
    Dir(PathBuf),
    /// Never read or write a cache.
    Off,
}

impl CacheMode {
    /// The directory this mode resolves to, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            CacheMode::Off => None,
            CacheMode::Dir(d) => Some(d.clone()),
            CacheMode::Auto => std::env::var_os("DINOEDGE_CACHE_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| dirs::cache_dir().map(|d| d.join("dinoedge").join("compiled"))),
        }
    }
}

/// What an entry was built from; stored beside it and compared on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Cache layout version.
    pub format: u32,
    /// dinoedge-model version that wrote it.
    pub dinoedge_version: String,
    /// tract version that wrote it.
    pub tract_version: String,
    /// sha256 of every file the model reads ([`model_digest`]).
    pub model_sha256: String,
    /// Everything else that shapes the compiled graph (resolution, batch, tapped outputs).
    pub options: String,
}

impl EntryMeta {
    pub(crate) fn new(model_sha256: &str, options: String) -> Self {
        EntryMeta {
            format: FORMAT,
            dinoedge_version: env!("CARGO_PKG_VERSION").to_string(),
            tract_version: TRACT_VERSION.to_string(),
            model_sha256: model_sha256.to_string(),
            options,
        }
    }

    /// The entry's file stem: a hash of all fields.
    pub fn key(&self) -> String {
        let json = serde_json::to_string(self).expect("plain struct serialises");
        hex(&Sha256::digest(json.as_bytes()))[..32].to_string()
    }
}

/// The sidecar's contents: what the entry was built from, and its archive's digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    #[serde(flatten)]
    meta: EntryMeta,
    /// sha256 of the `.nnef.tar` as written.
    archive_sha256: String,
}

/// One cache entry's files.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The NNEF archive.
    pub model: PathBuf,
    /// The JSON sidecar.
    pub meta: PathBuf,
}

impl Entry {
    pub(crate) fn new(dir: &Path, meta: &EntryMeta) -> Self {
        let key = meta.key();
        Entry {
            model: dir.join(format!("{key}.nnef.tar")),
            meta: dir.join(format!("{key}.json")),
        }
    }

    /// Whether the entry exists and its sidecar matches `expected`. Anything else (missing,
    /// unreadable, another version) means it must be rebuilt.
    pub(crate) fn check(&self, expected: &EntryMeta) -> std::result::Result<(), String> {
        if !self.model.is_file() {
            return Err("no entry".into());
        }
        let text =
            std::fs::read_to_string(&self.meta).map_err(|e| format!("sidecar unreadable: {e}"))?;
        let found: Sidecar =
            serde_json::from_str(&text).map_err(|e| format!("sidecar corrupt: {e}"))?;
        if &found.meta != expected {
            let found = found.meta;
            return Err(format!(
                "stale (built by dinoedge {} / tract {} for {})",
                found.dinoedge_version, found.tract_version, found.options
            ));
        }
        let digest = sha256_file(&self.model).map_err(|e| format!("unreadable: {e}"))?;
        if digest != found.archive_sha256 {
            return Err("corrupt (its archive's sha256 is not the one written)".into());
        }
        Ok(())
    }

    /// Write the archive and sidecar atomically (temporary file, then rename), so a crash or
    /// a concurrent start never leaves a half-written entry under the final name.
    pub(crate) fn store(
        &self,
        meta: &EntryMeta,
        write: impl FnOnce(&mut std::fs::File) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let dir = self.model.parent().unwrap_or(Path::new("."));
        let cache_err = |reason: String| ModelError::Cache {
            path: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| cache_err(format!("cannot create: {e}")))?;
        let mut tmp = tempfile_in(dir).map_err(|e| cache_err(format!("cannot write: {e}")))?;
        let written = write(&mut tmp.1).map_err(cache_err).and_then(|()| {
            tmp.1.sync_all().ok();
            sha256_file(&tmp.0)
        });
        let archive_sha256 = match written {
            Ok(digest) => digest,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp.0);
                return Err(e);
            }
        };
        std::fs::rename(&tmp.0, &self.model).map_err(|e| cache_err(format!("rename: {e}")))?;
        let sidecar = Sidecar {
            meta: meta.clone(),
            archive_sha256,
        };
        let json = serde_json::to_string_pretty(&sidecar).expect("plain struct serialises");
        let meta_tmp = self.meta.with_extension("json.tmp");
        std::fs::write(&meta_tmp, json)
            .and_then(|_| std::fs::rename(&meta_tmp, &self.meta))
            .map_err(|e| cache_err(format!("sidecar: {e}")))?;
        Ok(())
    }

    /// Remove both files (after a failed load).
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.model);
        let _ = std::fs::remove_file(&self.meta);
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(".tmp-{pid}-{nanos}.nnef.tar"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

/// The external data files a model's tensors name (`location`, relative to the model's
/// directory), sorted, each once; a missing one is [`ModelError::MissingExternalData`].
pub fn external_data(path: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<Vec<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut locations: Vec<&str> = proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .flat_map(|t| &t.external_data)
        .filter(|kv| kv.key == "location")
        .map(|kv| kv.value.as_str())
        .collect();
    locations.sort_unstable();
    locations.dedup();
    locations
        .into_iter()
        .map(|location| {
            let data = dir.join(location);
            if data.is_file() {
                Ok(data)
            } else {
                Err(ModelError::MissingExternalData {
                    model: path.to_owned(),
                    data,
                })
            }
        })
        .collect()
}

/// The digest a model is cached under: sha256 over the ONNX file's sha256 and each external
/// data file's name and sha256 ([`external_data`]).
pub fn model_digest(path: &Path, external: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(sha256_file(path)?.as_bytes());
    for data in external {
        hasher.update(b"\0");
        hasher.update(data.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(sha256_file(data)?.as_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|error| ModelError::Io {
        path: path.to_owned(),
        error,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|error| ModelError::Io {
            path: path.to_owned(),
            error,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_field() {
        let a = EntryMeta::new("abc", "224x224".into());
        let mut b = a.clone();
        b.options = "308x448".into();
        let mut c = a.clone();
        c.tract_version = "0.0.0".into();
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_eq!(a.key(), EntryMeta::new("abc", "224x224".into()).key());
    }

    #[test]
    fn stale_and_corrupt_sidecars_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EntryMeta::new("abc", "x".into());
        let entry = Entry::new(dir.path(), &meta);
        assert!(entry.check(&meta).is_err());
        entry.store(&meta, |_| Ok(())).unwrap();
        assert!(entry.check(&meta).is_ok());
        let mut other = meta.clone();
        other.dinoedge_version = "9.9.9".into();
        assert!(entry.check(&other).unwrap_err().contains("stale"));
        std::fs::write(&entry.meta, "{").unwrap();
        assert!(entry.check(&meta).unwrap_err().contains("corrupt"));
    }

    #[test]
    fn file_hash_is_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
