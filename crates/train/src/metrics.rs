//! Evaluation metrics: mIoU and pixel accuracy for segmentation; RMSE, AbsRel and δ<1.25
//! for depth (the metrics of DINOv2's and mmseg's evaluations); feature agreement of two backbones.

use ndarray::{ArrayView1, ArrayView2, ArrayView3, Axis};

use crate::dataset::IGNORE;

/// A confusion matrix over `k` classes (rows: truth, columns: prediction).
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    k: usize,
    counts: Vec<u64>,
}

/// Intersection over union of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassIou {
    /// Class id.
    pub class: usize,
    /// IoU, `None` when the class is neither in the truth nor predicted.
    pub iou: Option<f64>,
    /// Labelled pixels of this class.
    pub pixels: u64,
}

impl Confusion {
    /// An empty matrix for `k` classes.
    pub fn new(k: usize) -> Confusion {
        Confusion {
            k,
            counts: vec![0; k * k],
        }
    }

    /// Count a predicted map against the truth (pixels labelled [`IGNORE`] are skipped).
    /// Both maps must have the same shape; a truth class beyond `k` is skipped too.
    pub fn add(&mut self, truth: ArrayView2<u8>, pred: ArrayView2<u8>) {
        assert_eq!(truth.dim(), pred.dim(), "maps of different sizes");
        for (&t, &p) in truth.iter().zip(pred.iter()) {
            if t == IGNORE || t as usize >= self.k {
                continue;
            }
            let p = (p as usize).min(self.k - 1);
            self.counts[t as usize * self.k + p] += 1;
        }
    }

    /// Count one pixel.
    pub fn add_one(&mut self, truth: usize, pred: usize) {
        if truth < self.k && pred < self.k {
            self.counts[truth * self.k + pred] += 1;
        }
    }

    /// Labelled pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of labelled pixels predicted right.
    pub fn pixel_accuracy(&self) -> f64 {
        let right: u64 = (0..self.k).map(|i| self.counts[i * self.k + i]).sum();
        right as f64 / self.total().max(1) as f64
    }

    /// IoU of each class.
    pub fn per_class(&self) -> Vec<ClassIou> {
        (0..self.k)
            .map(|c| {
                let tp = self.counts[c * self.k + c];
                let truth: u64 = (0..self.k).map(|p| self.counts[c * self.k + p]).sum();
                let pred: u64 = (0..self.k).map(|t| self.counts[t * self.k + c]).sum();
                let union = truth + pred - tp;
                ClassIou {
                    class: c,
                    iou: (union > 0).then(|| tp as f64 / union as f64),
                    pixels: truth,
                }
            })
            .collect()
    }

    /// Mean IoU over the classes present in the truth (mmseg's convention: classes that
    /// never occur in the labels do not count, even when predicted — their false positives
    /// still lower the IoU of the true classes they were taken from).
    pub fn miou(&self) -> f64 {
        let ious: Vec<f64> = self
            .per_class()
            .into_iter()
            .filter(|c| c.pixels > 0)
            .filter_map(|c| c.iou)
            .collect();
        if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }

    /// The most frequent true class.
    pub fn majority_class(&self) -> usize {
        self.per_class()
            .iter()
            .max_by_key(|c| c.pixels)
            .map(|c| c.class)
            .unwrap_or(0)
    }

    /// mIoU and pixel accuracy of predicting `class` everywhere, on the same truth.
    pub fn constant_baseline(&self, class: usize) -> (f64, f64) {
        let mut b = Confusion::new(self.k);
        for t in 0..self.k {
            let n: u64 = (0..self.k).map(|p| self.counts[t * self.k + p]).sum();
            b.counts[t * self.k + class] = n;
        }
        (b.miou(), b.pixel_accuracy())
    }
}

/// Depth errors, averaged per image and then over images (the NYU/KITTI convention).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DepthScores {
    sums: [f64; 6],
    images: usize,
}

