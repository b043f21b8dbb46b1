//! The Hugging Face `config.json` and `preprocessor_config.json` that sit beside an ONNX export.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The fields of a Hugging Face `Dinov2Config` / `Dinov2WithRegistersConfig` dinoedge uses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HfConfig {
    /// `dinov2` or `dinov2_with_registers`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Token width D (384 for ViT-S).
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Patch size in pixels (14).
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Training resolution; the position grid is `image_size / patch_size` wide (518 → 37).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Register tokens (0 for plain DINOv2).
    #[serde(default)]
    pub num_register_tokens: usize,
    /// LayerNorm epsilon.
    #[serde(default)]
    pub layer_norm_eps: Option<f64>,
}

fn default_patch() -> usize {
    14
}

/// A size as the Hugging Face image processors write it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum HfSize {
    /// `{"shortest_edge": 256}`
    ShortestEdge {
        /// Length of the shorter side after resizing.
        shortest_edge: u32,
    },
    /// `{"height": 224, "width": 224}`
    HeightWidth {
        /// Height.
        height: u32,
        /// Width.
        width: u32,
    },
    /// A bare number: a square.
    Square(u32),
}

/// The fields of a Hugging Face `BitImageProcessor` config dinoedge uses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PreprocessorConfig {
    /// Resize target before cropping.
    #[serde(default)]
    pub size: Option<HfSize>,
    /// Centre-crop size.
    #[serde(default)]
    pub crop_size: Option<HfSize>,
    /// Whether the processor centre-crops.
    #[serde(default)]
    pub do_center_crop: Option<bool>,
    /// Whether the processor normalises.
    #[serde(default)]
    pub do_normalize: Option<bool>,
    /// Per-channel mean (0..1 scale).
    #[serde(default)]
    pub image_mean: Option<[f32; 3]>,
    /// Per-channel standard deviation (0..1 scale).
    #[serde(default)]
    pub image_std: Option<[f32; 3]>,
}

impl PreprocessorConfig {
    /// The fraction of the resized image the centre crop keeps (224/256 = 0.875 for DINOv2),
    /// when the config describes a shortest-edge resize followed by a crop.
    pub fn crop_fraction(&self) -> Option<f32> {
        if self.do_center_crop == Some(false) {
            return None;
        }
        let resize = match self.size.as_ref()? {
            HfSize::ShortestEdge { shortest_edge } => *shortest_edge,
            HfSize::Square(s) => *s,
            HfSize::HeightWidth { .. } => return None,
        };
        let crop = match self.crop_size.as_ref()? {
            HfSize::HeightWidth { height, width } => (*height).min(*width),
            HfSize::Square(s) => *s,
            HfSize::ShortestEdge { shortest_edge } => *shortest_edge,
        };
        (resize > 0 && crop <= resize).then(|| crop as f32 / resize as f32)
    }

    /// The crop size as (height, width), if any.
    pub fn crop_hw(&self) -> Option<(u32, u32)> {
        match self.crop_size.as_ref()? {
            HfSize::HeightWidth { height, width } => Some((*height, *width)),
            HfSize::Square(s) => Some((*s, *s)),
            HfSize::ShortestEdge { shortest_edge } => Some((*shortest_edge, *shortest_edge)),
        }
    }
}

/// Both configs found beside a model file, with where they came from.
#[derive(Debug, Clone, Default)]
pub struct ModelConfigs {
    /// `config.json`, if found.
    pub model: Option<(PathBuf, HfConfig)>,
    /// `preprocessor_config.json`, if found.
    pub preprocessor: Option<(PathBuf, PreprocessorConfig)>,
}

impl ModelConfigs {
    /// Look for the configs beside `model_path`, then in its parent directory (the Hugging
    /// Face layout keeps ONNX files in `onnx/` below the configs). Missing files are fine;
    /// malformed ones are an error.
    pub fn find(model_path: &Path) -> Result<Self> {
        let mut out = ModelConfigs::default();
        let dir = model_path.parent().unwrap_or(Path::new("."));
        let candidates = [Some(dir), dir.parent()];
        for d in candidates.into_iter().flatten() {
            if out.model.is_none() {
                let p = d.join("config.json");
                if p.is_file() {
                    out.model = Some((p.clone(), read_json(&p)?));
                }
            }
            if out.preprocessor.is_none() {
                let p = d.join("preprocessor_config.json");
                if p.is_file() {
                    out.preprocessor = Some((p.clone(), read_json(&p)?));
                }
            }
        }
        Ok(out)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dinov2_preprocessor_crop_fraction() {
        let c: PreprocessorConfig = serde_json::from_str(
            r#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                "do_center_crop": true, "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225]}"#,
        )
        .unwrap();
        assert_eq!(c.crop_fraction(), Some(0.875));
        assert_eq!(c.crop_hw(), Some((224, 224)));
    }

    #[test]
    fn malformed_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = ModelConfigs::find(&dir.path().join("model.onnx")).unwrap_err();
        assert!(matches!(err, ModelError::Config { .. }), "{err}");
    }
}
