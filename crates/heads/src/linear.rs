//! DINOv2's released linear heads, loaded from their `.pth` checkpoints as released:
//! segmentation (mmseg `BNHead`: BatchNorm + 1x1 conv on the last block's normalised patch
//! tokens; VOC2012 21 classes, ADE20K 150) and depth (`BNHead` with 256 "UD" bins, linear
//! normalisation; `linear` on the last block, `linear4` on four blocks, patch tokens with the
//! CLS token concatenated, pre-final-norm, upsampled 4x).

use std::collections::HashMap;
use std::path::Path;

use dinoedge_model::{BackboneOptions, Features};
use ndarray::{Array1, Array2, Array3, ArrayD, ArrayView2, ArrayView3, Axis, Ix1, Ix2, s};

use crate::HeadsError;
use crate::palette::{Palette, voc_classes};
use crate::pth::{Checkpoint, Value};
use crate::resize::{for_each_upsampled, resize_bilinear};

/// BatchNorm epsilon of mmseg's `SyncBN`.
const BN_EPS: f32 = 1e-5;

/// A loaded segmentation head.
#[derive(Debug, Clone)]
pub struct SegHead {
    /// `[classes, channels]`, with the BatchNorm folded in.
    weight: Array2<f32>,
    /// `[classes]`, with the BatchNorm folded in.
    bias: Array1<f32>,
    /// Class names and colours.
    pub palette: Palette,
    /// Attention maps appended to the patch features as input channels (one per attention
    /// head of the backbone's last block; 0 for the released heads).
    pub attention_heads: usize,
    /// Metadata of a head trained by dinoedge (`None` for a released `.pth`).
    pub trained: Option<HashMap<String, String>>,
}

/// What a depth head's outputs mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthOutput {
    /// Scores over "UD" bins, turned into depth by DINOv2's linear normalisation.
    Bins,
    /// One output, the log of the depth in metres.
    LogDepth,
}

/// A loaded depth head.
#[derive(Debug, Clone)]
pub struct DepthHead {
    /// `[bins, 2 * D * L]`.
    weight: Array2<f32>,
    /// `[bins]`.
    bias: Array1<f32>,
    /// How many blocks the head reads (1: `linear`, 4: `linear4`).
    pub layers: usize,
    /// Smallest and largest depth of the bins, metres.
    pub range: (f32, f32),
    /// Bins or log-depth regression.
    pub output: DepthOutput,
    /// The blocks read, when the head says so (trained heads); else derived from `layers`.
    pub block_ids: Option<Vec<usize>>,
    /// Metadata of a head trained by dinoedge (`None` for a released `.pth`).
    pub trained: Option<HashMap<String, String>>,
}

/// A head read from a released checkpoint.
#[derive(Debug, Clone)]
pub enum LinearHead {
    /// Semantic segmentation.
    Seg(SegHead),
    /// Metric depth.
    Depth(DepthHead),
}

