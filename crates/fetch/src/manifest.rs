//! `models/manifest.toml`: names, sources, sizes and digests of the files dinoedge knows.

use std::path::Path;

use serde::Deserialize;

use crate::error::{FetchError, Result};

/// The manifest built into dinoedge.
pub const BUILTIN: &str = include_str!("../../../models/manifest.toml");

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A DINOv2 backbone (ONNX).
    Backbone,
    /// A head checkpoint (`.pth`, `.safetensors`).
    Head,
}

/// Where a file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file in a Hugging Face model repository.
    Hub {
        /// `owner/name`.
        repo: String,
        /// Path inside the repository.
        file: String,
        /// Branch, tag or commit.
        revision: String,
    },
    /// Any other address.
    Url(String),
}

/// One file dinoedge knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Short name (`vits14-int8`).
    pub name: String,
    /// Backbone or head.
    pub kind: Kind,
    /// One line for people.
    pub description: String,
    /// Where it comes from.
    pub source: Source,
    /// Published size in bytes.
    pub size: Option<u64>,
    /// Published sha256, lower-case hex.
    pub sha256: Option<String>,
    /// For heads: the backbone it was trained on.
    pub backbone: Option<String>,
    /// Small files of the same Hub repository fetched with it (`config.json`,
    /// `preprocessor_config.json`: dinoedge reads them one directory above `onnx/model.onnx`).
    pub also: Vec<String>,
}

impl Entry {
    /// The file's name (last path component of its source).
    pub fn file_name(&self) -> &str {
        let path = match &self.source {
            Source::Hub { file, .. } => file.as_str(),
            Source::Url(u) => u.split(['?', '#']).next().unwrap_or(u),
        };
        path.rsplit('/').next().unwrap_or(path)
    }