/// The depth metrics of a set of images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DepthSummary {
    /// Root mean square error, metres.
    pub rmse: f64,
    /// Mean |pred − truth| / truth.
    pub abs_rel: f64,
    /// Fraction of pixels with max(pred/truth, truth/pred) < 1.25.
    pub delta1: f64,
    /// … < 1.25².
    pub delta2: f64,
    /// … < 1.25³.
    pub delta3: f64,
    /// Mean |log10 pred − log10 truth|.
    pub log10: f64,
    /// Images scored.
    pub images: usize,
}

impl DepthScores {
    /// Score one image; pixels whose truth is not above 0 are skipped. Returns `false`
    /// when the image had no valid pixel (it is then not counted).
    pub fn add(&mut self, truth: ArrayView2<f32>, pred: ArrayView2<f32>) -> bool {
        assert_eq!(truth.dim(), pred.dim(), "maps of different sizes");
        let mut s = [0f64; 6];
        let mut n = 0usize;
        for (&t, &p) in truth.iter().zip(pred.iter()) {
            if !(t > 0.0 && t.is_finite()) {
                continue;
            }
            let (t, p) = (t as f64, (p as f64).max(1e-6));
            let ratio = (p / t).max(t / p);
            s[0] += (p - t) * (p - t);
            s[1] += (p - t).abs() / t;
            s[2] += (ratio < 1.25) as u8 as f64;
            s[3] += (ratio < 1.25 * 1.25) as u8 as f64;
            s[4] += (ratio < 1.25 * 1.25 * 1.25) as u8 as f64;
            s[5] += (p.log10() - t.log10()).abs();
            n += 1;
        }
        if n == 0 {
            return false;
        }
        let n = n as f64;
        self.sums[0] += (s[0] / n).sqrt();
        for (sum, v) in self.sums.iter_mut().zip(s).skip(1) {
            *sum += v / n;
        }
        self.images += 1;
        true
    }

    /// Score a relative inverse depth (larger is nearer, no unit: a relative Depth Anything V2
    /// model's output) as its papers evaluate it: aligned to the truth's inverse depth by the
    /// least-squares scale and shift over the valid pixels of this image, turned into depth
    /// (capped at the image's largest true depth, so that a near-zero inverse depth does not
    /// give an unbounded one), then scored as [`DepthScores::add`]. Returns `false` when the
    /// image had fewer than two valid pixels or a constant prediction over them.
    pub fn add_relative(&mut self, truth: ArrayView2<f32>, pred: ArrayView2<f32>) -> bool {
        assert_eq!(truth.dim(), pred.dim(), "maps of different sizes");
        let valid = |t: f32, p: f32| t > 0.0 && t.is_finite() && p.is_finite();
        let pairs = || {
            truth
                .iter()
                .zip(pred.iter())
                .filter(|(t, p)| valid(**t, **p))
                .map(|(&t, &p)| (p as f64, 1.0 / t as f64))
        };
        let Some((scale, shift)) = fit_scale_shift(pairs()) else {
            return false;
        };
        let far = truth
            .iter()
            .filter(|t| **t > 0.0 && t.is_finite())
            .fold(0f32, |a, &b| a.max(b)) as f64;
        let depth = ndarray::Zip::from(truth)
            .and(pred)
            .map_collect(|&t, &p| match valid(t, p) {
                true => (1.0 / (scale * p as f64 + shift).max(1.0 / far)) as f32,
                false => 0.0,
            });
        self.add(truth, depth.view())
    }

    /// The averages.
    pub fn summary(&self) -> DepthSummary {
        let n = self.images.max(1) as f64;
        DepthSummary {
            rmse: self.sums[0] / n,
            abs_rel: self.sums[1] / n,
            delta1: self.sums[2] / n,
            delta2: self.sums[3] / n,
            delta3: self.sums[4] / n,
            log10: self.sums[5] / n,
            images: self.images,
        }
    }
}

