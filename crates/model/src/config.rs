//! The Hugging Face `config.json` and `preprocessor_config.json` that sit beside an ONNX export.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The fields of a Hugging Face `Dinov2Config` / `Dinov2WithRegistersConfig` dinoedge uses, or
/// of a `DepthAnythingConfig` (whose encoder fields sit in its `backbone_config`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(try_from = "RawHfConfig")]
pub struct HfConfig {
    /// `dinov2`, `dinov2_with_registers` or `depth_anything`.
    pub model_type: Option<String>,
    /// Token width D (384 for ViT-S), if the config says (the graph is read for it anyway:
    /// onnx-community's Depth Anything configs carry little more than `model_type`).
    pub hidden_size: Option<usize>,
    /// Number of transformer blocks, if the config says.
    pub num_hidden_layers: Option<usize>,
    /// Attention heads per block, if the config says.
    pub num_attention_heads: Option<usize>,
    /// Patch size in pixels (14).
    pub patch_size: usize,
    /// Training resolution; the position grid is `image_size / patch_size` wide (518 → 37).
    pub image_size: Option<usize>,
    /// Register tokens (0 for plain DINOv2).
    pub num_register_tokens: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: Option<f64>,
    /// What a depth model's output means (`DepthAnythingConfig` only).
    pub depth: Option<DepthConfig>,
}

/// What a Depth Anything model's output means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DepthConfig {
    /// Relative inverse depth (`depth_estimation_type: relative`): larger is nearer, in no
    /// unit; only its order and ratios mean anything, up to a scale and a shift.
    Relative,
    /// Depth in metres (`depth_estimation_type: metric`), at most `max_depth` (20 for the
    /// indoor checkpoints, 80 for the outdoor ones).
    Metric {
        /// The largest depth the head writes, in metres.
        max_depth: f32,
    },
}

/// `config.json` as written: every field optional, the encoder's possibly nested.
#[derive(Debug, Deserialize)]
struct RawHfConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    hidden_size: Option<usize>,
    #[serde(default)]
    num_hidden_layers: Option<usize>,
    #[serde(default)]
    num_attention_heads: Option<usize>,
    #[serde(default)]
    patch_size: Option<usize>,
    #[serde(default)]
    image_size: Option<usize>,
    #[serde(default)]
    num_register_tokens: usize,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    backbone_config: Option<Box<RawHfConfig>>,
    #[serde(default)]
    depth_estimation_type: Option<String>,
    #[serde(default)]
    max_depth: Option<f32>,
}

impl TryFrom<RawHfConfig> for HfConfig {
    type Error = String;

    fn try_from(raw: RawHfConfig) -> std::result::Result<Self, String> {
        let depth = match raw.depth_estimation_type.as_deref() {
            None if raw.model_type.as_deref() == Some("depth_anything") => {
                Some(DepthConfig::Relative)
            }
            None => None,
            Some("relative") => Some(DepthConfig::Relative),
            Some("metric") => Some(DepthConfig::Metric {
                max_depth: raw
                    .max_depth
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .ok_or("a metric depth model needs `max_depth` (metres, above 0)")?,
            }),
            Some(other) => {
                return Err(format!(
                    "depth_estimation_type `{other}`: expected `relative` or `metric`"
                ));
            }
        };
        let model_type = raw.model_type.clone();
        let patch = raw.patch_size;
        // A depth model's encoder fields are in its `backbone_config`.
        let enc = match raw.backbone_config {
            Some(b) => *b,
            None => raw,
        };
        Ok(HfConfig {
            model_type,
            hidden_size: enc.hidden_size,
            num_hidden_layers: enc.num_hidden_layers,
            num_attention_heads: enc.num_attention_heads,
            patch_size: enc.patch_size.or(patch).unwrap_or_else(default_patch),
            image_size: enc.image_size,
            num_register_tokens: enc.num_register_tokens,
            layer_norm_eps: enc.layer_norm_eps,
            depth,
        })
    }
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

    /// The fixed resize as (height, width), when `size` gives both (`DPTImageProcessor`).
    pub fn size_hw(&self) -> Option<(u32, u32)> {
        match self.size.as_ref()? {
            HfSize::HeightWidth { height, width } => Some((*height, *width)),
            _ => None,
        }
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
    let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
        path: path.to_owned(),
        error,
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

    #[test]
    fn a_depth_anything_config_reads_its_encoder_from_backbone_config() {
        let c: HfConfig = serde_json::from_str(
            r#"{"model_type": "depth_anything", "depth_estimation_type": "relative",
                "patch_size": 14, "max_depth": 1,
                "backbone_config": {"model_type": "dinov2", "hidden_size": 384,
                    "num_hidden_layers": 12, "num_attention_heads": 6, "image_size": 518,
                    "layer_norm_eps": 1e-6}}"#,
        )
        .unwrap();
        assert_eq!(c.model_type.as_deref(), Some("depth_anything"));
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (Some(384), Some(12), Some(6))
        );
        assert_eq!((c.patch_size, c.image_size), (14, Some(518)));
        assert_eq!(c.depth, Some(DepthConfig::Relative));
    }

    #[test]
    fn metric_depth_needs_its_range() {
        let enc = r#""backbone_config": {"hidden_size": 48, "num_hidden_layers": 4,
            "num_attention_heads": 3}"#;
        let metric = format!(
            r#"{{"model_type": "depth_anything", "depth_estimation_type": "metric",
                "max_depth": 20, {enc}}}"#
        );
        let c: HfConfig = serde_json::from_str(&metric).unwrap();
        assert_eq!(c.depth, Some(DepthConfig::Metric { max_depth: 20.0 }));
        let no_range = format!(
            r#"{{"model_type": "depth_anything", "depth_estimation_type": "metric", {enc}}}"#
        );
        let err = serde_json::from_str::<HfConfig>(&no_range).unwrap_err();
        assert!(err.to_string().contains("max_depth"), "{err}");
        let odd = format!(r#"{{"depth_estimation_type": "absolute", {enc}}}"#);
        let err = serde_json::from_str::<HfConfig>(&odd).unwrap_err();
        assert!(err.to_string().contains("relative"), "{err}");
    }

    #[test]
    fn a_dinov2_config_has_no_depth_and_sizes_may_be_missing() {
        let c: HfConfig = serde_json::from_str(
            r#"{"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
                "num_attention_heads": 6, "num_register_tokens": 4}"#,
        )
        .unwrap();
        assert_eq!(
            (c.depth, c.num_register_tokens, c.patch_size),
            (None, 4, 14)
        );
        // onnx-community's Depth Anything `config.json` is little more than its type: the
        // sizes come from the graph then
        let c: HfConfig = serde_json::from_str(r#"{"model_type": "depth_anything"}"#).unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers), (None, None));
        assert_eq!(c.depth, Some(DepthConfig::Relative));
    }
}
