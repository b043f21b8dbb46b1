//! Dense features: what the backbone gives per image.

use ndarray::{Array1, Array2, Array3, ArrayView2, Axis, s};

use crate::graph::FinalNorm;

/// How a token sequence is laid out: `[CLS, registers…, patches in row-major order]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLayout {
    /// Number of register tokens (0 or 4 for the released models).
    pub registers: usize,
    /// Patch grid (rows, columns).
    pub grid: (usize, usize),
    /// Token width D.
    pub dim: usize,
}

impl TokenLayout {
    /// Total tokens per image.
    pub fn tokens(&self) -> usize {
        1 + self.registers + self.grid.0 * self.grid.1
    }

    /// Split a `[T, D]` token matrix.
    pub fn split(&self, tokens: ArrayView2<f32>) -> Tokens {
        let r = self.registers;
        let (h, w) = self.grid;
        let patches = tokens
            .slice(s![1 + r.., ..])
            .to_owned()
            .into_shape_with_order((h, w, self.dim))
            .expect("layout checked against the model's output shape");
        Tokens {
            cls: tokens.row(0).to_owned(),
            registers: tokens.slice(s![1..1 + r, ..]).to_owned(),
            patches,
        }
    }
}

/// One image's tokens, split by role.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// The CLS token, `[D]`.
    pub cls: Array1<f32>,
    /// Register tokens, `[R, D]` (`R` = 0 for models without registers).
    pub registers: Array2<f32>,
    /// The patch grid, `[h, w, D]`.
    pub patches: Array3<f32>,
}

impl Tokens {
    /// Back to the `[T, D]` sequence (`[CLS, registers, patches]`).
    pub fn to_sequence(&self) -> Array2<f32> {
        let d = self.cls.len();
        let (h, w, _) = self.patches.dim();
        let mut out = Array2::zeros((1 + self.registers.nrows() + h * w, d));
        out.row_mut(0).assign(&self.cls);
        let r = self.registers.nrows();
        out.slice_mut(s![1..1 + r, ..]).assign(&self.registers);
        let flat = self
            .patches
            .view()
            .into_shape_with_order((h * w, d))
            .expect("contiguous");
        out.slice_mut(s![1 + r.., ..]).assign(&flat);
        out
    }

    /// The patch grid (rows, columns).
    pub fn grid(&self) -> (usize, usize) {
        let (h, w, _) = self.patches.dim();
        (h, w)
    }
}

/// The tokens of one intermediate block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockFeatures {
    /// Block index (0-based; 11 is the last block of ViT-S/14).
    pub block: usize,
    /// Whether the final LayerNorm was applied (dinov2's `get_intermediate_layers(norm=True)`).
    pub normalized: bool,
    /// The tokens.
    pub tokens: Tokens,
}

/// Everything the backbone produces for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Output of the last block after the final LayerNorm (`last_hidden_state`).
    pub tokens: Tokens,
    /// The blocks asked for, in the order asked.
    pub blocks: Vec<BlockFeatures>,
    /// Last block's attention from the CLS query to each patch, per head: `[heads, h, w]`
    /// (softmax probabilities over all keys, so a head's map sums to less than 1 when it
    /// also attends to CLS or registers).
    pub attention: Option<Array3<f32>>,
    /// The depth map `[height, width]` (the input's size) of a model with a depth head (Depth
    /// Anything V2): relative inverse depth, or metres for a metric model
    /// ([`crate::ModelInfo::depth`] says which). `None` for an encoder alone.
    pub depth: Option<Array2<f32>>,
}

impl Features {
    /// The CLS token `[D]`.
    pub fn cls(&self) -> &Array1<f32> {
        &self.tokens.cls
    }

    /// The patch grid `[h, w, D]`.
    pub fn patches(&self) -> &Array3<f32> {
        &self.tokens.patches
    }

    /// The register tokens `[R, D]`.
    pub fn registers(&self) -> &Array2<f32> {
        &self.tokens.registers
    }

    /// The block with this index, if it was asked for.
    pub fn block(&self, block: usize) -> Option<&BlockFeatures> {
        self.blocks.iter().find(|b| b.block == block)
    }
}

/// Apply a LayerNorm over the last axis of `[T, D]` tokens, in place.
pub(crate) fn layer_norm(tokens: &mut Array2<f32>, norm: &FinalNorm) {
    let d = tokens.ncols() as f32;
    for mut row in tokens.axis_iter_mut(Axis(0)) {
        let mean = row.iter().sum::<f32>() / d;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
        let inv = 1.0 / (var + norm.eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_round_trip() {
        let layout = TokenLayout {
            registers: 2,
            grid: (2, 3),
            dim: 4,
        };
        let seq = Array2::from_shape_fn((layout.tokens(), 4), |(t, c)| (t * 10 + c) as f32);
        let toks = layout.split(seq.view());
        assert_eq!(toks.cls[1], 1.0);
        assert_eq!(toks.registers[[1, 0]], 20.0);
        assert_eq!(toks.patches[[1, 0, 2]], 62.0); // token 3 + 1*3 + 0 = 6
        assert_eq!(toks.to_sequence(), seq);
        assert_eq!(toks.grid(), (2, 3));
    }

    #[test]
    fn layer_norm_normalises_rows() {
        let mut t = Array2::from_shape_vec((1, 4), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let norm = FinalNorm {
            weight: vec![1.0; 4],
            bias: vec![0.5; 4],
            eps: 0.0,
        };
        layer_norm(&mut t, &norm);
        let mean: f32 = t.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6);
        assert!((t[[0, 3]] - (0.5 + 1.5 / 1.25f32.sqrt())).abs() < 1e-6);
    }
}