    /// The address the file is downloaded from (`endpoint` for Hub files).
    pub fn url(&self, endpoint: &str) -> String {
        match &self.source {
            Source::Hub {
                repo,
                file,
                revision,
            } => format!(
                "{}/{repo}/resolve/{revision}/{file}",
                endpoint.trim_end_matches('/')
            ),
            Source::Url(u) => u.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    kind: Kind,
    description: String,
    hub: Option<String>,
    file: Option<String>,
    revision: Option<String>,
    url: Option<String>,
    size: Option<u64>,
    sha256: Option<String>,
    backbone: Option<String>,
    #[serde(default)]
    also: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    model: Vec<RawEntry>,
}

/// The known files, in manifest order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Entries; names are unique.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The built-in manifest.
    pub fn builtin() -> Manifest {
        Manifest::parse(BUILTIN, "built-in").expect("the built-in manifest parses (tested)")
    }

    /// Parse manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest> {
        let err = |reason: String| FetchError::Manifest {
            origin: origin.to_string(),
            reason,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut entries: Vec<Entry> = Vec::new();
        for r in raw.model {
            let at = format!("entry {:?}", r.name);
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(format!(
                    "{at}: a name is letters, digits, '-', '_' and '.'"
                )));
            }
            if entries.iter().any(|e| e.name == r.name) {
                return Err(err(format!("{at}: the name is used twice")));
            }
            let source = match (r.hub, r.file, r.url) {
                (Some(repo), Some(file), None) => {
                    if repo.split('/').count() != 2 || file.is_empty() {
                        return Err(err(format!(
                            "{at}: hub = \"owner/name\" and a file path inside it"
                        )));
                    }
                    Source::Hub {
                        repo,
                        file,
                        revision: r.revision.unwrap_or_else(|| "main".into()),
                    }
                }
                (None, None, Some(url)) => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(err(format!("{at}: url must be http(s)://…")));
                    }
                    if r.revision.is_some() {
                        return Err(err(format!("{at}: revision only goes with hub")));
                    }
                    Source::Url(url)
                }
                _ => {
                    return Err(err(format!(
                        "{at}: give either hub + file or url (exactly one source)"
                    )));
                }
            };
            let sha256 = match r.sha256 {
                Some(s) => {
                    let s = s.to_ascii_lowercase();
                    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(err(format!("{at}: sha256 is 64 hex digits")));
                    }
                    Some(s)
                }
                None => None,
            };
            if !r.also.is_empty() && !matches!(source, Source::Hub { .. }) {
                return Err(err(format!("{at}: also only goes with hub")));
            }
            if r.backbone.is_some() && r.kind != Kind::Head {
                return Err(err(format!("{at}: only heads name a backbone")));
            }
            entries.push(Entry {
                name: r.name,
                kind: r.kind,
                description: r.description,
                source,
                size: r.size,
                sha256,
                backbone: r.backbone,
                also: r.also,
            });
        }
        Ok(Manifest { entries })
    }

    /// The built-in manifest with the entries of `path` added (same name: replaced).
    pub fn with_file(mut self, path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        let extra = Manifest::parse(&text, &path.display().to_string())?;
        for e in extra.entries {
            match self.entries.iter_mut().find(|x| x.name == e.name) {
                Some(slot) => *slot = e,
                None => self.entries.push(e),
            }
        }
        Ok(self)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| FetchError::UnknownName {
                name: name.to_string(),
                known: self
                    .entries
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_manifest_parses_and_covers_the_issue() {
        let m = Manifest::builtin();
        for name in [
            "vits14",
            "vits14-int8",
            "vits14-reg",
            "vits14-reg-int8",
            "vitb14",
            "vitb14-int8",
            "vitb14-reg",
            "vitb14-reg-int8",
            "vits14-voc2012-linear",
            "vits14-ade20k-linear",
            "vits14-nyu-linear",
            "vits14-kitti-linear",
            "da2-small",
            "da2-small-int8",
            "da2-small-uint8",
            "v3-vits16",
            "v3-vits16-int8",
            "v3-vits16-uint8",
            "v3-vits16plus",
            "v3-vitb16",
            "v3-vitb16-int8",
        ] {
            m.get(name).unwrap();
        }
        for e in &m.entries {
            assert!(!e.description.is_empty());
            match e.kind {
                Kind::Backbone => {
                    assert!(matches!(e.source, Source::Hub { .. }));
                    // the configs, and the weights of an fp32 file that keeps them outside
                    let configs = &e.also[e.also.len().saturating_sub(2)..];
                    assert_eq!(configs, ["config.json", "preprocessor_config.json"]);
                    if e.also.len() > 2 {
                        assert!(e.also[0].ends_with(&format!("{}_data", e.file_name())));
                    }
                }
                Kind::Head => {
                    let bb = e.backbone.as_deref().expect("heads name their backbone");
                    assert_eq!(m.get(bb).unwrap().kind, Kind::Backbone);
                    assert!(e.file_name().ends_with(".pth"));
                }
            }
        }
        // the published sizes (fixtures README)
        assert_eq!(m.get("vits14-ade20k-linear").unwrap().size, Some(719_673));
        assert_eq!(m.get("vits14-nyu-linear").unwrap().size, Some(2_367_211));
        assert_eq!(
            m.get("vits14-int8").unwrap().url("https://huggingface.co/"),
            "https://huggingface.co/onnx-community/dinov2-small/resolve/main/onnx/model_int8.onnx"
        );
        assert_eq!(m.get("vits14-int8").unwrap().file_name(), "model_int8.onnx");
        assert_eq!(
            m.get("da2-small-int8")
                .unwrap()
                .url("https://huggingface.co/"),
            "https://huggingface.co/onnx-community/depth-anything-v2-small/resolve/main/onnx/model_int8.onnx"
        );
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let cases = [
            (
                "[[model]]\nname = \"a\"\nkind = \"backbone\"\ndescription = \"x\"\n",
                "exactly one source",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"backbone\"\ndescription = \"x\"\nurl = \"https://x/a\"\nhub = \"o/r\"\nfile = \"f\"\n",
                "exactly one source",
            ),
            (
                "[[model]]\nname = \"a b\"\nkind = \"head\"\ndescription = \"x\"\nurl = \"https://x/a\"\n",
                "a name is",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"head\"\ndescription = \"x\"\nurl = \"https://x/a\"\nsha256 = \"abc\"\n",
                "64 hex",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"thing\"\ndescription = \"x\"\nurl = \"https://x/a\"\n",
                "unknown variant",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"head\"\ndescription = \"x\"\nurl = \"ftp://x/a\"\n",
                "http",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"head\"\ndescription = \"x\"\nurl = \"https://x/a\"\ncolour = 1\n",
                "unknown field",
            ),
            (
                "[[model]]\nname = \"a\"\nkind = \"head\"\ndescription = \"x\"\nurl = \"https://x/a\"\n[[model]]\nname = \"a\"\nkind = \"head\"\ndescription = \"y\"\nurl = \"https://x/b\"\n",
                "used twice",
            ),
        ];
        for (text, want) in cases {
            let e = Manifest::parse(text, "test.toml").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("test.toml"), "{e}");
        }
        let e = Manifest::builtin().get("vits15").unwrap_err().to_string();
        assert!(e.contains("vits14-int8"), "{e}");
    }
}