fn not_a_head(path: &Path, reason: impl Into<String>) -> HeadsError {
    HeadsError::NotAHead {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn take(
    dict: &mut Vec<(String, ArrayD<f32>)>,
    name: &str,
    path: &Path,
) -> Result<ArrayD<f32>, HeadsError> {
    let i = dict
        .iter()
        .position(|(k, _)| k == name || k.strip_prefix("decode_head.") == Some(name))
        .ok_or_else(|| not_a_head(path, format!("`{name}` is missing")))?;
    Ok(dict.remove(i).1)
}

/// A 1x1 conv weight `[K, C, 1, 1]` (or `[K, C]`) as `[K, C]`.
fn conv1x1(w: ArrayD<f32>, name: &str, path: &Path) -> Result<Array2<f32>, HeadsError> {
    let shape = w.shape().to_vec();
    let ok = shape.len() == 2 || (shape.len() == 4 && shape[2] == 1 && shape[3] == 1);
    if !ok {
        return Err(not_a_head(
            path,
            format!("`{name}` has shape {shape:?}, not a 1x1 conv"),
        ));
    }
    w.into_shape_with_order((shape[0], shape[1]))
        .map_err(|e| not_a_head(path, e.to_string()))
}

fn vector(v: ArrayD<f32>, len: usize, name: &str, path: &Path) -> Result<Array1<f32>, HeadsError> {
    if v.shape() != [len] {
        return Err(not_a_head(
            path,
            format!("`{name}` has shape {:?}, expected [{len}]", v.shape()),
        ));
    }
    Ok(v.into_dimensionality::<Ix1>().expect("checked"))
}

/// A 1x1 conv `{name}.weight` `[K, C(, 1, 1)]` and its `{name}.bias` `[K]`, taken from `dict`.
fn conv_layer(
    dict: &mut Vec<(String, ArrayD<f32>)>,
    name: &str,
    path: &Path,
) -> Result<(Array2<f32>, Array1<f32>), HeadsError> {
    let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
    let w = conv1x1(take(dict, &wn, path)?, &wn, path)?;
    let b = vector(take(dict, &bn, path)?, w.nrows(), &bn, path)?;
    Ok((w, b))
}

/// `max_depth=…` in an mmcv config string, if any.
fn config_max_depth(root: &Value) -> Option<f32> {
    let config = root.get("meta")?.get("config")?.as_str()?;
    let at = config.find("max_depth=")? + "max_depth=".len();
    let num: String = config[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

impl LinearHead {
    /// Load a released head checkpoint (`dinov2_vits14_voc2012_linear_head.pth`, …).
    /// Depth heads take their range from the checkpoint's config (`max_depth`), else 80 m
    /// for KITTI files and 10 m otherwise; `max_depth` overrides.
    /// A `.safetensors` file written by `dinoedge train-head` is read with its metadata.
    pub fn load(path: &Path, max_depth: Option<f32>) -> Result<LinearHead, HeadsError> {
        if is_safetensors(path)? {
            return load_trained(path, max_depth);
        }
        let ckpt = Checkpoint::open(path)?;
        let mut dict = ckpt.state_dict()?;
        fn has(dict: &[(String, ArrayD<f32>)], n: &str) -> bool {
            dict.iter()
                .any(|(k, _)| k == n || k.strip_prefix("decode_head.") == Some(n))
        }
        if has(&dict, "conv_seg.weight") {
            let (w, b) = conv_layer(&mut dict, "conv_seg", path)?;
            let (k, c) = w.dim();
            if k == 0 {
                return Err(not_a_head(path, "a segmentation head with no classes"));
            }
            let bn = if has(&dict, "bn.weight") {
                let g = vector(take(&mut dict, "bn.weight", path)?, c, "bn.weight", path)?;
                let beta = vector(take(&mut dict, "bn.bias", path)?, c, "bn.bias", path)?;
                let mean = vector(
                    take(&mut dict, "bn.running_mean", path)?,
                    c,
                    "bn.running_mean",
                    path,
                )?;
                let var = vector(
                    take(&mut dict, "bn.running_var", path)?,
                    c,
                    "bn.running_var",
                    path,
                )?;
                Some((g, beta, mean, var))
            } else {
                None
            };
            let (weight, bias) = fold_bn(w, b, bn);
            let palette = Palette::from_meta(&ckpt.root, k).unwrap_or_else(|| {
                if k == 21 {
                    Palette::voc()
                } else {
                    Palette::generic(k)
                }
            });
            debug_assert!(k != 21 || palette.names.len() == voc_classes().len());
            return Ok(LinearHead::Seg(SegHead {
                weight,
                bias,
                palette,
                attention_heads: 0,
                trained: None,
            }));
        }
        if has(&dict, "conv_depth.weight") {
            let (w, b) = conv_layer(&mut dict, "conv_depth", path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let max = max_depth
                .or_else(|| config_max_depth(&ckpt.root))
                .unwrap_or(if name.contains("kitti") { 80.0 } else { 10.0 });
            let (_, max) = depth_range(0.001, max, max_depth.is_some(), path)?;
            let layers = if name.contains("linear4") { 4 } else { 1 };
            return Ok(LinearHead::Depth(DepthHead {
                weight: w,
                bias: b,
                layers,
                range: (0.001, max),
                output: DepthOutput::Bins,
                block_ids: None,
                trained: None,
            }));
        }
        let keys: Vec<&str> = dict.iter().map(|(k, _)| k.as_str()).take(6).collect();
        Err(not_a_head(
            path,
            format!(
                "no `decode_head.conv_seg` or `decode_head.conv_depth` weights (found: {})",
                if keys.is_empty() {
                    "no tensors".to_owned()
                } else {
                    keys.join(", ")
                }
            ),
        ))
    }
}

/// BatchNorm parameters: weight, bias, running mean, running variance.
type BatchNorm = (Array1<f32>, Array1<f32>, Array1<f32>, Array1<f32>);

/// Fold eval-mode BatchNorm into the following 1x1 conv: `W' = W * g / sqrt(var + eps)`,
/// `b' = b + W (beta - mean * g / sqrt(var + eps))`.
fn fold_bn(w: Array2<f32>, b: Array1<f32>, bn: Option<BatchNorm>) -> (Array2<f32>, Array1<f32>) {
    let Some((g, beta, mean, var)) = bn else {
        return (w, b);
    };
    let scale: Array1<f32> = g
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + BN_EPS).sqrt())
        .collect();
    let shift: Array1<f32> = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((beta, m), s)| beta - m * s)
        .collect();
    let bias = &b + &w.dot(&shift);
    let weight = &w * &scale.view().insert_axis(Axis(0));
    (weight, bias)
}

/// `[h, w, C]` features times `[K, C]` weights plus bias: `[K, h, w]`.
fn conv_grid(
    features: ArrayView3<f32>,
    weight: ArrayView2<f32>,
    bias: &Array1<f32>,
) -> Array3<f32> {
    let (h, w, c) = features.dim();
    let flat = features
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((h * w, c))
        .expect("contiguous");
    let mut out = weight.dot(&flat.t()); // [K, h*w]
    out += &bias.view().insert_axis(Axis(1));
    out.into_shape_with_order((weight.nrows(), h, w))
        .expect("K*h*w")
}

/// `e^x` for `x <= 0` to ~2e-7 relative error, branch-free so that loops over classes
/// vectorise (the softmax denominators are the bulk of a 150-class head's time).
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    // round to nearest by the 1.5 * 2^23 trick (no call to floorf, which would stop
    // vectorisation on baseline x86-64)
    let i = (t + 12_582_912.0) - 12_582_912.0;
    let f = t - i;
    // 2^f = e^(f ln 2) on [-0.5, 0.5]: Taylor series to degree 6 (error < 2e-7)
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11 + f * (0.009_618_13 + f * (0.001_333_55 + f * 0.000_154_04)))));
    f32::from_bits(((i as i32 + 127) as u32) << 23) * p
}