/// The least-squares `(scale, shift)` that map the first of each pair onto the second, or
/// `None` for fewer than two pairs or a constant first value.
pub fn fit_scale_shift(pairs: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64)> {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (x, y) in pairs {
        n += 1.0;
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let det = n * sxx - sx * sx;
    if n < 2.0 || det.abs() <= 1e-12 * (n * sxx).max(f64::MIN_POSITIVE) {
        return None;
    }
    let scale = (n * sxy - sx * sy) / det;
    Some((scale, (sy - scale * sx) / n))
}

/// How close a second backbone's features are to a first one's (an int8 model against its
/// fp32 original): cosine similarity of each patch token, over images.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureAgreement {
    cos_sum: f64,
    tokens: u64,
    cos_min: f64,
    cls_sum: f64,
    max_abs: f32,
    images: usize,
}

impl Default for FeatureAgreement {
    fn default() -> Self {
        FeatureAgreement {
            cos_sum: 0.0,
            tokens: 0,
            cos_min: 1.0,
            cls_sum: 0.0,
            max_abs: 0.0,
            images: 0,
        }
    }
}

/// The agreement of two backbones' features, on one image or a set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AgreementSummary {
    /// Mean cosine similarity of the patch tokens.
    pub patch_cos_mean: f64,
    /// Lowest cosine similarity of any patch token.
    pub patch_cos_min: f64,
    /// Cosine similarity of the CLS tokens (mean over images).
    pub cls_cos: f64,
    /// Largest absolute difference of any patch feature.
    pub max_abs: f32,
    /// Images.
    pub images: usize,
}

fn cosine<'a>(a: impl Iterator<Item = &'a f32>, b: impl Iterator<Item = &'a f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else {
        ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
    }
}

impl FeatureAgreement {
    /// Add one image: patch grids `[h, w, C]` and CLS tokens `[C]` of the reference `a` and
    /// of `b`. Returns this image's own agreement.
    pub fn add(
        &mut self,
        a: ArrayView3<f32>,
        b: ArrayView3<f32>,
        a_cls: ArrayView1<f32>,
        b_cls: ArrayView1<f32>,
    ) -> AgreementSummary {
        assert_eq!(a.dim(), b.dim(), "patch grids of different shapes");
        let mut one = FeatureAgreement::default();
        for (ta, tb) in a.lanes(Axis(2)).into_iter().zip(b.lanes(Axis(2))) {
            let c = cosine(ta.iter(), tb.iter());
            one.cos_sum += c;
            one.cos_min = one.cos_min.min(c);
            one.tokens += 1;
        }
        one.max_abs = a
            .iter()
            .zip(b.iter())
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        one.cls_sum = cosine(a_cls.iter(), b_cls.iter());
        one.images = 1;
        self.cos_sum += one.cos_sum;
        self.tokens += one.tokens;
        self.cos_min = self.cos_min.min(one.cos_min);
        self.cls_sum += one.cls_sum;
        self.max_abs = self.max_abs.max(one.max_abs);
        self.images += 1;
        one.summary()
    }

