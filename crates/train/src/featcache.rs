//! The on-disk feature cache of head training: the backbone runs once per image (and once
//! per flipped image), so later epochs and later runs never touch it.
//!
//! Entries live under `ROOT/<feature-set key>/<image sha256>[-flip].safetensors`, where the
//! key hashes the model file's sha256, the resolution, the blocks and whether attention is
//! kept. A different model, size or head layout gets a separate folder; an entry that cannot
//! be read is extracted again and rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dinoedge_model::{
    Backbone, BackboneOptions, BlockFeatures, Features, ModelError, Preprocessor, Resolution,
    Tokens,
};
use ndarray::{Array1, Array2, Array3, ArrayD, Ix1, Ix2, Ix3};
use sha2::{Digest, Sha256};

use dinoedge_heads::HeadsError;
use dinoedge_heads::st::{TensorFile, write};

/// What is extracted per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSpec {
    /// sha256 of the ONNX file.
    pub model_sha256: String,
    /// Input resolution.
    pub resolution: Resolution,
    /// Intermediate blocks kept (before the final norm), for depth heads.
    pub blocks: Vec<usize>,
    /// Whether the last block's CLS attention is kept.
    pub attention: bool,
}

impl FeatureSpec {
    /// The cache folder name of this feature set.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "dinoedge-features-v1|{}|{}x{}|{:?}|{}",
            self.model_sha256,
            self.resolution.height,
            self.resolution.width,
            self.blocks,
            self.attention
        ));
        hex(&h.finalize()[..8])
    }

    /// Backbone options that produce these features.
    pub fn options(&self, mut base: BackboneOptions) -> BackboneOptions {
        base.resolution = Some(self.resolution);
        base.blocks = self.blocks.clone();
        base.normalize_blocks = false;
        base.attention = self.attention;
        base.batch = 1;
        base
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file's bytes, hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// How often the cache was used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Feature sets read from disk.
    pub hits: usize,
    /// Feature sets computed with the backbone (and stored).
    pub misses: usize,
}

/// A folder of cached features for one [`FeatureSpec`].
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// The cache for `spec` under `root` (created when missing).
    pub fn open(root: &Path, spec: &FeatureSpec) -> Result<FeatureCache, HeadsError> {
        let dir = root.join(spec.key());
        std::fs::create_dir_all(&dir).map_err(|e| HeadsError::Write {
            path: dir.clone(),
            reason: format!("cannot create the feature cache: {e}"),
        })?;
        let about = dir.join("spec.json");
        if !about.exists() {
            let text = format!(
                "{{\"model_sha256\": \"{}\", \"resolution\": \"{}x{}\", \"blocks\": {:?}, \"attention\": {}}}\n",
                spec.model_sha256,
                spec.resolution.height,
                spec.resolution.width,
                spec.blocks,
                spec.attention
            );
            let _ = std::fs::write(&about, text);
        }
        Ok(FeatureCache { dir })
    }

    /// The folder of this feature set.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, image_sha: &str, flip: bool) -> PathBuf {
        self.dir.join(format!(
            "{image_sha}{}.safetensors",
            if flip { "-flip" } else { "" }
        ))
    }

    /// Cached features of an image, if present and readable.
    pub fn get(&self, image_sha: &str, flip: bool) -> Option<Features> {
        let p = self.entry(image_sha, flip);
        if !p.exists() {
            return None;
        }
        match TensorFile::read(&p).and_then(|f| from_tensors(f, &p)) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("{e}: extracting again");
                None
            }
        }
    }

    /// Store an image's features.
    pub fn put(&self, image_sha: &str, flip: bool, f: &Features) -> Result<(), HeadsError> {
        let mut tensors: Vec<(String, ArrayD<f32>)> = vec![
            ("cls".into(), f.tokens.cls.clone().into_dyn()),
            ("patches".into(), f.tokens.patches.clone().into_dyn()),
            ("registers".into(), f.tokens.registers.clone().into_dyn()),
        ];
        for b in &f.blocks {
            tensors.push((
                format!("block{}.cls", b.block),
                b.tokens.cls.clone().into_dyn(),
            ));
            tensors.push((
                format!("block{}.patches", b.block),
                b.tokens.patches.clone().into_dyn(),
            ));
        }
        if let Some(a) = &f.attention {
            tensors.push(("attention".into(), a.clone().into_dyn()));
        }
        let blocks: Vec<String> = f.blocks.iter().map(|b| b.block.to_string()).collect();
        let meta = HashMap::from([("blocks".to_string(), blocks.join(","))]);
        write(&self.entry(image_sha, flip), &tensors, meta)
    }

    /// Bytes on disk in this feature set's folder.
    pub fn size_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn from_tensors(mut f: TensorFile, path: &Path) -> Result<Features, HeadsError> {
    let bad = |what: &str| HeadsError::Checkpoint {
        path: path.to_owned(),
        reason: format!("cached features: {what}"),
    };
    let mut take = |name: &str| {
        f.tensors
            .remove(name)
            .ok_or_else(|| bad(&format!("`{name}` missing")))
    };
    let t1 = |a: ArrayD<f32>| a.into_dimensionality::<Ix1>().map_err(|_| bad("bad rank"));
    let t2 = |a: ArrayD<f32>| a.into_dimensionality::<Ix2>().map_err(|_| bad("bad rank"));
    let t3 = |a: ArrayD<f32>| a.into_dimensionality::<Ix3>().map_err(|_| bad("bad rank"));
    let cls: Array1<f32> = t1(take("cls")?)?;
    let patches: Array3<f32> = t3(take("patches")?)?;
    let registers: Array2<f32> = t2(take("registers")?)?;
    let attention = f.tensors.remove("attention").map(t3).transpose()?;
    let list = f.metadata.get("blocks").cloned().unwrap_or_default();
    let mut blocks = Vec::new();
    for b in list.split(',').filter(|s| !s.is_empty()) {
        let block: usize = b.parse().map_err(|_| bad("bad block list"))?;
        let cls = t1(f
            .tensors
            .remove(&format!("block{block}.cls"))
            .ok_or_else(|| bad("block missing"))?)?;
        let patches = t3(f
            .tensors
            .remove(&format!("block{block}.patches"))
            .ok_or_else(|| bad("block missing"))?)?;
        blocks.push(BlockFeatures {
            block,
            normalized: false,
            tokens: Tokens {
                cls,
                registers: Array2::zeros((0, patches.dim().2)),
                patches,
            },
        });
    }
    Ok(Features {
        tokens: Tokens {
            cls,
            registers,
            patches,
        },
        blocks,
        attention,
        depth: None,
    })
}