const LANES: usize = 8;

/// The largest value, with 8 independent accumulators (float reductions are not
/// reassociated by the compiler, so a plain fold runs one element per add latency).
fn max_lanes(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// `sum(exp(v - max))`, vectorised like [`max_lanes`].
fn sum_exp_lanes(v: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp_fast(c[i] - max);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| exp_fast(x - max)).sum::<f32>()
}

/// Per-pixel classes and confidences.
#[derive(Debug, Clone)]
pub struct SegOutput {
    /// Class id per pixel, `[H, W]`.
    pub labels: Array2<u8>,
    /// Softmax probability of the chosen class, `[H, W]`.
    pub confidence: Array2<f32>,
}

impl SegHead {
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.weight.nrows()
    }

    /// Feature channels the head expects (the backbone width for a linear head).
    pub fn channels(&self) -> usize {
        self.weight.ncols()
    }

    /// Check that the head fits a backbone of width `dim`.
    pub fn check_backbone(&self, dim: usize) -> Result<(), HeadsError> {
        let want = dim + self.attention_heads;
        if self.channels() != want {
            return Err(HeadsError::Incompatible(format!(
                "the segmentation head reads {} channels but the backbone gives {want}{} \
                 (a head for another backbone size{})",
                self.channels(),
                if self.attention_heads > 0 {
                    format!(" ({dim} + {} attention maps)", self.attention_heads)
                } else {
                    String::new()
                },
                if self.channels().is_multiple_of(dim) {
                    ", or a multi-layer head"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// Ask the backbone for what this head reads (the last block's attention, for heads
    /// trained with attention channels).
    pub fn configure(&self, options: &mut BackboneOptions) {
        options.attention |= self.attention_heads > 0;
    }

    /// The head's input grid `[h, w, C]` from a backbone's features: the normalised patch
    /// grid, with the attention maps appended when the head reads them.
    pub fn input(&self, f: &Features) -> Result<Array3<f32>, HeadsError> {
        let (_, _, d) = f.patches().dim();
        self.check_backbone(d)?;
        seg_input(f, self.attention_heads > 0)
    }

    /// [`SegHead::predict`] on a backbone's features.
    pub fn predict_features(
        &self,
        f: &Features,
        height: usize,
        width: usize,
    ) -> Result<SegOutput, HeadsError> {
        self.predict(self.input(f)?.view(), height, width)
    }

    /// Logits at patch resolution, `[K, h, w]`, from the head's input grid `[h, w, C]` (the
    /// last block's normalised patch grid for released heads; see [`SegHead::input`]).
    pub fn logits(&self, input: ArrayView3<f32>) -> Result<Array3<f32>, HeadsError> {
        let c = input.dim().2;
        if c != self.channels() {
            return self
                .check_backbone(c.saturating_sub(self.attention_heads))
                .and(Err(HeadsError::Shape(format!(
                    "the head reads {} channels, {c} given",
                    self.channels()
                ))));
        }
        Ok(conv_grid(input, self.weight.view(), &self.bias))
    }

    /// Class map and confidence at `height` x `width`: logits upsampled bilinearly, then
    /// argmax; the confidence is the softmax probability of the chosen class.
    pub fn predict(
        &self,
        patches: ArrayView3<f32>,
        height: usize,
        width: usize,
    ) -> Result<SegOutput, HeadsError> {
        let logits = self.logits(patches)?; // [K, h, w]
        let last = logits.permuted_axes([1, 2, 0]); // [h, w, K]
        let mut labels = Array2::<u8>::zeros((height, width));
        let mut confidence = Array2::<f32>::zeros((height, width));
        for_each_upsampled(last.view(), height, width, |y, x, v| {
            // max first, then its first index: the same argmax as a scan
            let best_v = max_lanes(v);
            let best = v.iter().position(|&l| l == best_v).unwrap_or(0);
            let denom = sum_exp_lanes(v, best_v);
            labels[(y, x)] = best.min(255) as u8;
            confidence[(y, x)] = 1.0 / denom;
        });
        Ok(SegOutput { labels, confidence })
    }
}

impl DepthHead {
    /// Number of depth bins.
    pub fn bins(&self) -> usize {
        self.weight.nrows()
    }

    /// The blocks this head reads from a backbone with `depth` blocks: the last one, or
    /// four evenly spaced ones ending at the last (2, 5, 8, 11 for 12 blocks).
    pub fn blocks(&self, depth: usize) -> Vec<usize> {
        if let Some(b) = &self.block_ids {
            return b.clone();
        }
        if self.layers == 1 {
            vec![depth - 1]
        } else {
            (1..=self.layers)
                .map(|i| i * depth / self.layers - 1)
                .collect()
        }
    }

    /// Check that the head fits a backbone of width `dim`.
    pub fn check_backbone(&self, dim: usize) -> Result<(), HeadsError> {
        let want = 2 * dim * self.layers;
        if self.weight.ncols() != want {
            return Err(HeadsError::Incompatible(format!(
                "the depth head reads {} channels; a {}-layer head on a width-{dim} backbone gives {want} \
                 (patch + CLS per layer): a head for another backbone size",
                self.weight.ncols(),
                self.layers
            )));
        }
        Ok(())
    }

    /// The bin centres: `linspace(min, max, bins)` ("UD" bins).
    pub fn bin_depths(&self) -> Vec<f32> {
        let n = self.bins();
        let (lo, hi) = self.range;
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1).max(1) as f32)
            .collect()
    }

    /// Depth in metres at 4x patch resolution, `[4h, 4w]`, from pre-final-norm blocks:
    /// for each block its patch grid `[h, w, D]` and CLS token `[D]`.
    pub fn depth_lowres(
        &self,
        blocks: &[(ArrayView3<f32>, ndarray::ArrayView1<f32>)],
    ) -> Result<Array2<f32>, HeadsError> {
        if blocks.len() != self.layers {
            return Err(HeadsError::Shape(format!(
                "the depth head reads {} blocks, {} given",
                self.layers,
                blocks.len()
            )));
        }
        let (h, w, d) = blocks[0].0.dim();
        self.check_backbone(d)?;
        // The conv is 1x1 and bilinear weights sum to 1, so conv(resize(X)) = resize(conv(X)):
        // run it at patch resolution; the CLS part is a constant per bin.
        let mut logits = Array3::<f32>::zeros((self.bins(), h, w));
        let mut constant = self.bias.clone();
        for (i, (patches, cls)) in blocks.iter().enumerate() {
            if patches.dim() != (h, w, d) || cls.len() != d {
                return Err(HeadsError::Shape("blocks of different shapes".into()));
            }
            let base = 2 * d * i;
            let wp = self.weight.slice(s![.., base..base + d]);
            let wc = self.weight.slice(s![.., base + d..base + 2 * d]);
            logits += &conv_grid(*patches, wp, &Array1::zeros(self.bins()));
            constant += &wc.dot(cls);
        }
        logits += &constant.view().insert_axis(Axis(1)).insert_axis(Axis(2));
        let last = logits.permuted_axes([1, 2, 0]); // [h, w, bins]
        let bins = self.bin_depths();
        let mut depth = Array2::<f32>::zeros((4 * h, 4 * w));
        if self.output == DepthOutput::LogDepth {
            for_each_upsampled(last.view(), 4 * h, 4 * w, |y, x, v| {
                depth[(y, x)] = v[0].exp();
            });
            return Ok(depth);
        }
        for_each_upsampled(last.view(), 4 * h, 4 * w, |y, x, v| {
            let (mut num, mut den) = (0f32, 0f32);
            for (l, b) in v.iter().zip(&bins) {
                let p = l.max(0.0) + 0.1;
                num += p * b;
                den += p;
            }
            depth[(y, x)] = num / den;
        });
        Ok(depth)
    }

    /// Depth in metres at `height` x `width`: clamped to the range, resized bilinearly.
    pub fn predict(
        &self,
        blocks: &[(ArrayView3<f32>, ndarray::ArrayView1<f32>)],
        height: usize,
        width: usize,
    ) -> Result<Array2<f32>, HeadsError> {
        let low = self.depth_lowres(blocks)?;
        let (lo, hi) = self.range;
        let low = low.mapv(|v| v.clamp(lo, hi)).insert_axis(Axis(0));
        let up = resize_bilinear(low.view(), height, width);
        Ok(up
            .index_axis_move(Axis(0), 0)
            .into_dimensionality::<Ix2>()
            .expect("2-D"))
    }
}

impl DepthHead {
    /// Ask the backbone for the blocks this head reads (before the final norm).
    pub fn configure(&self, options: &mut BackboneOptions, backbone_blocks: usize) {
        options.blocks = self.blocks(backbone_blocks);
        options.normalize_blocks = false;
    }

    /// [`DepthHead::predict`] on a backbone's features (loaded with
    /// [`DepthHead::configure`]).
    pub fn predict_features(
        &self,
        f: &Features,
        height: usize,
        width: usize,
    ) -> Result<Array2<f32>, HeadsError> {
        let blocks: Vec<_> = f
            .blocks
            .iter()
            .map(|b| (b.tokens.patches.view(), b.tokens.cls.view()))
            .collect();
        self.predict(&blocks, height, width)
    }
}

/// A segmentation head's input grid `[h, w, D (+ heads)]`: the normalised patch grid, with
/// the last block's per-head CLS attention appended when `attention`.
pub fn seg_input(f: &Features, attention: bool) -> Result<Array3<f32>, HeadsError> {
    let p = f.patches();
    if !attention {
        return Ok(p.clone());
    }
    let a = f.attention.as_ref().ok_or_else(|| {
        HeadsError::Shape("the head reads attention maps but the features have none".into())
    })?;
    let (h, w, d) = p.dim();
    let heads = a.dim().0;
    if a.dim() != (heads, h, w) {
        return Err(HeadsError::Shape(format!(
            "attention maps {:?} do not match the {h}x{w} patch grid",
            a.dim()
        )));
    }
    let mut out = Array3::<f32>::zeros((h, w, d + heads));
    out.slice_mut(s![.., .., ..d]).assign(p);
    out.slice_mut(s![.., .., d..])
        .assign(&a.view().permuted_axes([1, 2, 0]));
    Ok(out)
}

/// A depth head's input rows `[h * w, 2 D L]`: for each block given (in order) the patch
/// token, then the block's CLS token, as the released heads concatenate them.
pub fn depth_input(f: &Features) -> Result<Array2<f32>, HeadsError> {
    let first = f.blocks.first().ok_or_else(|| {
        HeadsError::Shape("depth heads read intermediate blocks; none given".into())
    })?;
    let (h, w, d) = first.tokens.patches.dim();
    let mut out = Array2::<f32>::zeros((h * w, 2 * d * f.blocks.len()));
    for (i, b) in f.blocks.iter().enumerate() {
        if b.tokens.patches.dim() != (h, w, d) {
            return Err(HeadsError::Shape("blocks of different shapes".into()));
        }
        let flat = b
            .tokens
            .patches
            .view()
            .into_shape_with_order((h * w, d))
            .map_err(|e| HeadsError::Shape(e.to_string()))?;
        let base = 2 * d * i;
        out.slice_mut(s![.., base..base + d]).assign(&flat);
        out.slice_mut(s![.., base + d..base + 2 * d])
            .assign(&b.tokens.cls.view().insert_axis(Axis(0)));
    }
    Ok(out)
}

/// Metadata key naming the file format of trained heads.
const FORMAT: &str = "dinoedge-linear-head";

/// Write a trained head: `weight`, `bias` and the metadata with the format tag.
fn write_head(
    path: &Path,
    weight: &Array2<f32>,
    bias: &Array1<f32>,
    mut meta: HashMap<String, String>,
) -> Result<(), HeadsError> {
    meta.insert("format".into(), FORMAT.into());
    meta.insert("format_version".into(), "1".into());
    crate::st::write(
        path,
        &[
            ("weight", weight.clone().into_dyn()),
            ("bias", bias.clone().into_dyn()),
        ],
        meta,
    )
}

fn is_safetensors(path: &Path) -> Result<bool, HeadsError> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HeadsError::NotFound(path.to_owned()),
        _ => HeadsError::Checkpoint {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })?;
    let n = f.read(&mut head).unwrap_or(0);
    Ok(crate::st::TensorFile::sniff(&head[..n]))
}

fn meta_json<T: serde::de::DeserializeOwned>(
    meta: &HashMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<T, HeadsError> {
    let v = meta
        .get(key)
        .ok_or_else(|| not_a_head(path, format!("metadata `{key}` is missing")))?;
    serde_json::from_str(v).map_err(|e| not_a_head(path, format!("metadata `{key}`: {e}")))
}

fn load_trained(path: &Path, max_depth: Option<f32>) -> Result<LinearHead, HeadsError> {
    let mut file = crate::st::TensorFile::read(path)?;
    let meta = std::mem::take(&mut file.metadata);
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(not_a_head(
            path,
            "a safetensors file without dinoedge's head metadata (format = dinoedge-linear-head)",
        ));
    }
    let weight = file
        .tensors
        .remove("weight")
        .ok_or_else(|| not_a_head(path, "`weight` is missing"))?
        .into_dimensionality::<Ix2>()
        .map_err(|_| not_a_head(path, "`weight` is not 2-D"))?;
    let k = weight.nrows();
    let bias = vector(
        file.tensors
            .remove("bias")
            .ok_or_else(|| not_a_head(path, "`bias` is missing"))?,
        k,
        "bias",
        path,
    )?;
    match meta.get("task").map(String::as_str) {
        Some("segmentation") => {
            if k == 0 {
                return Err(not_a_head(path, "a segmentation head with no classes"));
            }
            let names: Vec<String> = meta_json(&meta, "names", path)?;
            let colors: Vec<[u8; 3]> = meta_json(&meta, "palette", path)?;
            if names.len() != k || colors.len() != k {
                return Err(not_a_head(
                    path,
                    format!(
                        "{k} outputs but {} names and {} colours",
                        names.len(),
                        colors.len()
                    ),
                ));
            }
            let attention_heads: usize = meta_json(&meta, "attention_heads", path)?;
            Ok(LinearHead::Seg(SegHead {
                weight,
                bias,
                palette: Palette { names, colors },
                attention_heads,
                trained: Some(meta),
            }))
        }
        Some("depth") => {
            let blocks: Vec<usize> = meta_json(&meta, "blocks", path)?;
            let range: (f32, f32) = meta_json(&meta, "depth_range", path)?;
            let output = match meta.get("depth_output").map(String::as_str) {
                Some("bins") => DepthOutput::Bins,
                Some("log") => DepthOutput::LogDepth,
                Some(other) => {
                    return Err(not_a_head(
                        path,
                        format!("depth_output \"{other}\": expected \"bins\" or \"log\""),
                    ));
                }
                None => {
                    return Err(not_a_head(
                        path,
                        "no depth_output (\"bins\" or \"log\") in its metadata",
                    ));
                }
            };
            if output == DepthOutput::LogDepth && k != 1 {
                return Err(not_a_head(path, "a log-depth head has one output"));
            }
            let range = depth_range(
                range.0,
                max_depth.unwrap_or(range.1),
                max_depth.is_some(),
                path,
            )?;
            Ok(LinearHead::Depth(DepthHead {
                weight,
                bias,
                layers: blocks.len(),
                range,
                output,
                block_ids: Some(blocks),
                trained: Some(meta),
            }))
        }
        Some(other) => Err(not_a_head(
            path,
            format!("task \"{other}\": expected segmentation or depth"),
        )),
        None => Err(not_a_head(
            path,
            "no task (segmentation or depth) in its metadata",
        )),
    }
}

/// A depth head's range `(min, max)` in metres, checked: both finite, `0 ≤ min < max` and
/// `max > 0.001 m`. `from_flag`: the maximum came from `--max-depth` (the message says so),
/// else from the file.
fn depth_range(min: f32, max: f32, from_flag: bool, path: &Path) -> Result<(f32, f32), HeadsError> {
    if min.is_finite() && max.is_finite() && min >= 0.0 && max > min && max > 0.001 {
        return Ok((min, max));
    }
    if from_flag {
        Err(HeadsError::InvalidOption(format!(
            "--max-depth {max}: a finite depth in metres above {} m (the head's nearest depth) \
             is needed",
            min.max(0.001)
        )))
    } else {
        Err(not_a_head(
            path,
            format!(
                "its depth range {min}–{max} m is not a range (finite, 0 ≤ nearest < farthest)"
            ),
        ))
    }
}

impl SegHead {
    /// A head from trained weights `[K, C]` and bias `[K]`; `metadata` is stored with it.
    pub fn from_trained(
        weight: Array2<f32>,
        bias: Array1<f32>,
        palette: Palette,
        attention_heads: usize,
        metadata: HashMap<String, String>,
    ) -> Result<SegHead, HeadsError> {
        if bias.len() != weight.nrows() || palette.names.len() != weight.nrows() {
            return Err(HeadsError::Shape(format!(
                "{} outputs, {} biases, {} classes",
                weight.nrows(),
                bias.len(),
                palette.names.len()
            )));
        }
        Ok(SegHead {
            weight,
            bias,
            palette,
            attention_heads,
            trained: Some(metadata),
        })
    }

    /// Save as `safetensors` (`weight`, `bias` and the metadata: task, classes, names,
    /// palette, attention heads, plus what [`SegHead::from_trained`] was given).
    pub fn save(&self, path: &Path) -> Result<(), HeadsError> {
        let mut meta = self.trained.clone().unwrap_or_default();
        meta.insert("task".into(), "segmentation".into());
        meta.insert("classes".into(), self.classes().to_string());
        meta.insert(
            "names".into(),
            serde_json::to_string(&self.palette.names).expect("strings"),
        );
        meta.insert(
            "palette".into(),
            serde_json::to_string(&self.palette.colors).expect("ints"),
        );
        meta.insert("attention_heads".into(), self.attention_heads.to_string());
        meta.insert(
            "inputs".into(),
            if self.attention_heads > 0 {
                "patches+attention"
            } else {
                "patches"
            }
            .into(),
        );
        write_head(path, &self.weight, &self.bias, meta)
    }
}

impl DepthHead {
    /// A head from trained weights `[outputs, 2 D L]` and bias, reading `blocks`.
    pub fn from_trained(
        weight: Array2<f32>,
        bias: Array1<f32>,
        blocks: Vec<usize>,
        output: DepthOutput,
        range: (f32, f32),
        metadata: HashMap<String, String>,
    ) -> Result<DepthHead, HeadsError> {
        if bias.len() != weight.nrows() || blocks.is_empty() {
            return Err(HeadsError::Shape(format!(
                "{} outputs, {} biases, {} blocks",
                weight.nrows(),
                bias.len(),
                blocks.len()
            )));
        }
        Ok(DepthHead {
            weight,
            bias,
            layers: blocks.len(),
            range,
            output,
            block_ids: Some(blocks),
            trained: Some(metadata),
        })
    }

    /// Save as `safetensors` with the metadata (task, blocks, output kind, range).
    pub fn save(&self, path: &Path) -> Result<(), HeadsError> {
        let blocks = self.block_ids.clone().ok_or_else(|| {
            HeadsError::InvalidOption("only trained depth heads (with block ids) are saved".into())
        })?;
        let mut meta = self.trained.clone().unwrap_or_default();
        meta.insert("task".into(), "depth".into());
        meta.insert(
            "blocks".into(),
            serde_json::to_string(&blocks).expect("ints"),
        );
        meta.insert(
            "depth_output".into(),
            match self.output {
                DepthOutput::Bins => "bins",
                DepthOutput::LogDepth => "log",
            }
            .into(),
        );
        meta.insert(
            "depth_range".into(),
            serde_json::to_string(&self.range).expect("floats"),
        );
        meta.insert("inputs".into(), "patches+cls".into());
        write_head(path, &self.weight, &self.bias, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::exp_fast;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x <= 0.0 {
            let (a, b) = (exp_fast(x), x.exp());
            worst = worst.max((a - b).abs() / b);
            x += 0.0137;
        }
        assert!(worst < 1e-5, "relative error {worst}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert!(exp_fast(-1000.0) < 1e-37);
    }
}