    /// Over every image so far (the token mean is over all tokens of all images).
    pub fn summary(&self) -> AgreementSummary {
        AgreementSummary {
            patch_cos_mean: self.cos_sum / self.tokens.max(1) as f64,
            patch_cos_min: self.cos_min,
            cls_cos: self.cls_sum / self.images.max(1) as f64,
            max_abs: self.max_abs,
            images: self.images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn feature_agreement_by_hand() {
        let a = ndarray::Array3::from_shape_vec((1, 2, 2), vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        // token 0 the same direction (cos 1), token 1 at 90 degrees (cos 0)
        let b = ndarray::Array3::from_shape_vec((1, 2, 2), vec![3.0, 0.0, 2.0, 0.0]).unwrap();
        let cls = array![1.0f32, 1.0];
        let mut f = FeatureAgreement::default();
        let one = f.add(a.view(), b.view(), cls.view(), cls.view());
        assert!((one.patch_cos_mean - 0.5).abs() < 1e-12);
        assert!(one.patch_cos_min.abs() < 1e-12);
        assert!((one.cls_cos - 1.0).abs() < 1e-12);
        assert_eq!(one.max_abs, 2.0);
        // a second, identical image: the mean is over all four tokens
        f.add(a.view(), a.view(), cls.view(), (-&cls).view());
        let s = f.summary();
        assert!((s.patch_cos_mean - 0.75).abs() < 1e-12);
        assert!(s.cls_cos.abs() < 1e-12, "1 and -1 average to 0");
        assert_eq!(s.images, 2);
    }

    #[test]
    fn iou_and_accuracy_by_hand() {
        let truth = array![[0u8, 0, 1, 1], [0, 0, 1, IGNORE]];
        let pred = array![[0u8, 1, 1, 1], [0, 0, 0, 2]];
        let mut c = Confusion::new(3);
        c.add(truth.view(), pred.view());
        assert_eq!(c.total(), 7);
        assert!((c.pixel_accuracy() - 5.0 / 7.0).abs() < 1e-12);
        let per = c.per_class();
        // class 0: tp 3, truth 4, pred 4 -> 3/5; class 1: tp 2, truth 3, pred 3 -> 2/4
        assert!((per[0].iou.unwrap() - 0.6).abs() < 1e-12);
        assert!((per[1].iou.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(per[2].iou, None); // the ignored pixel's prediction is not counted
        assert!((c.miou() - 0.55).abs() < 1e-12);
        assert_eq!(c.majority_class(), 0);
        let (miou, acc) = c.constant_baseline(0);
        assert!((acc - 4.0 / 7.0).abs() < 1e-12);
        assert!((miou - (4.0 / 7.0 + 0.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn relative_depth_is_aligned_by_scale_and_shift() {
        let truth =
            ndarray::Array2::from_shape_fn((6, 8), |(i, j)| 0.5 + 0.3 * i as f32 + 0.1 * j as f32);
        // any positive affine map of the inverse depth scores as exact
        let pred = truth.mapv(|t| 7.0 / t - 0.25);
        let mut s = DepthScores::default();
        assert!(s.add_relative(truth.view(), pred.view()));
        let d = s.summary();
        assert!(
            d.abs_rel < 1e-5 && d.rmse < 1e-5 && d.delta1 == 1.0,
            "{d:?}"
        );
        // unlabelled pixels are left out of the fit, and a constant map cannot be aligned
        let mut holes = truth.clone();
        holes[[0, 0]] = 0.0;
        let mut bad = pred.clone();
        bad[[0, 0]] = 1e6;
        let mut s = DepthScores::default();
        assert!(s.add_relative(holes.view(), bad.view()));
        assert!(s.summary().abs_rel < 1e-5);
        let flat = ndarray::Array2::from_elem((6, 8), 3.0f32);
        assert!(!DepthScores::default().add_relative(truth.view(), flat.view()));
        // a depth in place of an inverse depth is scored as wrong, not aligned away
        let mut s = DepthScores::default();
        assert!(s.add_relative(truth.view(), truth.view()));
        assert!(s.summary().abs_rel > 0.05, "{:?}", s.summary());
        assert_eq!(
            fit_scale_shift([(1.0, 3.0), (2.0, 5.0)].into_iter()),
            Some((2.0, 1.0))
        );
        assert_eq!(fit_scale_shift([(1.0, 3.0)].into_iter()), None);
    }

    #[test]
    fn depth_metrics_by_hand() {
        let truth = array![[1.0f32, 2.0], [4.0, 0.0]];
        let pred = array![[1.0f32, 3.0], [4.0, 9.0]];
        let mut d = DepthScores::default();
        assert!(d.add(truth.view(), pred.view()));
        let s = d.summary();
        assert!((s.rmse - (1.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert!((s.abs_rel - 0.5 / 3.0).abs() < 1e-9);
        assert!((s.delta1 - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.delta2 - 1.0).abs() < 1e-9);
        assert!(!d.add(array![[0.0f32]].view(), array![[1.0f32]].view()));
        assert_eq!(d.summary().images, 1);
    }
}