/// Gives the features of image files: from the cache when there, else from the backbone,
/// which is loaded only when the first image is missing from the cache.
pub struct Extractor<'a> {
    cache: Option<FeatureCache>,
    load: Box<dyn FnMut() -> Result<(Backbone, Preprocessor), ModelError> + 'a>,
    backbone: Option<(Backbone, Preprocessor)>,
    patch: usize,
    /// Cache use so far.
    pub stats: CacheStats,
}

impl<'a> Extractor<'a> {
    /// An extractor over `cache` (`None`: always run the backbone) for a backbone with
    /// `patch`-pixel patches, that calls `load` the first time it needs the backbone.
    pub fn new(
        cache: Option<FeatureCache>,
        patch: usize,
        load: impl FnMut() -> Result<(Backbone, Preprocessor), ModelError> + 'a,
    ) -> Self {
        Extractor {
            cache,
            load: Box::new(load),
            backbone: None,
            patch,
            stats: CacheStats::default(),
        }
    }

    /// Patch size of the backbone, pixels.
    pub fn patch(&self) -> usize {
        self.patch
    }

    /// Whether the backbone was loaded.
    pub fn backbone_loaded(&self) -> bool {
        self.backbone.is_some()
    }

    /// The cache in use.
    pub fn cache(&self) -> Option<&FeatureCache> {
        self.cache.as_ref()
    }

    /// Features of `path`, mirrored left-right when `flip`.
    pub fn features(&mut self, path: &Path, flip: bool) -> Result<Features, HeadsError> {
        let bytes = std::fs::read(path).map_err(|e| HeadsError::Dataset {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let sha = sha256_bytes(&bytes);
        if let Some(c) = &self.cache
            && let Some(f) = c.get(&sha, flip)
        {
            self.stats.hits += 1;
            return Ok(f);
        }
        let img = dinoedge_model::load_rgb(path)?;
        let img = if flip {
            image::imageops::flip_horizontal(&img)
        } else {
            img
        };
        if self.backbone.is_none() {
            self.backbone = Some((self.load)()?);
        }
        let (bb, pre) = self.backbone.as_mut().expect("just loaded");
        let f = bb.run_image(pre, &img)?;
        self.stats.misses += 1;
        if let Some(c) = &self.cache {
            c.put(&sha, flip, &f)?;
        }
        Ok(f)
    }
}
