//! Training linear heads on cached features, with `ndarray` on the CPU: softmax
//! cross-entropy with an ignore label for segmentation, the scale-invariant log loss for depth
//! (over DINOv2's 256 "UD" bins, or as a direct log-depth regression). AdamW, shuffled
//! mini-batches split over threads, a validation split with early stopping on its loss, and
//! the best epoch's weights kept.
//!
//! Training runs at patch resolution: a patch's target is the fraction of each class among
//! its labelled pixels (segmentation) or the mean log depth of its valid pixels (depth), with
//! the labelled fraction as the patch's weight. Inputs are standardised per channel for the
//! optimiser and the standardisation is folded back into the saved weights, so a trained head
//! is one `[outputs, channels]` matrix and a bias, like the released ones.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};

use crate::dataset::IGNORE;
use crate::metrics::Confusion;
use dinoedge_heads::HeadsError;

/// Visit every pixel of a stretched model input of `grid * patch` pixels with its patch
/// (row-major index) and the label pixel it comes from (nearest, mirrored when `flip`).
fn for_each_input_pixel(
    label: (usize, usize),
    grid: (usize, usize),
    patch: usize,
    flip: bool,
    mut visit: impl FnMut(usize, usize, usize),
) {
    let (mh, mw) = label;
    let (gh, gw) = grid;
    let (ih, iw) = (gh * patch, gw * patch);
    if mh == 0 || mw == 0 {
        return;
    }
    let xs: Vec<usize> = (0..iw)
        .map(|x| {
            let mx = (((x as f64 + 0.5) * mw as f64 / iw as f64) as usize).min(mw - 1);
            if flip { mw - 1 - mx } else { mx }
        })
        .collect();
    for y in 0..ih {
        let my = (((y as f64 + 0.5) * mh as f64 / ih as f64) as usize).min(mh - 1);
        for (x, &mx) in xs.iter().enumerate() {
            visit((y / patch) * gw + x / patch, my, mx);
        }
    }
}

/// Per-patch class fractions of a class-id mask, for a `grid` of patches over a stretched
/// model input of `grid * patch` pixels: `([gh * gw, k] fractions of labelled pixels,
/// [gh * gw] labelled fraction)`. `flip` mirrors the mask left-right first.
pub fn seg_targets(
    mask: ArrayView2<u8>,
    grid: (usize, usize),
    patch: usize,
    k: usize,
    flip: bool,
) -> (Array2<f32>, Array1<f32>) {
    let n = grid.0 * grid.1;
    let mut counts = Array2::<f32>::zeros((n, k));
    let mut valid = Array1::<f32>::zeros(n);
    for_each_input_pixel(mask.dim(), grid, patch, flip, |row, my, mx| {
        let c = mask[(my, mx)];
        if c != IGNORE && (c as usize) < k {
            counts[(row, c as usize)] += 1.0;
            valid[row] += 1.0;
        }
    });
    for (mut r, v) in counts.axis_iter_mut(Axis(0)).zip(valid.iter_mut()) {
        if *v > 0.0 {
            r /= *v;
        }
        *v /= (patch * patch) as f32;
    }
    (counts, valid)
}

/// Per-patch mean log depth of the valid (> 0) pixels, and the valid fraction, like
/// [`seg_targets`].
pub fn depth_targets(
    depth: ArrayView2<f32>,
    grid: (usize, usize),
    patch: usize,
    flip: bool,
) -> (Array1<f32>, Array1<f32>) {
    let n = grid.0 * grid.1;
    let mut sum = Array1::<f32>::zeros(n);
    let mut valid = Array1::<f32>::zeros(n);
    for_each_input_pixel(depth.dim(), grid, patch, flip, |row, my, mx| {
        let d = depth[(my, mx)];
        if d > 0.0 && d.is_finite() {
            sum[row] += d.ln();
            valid[row] += 1.0;
        }
    });
    let mean = Array1::from_shape_fn(n, |i| {
        if valid[i] > 0.0 {
            sum[i] / valid[i]
        } else {
            0.0
        }
    });
    (mean, valid / (patch * patch) as f32)
}

/// What a head learns.
#[derive(Debug, Clone)]
pub enum Objective {
    /// Softmax cross-entropy over `k` classes against per-row class fractions.
    CrossEntropy,
    /// Scale-invariant log loss on depth from bins: `depth = Σ p_b c_b` with
    /// `p = (relu(logits) + 0.1) / Σ(relu(logits) + 0.1)` over the bin centres `c`.
    SilogBins {
        /// Bin centres, metres.
        centres: Vec<f32>,
    },
    /// Scale-invariant log loss on `depth = exp(logit)` (one output).
    SilogLog,
}

/// The `λ` of the scale-invariant loss (DINOv2's `SigLoss` uses 0.15 of the mean term
/// kept, i.e. `var(g) + 0.15 mean(g)²`).
const SILOG_KEEP: f32 = 0.15;

/// Training rows: inputs, a weight per row and the targets.
#[derive(Debug, Clone)]
pub struct Rows {
    /// `[N, C]` inputs.
    pub x: Array2<f32>,
    /// `[N]` weights (labelled fraction); rows of weight 0 are dropped by [`Rows::push`].
    pub weight: Vec<f32>,
    /// `[N, K]` class fractions (segmentation) or `[N, 1]` log depth.
    pub target: Array2<f32>,
    /// Which image each row came from.
    pub image: Vec<usize>,
}

impl Rows {
    /// No rows yet, for `channels` inputs and `targets` target columns.
    pub fn new(channels: usize, targets: usize) -> Rows {
        Rows {
            x: Array2::zeros((0, channels)),
            weight: vec![],
            target: Array2::zeros((0, targets)),
            image: vec![],
        }
    }

    /// Add an image's rows, keeping those with a weight above 0.
    pub fn push(
        &mut self,
        image: usize,
        x: ArrayView2<f32>,
        target: ArrayView2<f32>,
        weight: ArrayView1<f32>,
    ) -> Result<(), HeadsError> {
        if x.ncols() != self.x.ncols() || target.ncols() != self.target.ncols() {
            return Err(HeadsError::Shape(format!(
                "rows of {} inputs / {} targets added to a set of {} / {}",
                x.ncols(),
                target.ncols(),
                self.x.ncols(),
                self.target.ncols()
            )));
        }
        let keep: Vec<usize> = (0..x.nrows()).filter(|&i| weight[i] > 0.0).collect();
        let grow = |dst: &mut Array2<f32>, src: ArrayView2<f32>| {
            let mut data = std::mem::take(dst).into_raw_vec_and_offset().0;
            for &i in &keep {
                data.extend(src.row(i).iter());
            }
            let rows = data.len() / src.ncols().max(1);
            *dst = Array2::from_shape_vec((rows, src.ncols()), data).expect("whole rows");
        };
        grow(&mut self.x, x);
        grow(&mut self.target, target);
        self.weight.extend(keep.iter().map(|&i| weight[i]));
        self.image.extend(keep.iter().map(|_| image));
        Ok(())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.weight.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }
}

/// Optimiser and schedule.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Most epochs.
    pub epochs: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Rows per step.
    pub batch: usize,
    /// Stop after this many epochs without a better validation loss (0: never stop early).
    pub patience: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// Threads for the forward and backward passes.
    pub threads: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 100,
            lr: 3e-3,
            weight_decay: 1e-4,
            batch: 512,
            patience: 10,
            seed: 0,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One epoch's numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (weighted by rows).
    pub train_loss: f32,
    /// Validation loss after the epoch (training loss of the final weights when there is no
    /// validation set).
    pub val_loss: Option<f32>,
    /// Validation metric at patch level: mIoU (segmentation) or AbsRel (depth).
    pub val_metric: Option<f32>,
    /// Seconds the epoch took.
    pub seconds: f32,
}

/// What training did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// Every epoch run.
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
    /// Training rows (patches, flips included) and validation rows.
    pub rows: (usize, usize),
}

/// A trained linear map in the original (unstandardised) input space.
#[derive(Debug, Clone)]
pub struct Trained {
    /// `[outputs, channels]`.
    pub weight: Array2<f32>,
    /// `[outputs]`.
    pub bias: Array1<f32>,
    /// The training history.
    pub report: TrainReport,
}

struct Adam {
    m: Array2<f32>,
    v: Array2<f32>,
    mb: Array1<f32>,
    vb: Array1<f32>,
    t: i32,
}

impl Adam {
    fn step(
        &mut self,
        w: &mut Array2<f32>,
        b: &mut Array1<f32>,
        gw: &Array2<f32>,
        gb: &Array1<f32>,
        o: &TrainOptions,
    ) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        ndarray::Zip::from(&mut *w)
            .and(&mut self.m)
            .and(&mut self.v)
            .and(gw)
            .for_each(|w, m, v, &g| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *w -= o.lr * (o.weight_decay * *w + (*m / c1) / ((*v / c2).sqrt() + EPS));
            });
        ndarray::Zip::from(&mut *b)
            .and(&mut self.mb)
            .and(&mut self.vb)
            .and(gb)
            .for_each(|b, m, v, &g| {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *b -= o.lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
            });
    }
}

/// The rows `idx` of a standard-layout matrix (ndarray's `select` copies element by element).
fn gather(a: &Array2<f32>, idx: &[usize]) -> Array2<f32> {
    let c = a.ncols();
    let src = a.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(idx.len() * c);
    for &i in idx {
        out.extend_from_slice(&src[i * c..(i + 1) * c]);
    }
    Array2::from_shape_vec((idx.len(), c), out).expect("whole rows")
}

/// Rows split over `threads` scoped threads, each producing a value; results in order.
fn par_chunks<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    let threads = threads.clamp(1, n.div_ceil(64).max(1));
    if threads == 1 {
        return vec![f(0..n)];
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let r = (t * per).min(n)..((t + 1) * per).min(n);
                let f = &f;
                sc.spawn(move || f(r))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("training thread panicked"))
            .collect()
    })
}

/// Logits `[n, K]` of standardised rows.
fn logits(x: ArrayView2<f32>, w: &Array2<f32>, b: &Array1<f32>, threads: usize) -> Array2<f32> {
    let parts = par_chunks(x.nrows(), threads, |r| {
        let mut z = x.slice(s![r, ..]).dot(&w.t());
        z += &b.view().insert_axis(Axis(0));
        z
    });
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).expect("same widths")
}

/// Bin probabilities' normaliser input: `relu(z) + 0.1`.
fn bin_mass(z: f32) -> f32 {
    z.max(0.0) + 0.1
}

/// Depth of one row of bin logits: the bin centres weighted by their normalised mass.
fn bins_depth(z: ndarray::ArrayView1<f32>, centres: &[f32]) -> f32 {
    let s: f32 = z.iter().map(|&v| bin_mass(v)).sum();
    z.iter()
        .zip(centres)
        .map(|(&v, c)| bin_mass(v) * c)
        .sum::<f32>()
        / s
}

/// Loss of a batch and `d loss / d logits`.
fn loss_and_grad(
    z: &Array2<f32>,
    target: ArrayView2<f32>,
    weight: &[f32],
    objective: &Objective,
) -> (f32, Array2<f32>) {
    let wsum: f32 = weight.iter().sum::<f32>().max(1e-12);
    let mut g = Array2::<f32>::zeros(z.dim());
    match objective {
        Objective::CrossEntropy => {
            let mut loss = 0f32;
            for (i, (zr, mut gr)) in z.outer_iter().zip(g.outer_iter_mut()).enumerate() {
                let max = zr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = zr.iter().map(|v| (v - max).exp()).sum();
                let lse = max + sum.ln();
                let q = target.row(i);
                let qs: f32 = q.sum();
                let wi = weight[i] / wsum;
                for k in 0..zr.len() {
                    let p = (zr[k] - lse).exp();
                    loss -= wi * q[k] * (zr[k] - lse);
                    gr[k] = wi * (p * qs - q[k]);
                }
            }
            (loss, g)
        }
        Objective::SilogBins { .. } | Objective::SilogLog => {
            // log prediction per row, and d log pred / d z
            let n = z.nrows();
            let mut logp = vec![0f32; n];
            for i in 0..n {
                logp[i] = match objective {
                    Objective::SilogLog => z[(i, 0)],
                    Objective::SilogBins { centres } => {
                        bins_depth(z.row(i), centres).max(1e-6).ln()
                    }
                    Objective::CrossEntropy => unreachable!(),
                };
            }
            let gdiff: Vec<f32> = (0..n).map(|i| logp[i] - target[(i, 0)]).collect();
            let mean: f32 = (0..n).map(|i| weight[i] * gdiff[i]).sum::<f32>() / wsum;
            let mean2: f32 = (0..n).map(|i| weight[i] * gdiff[i] * gdiff[i]).sum::<f32>() / wsum;
            let dg = (mean2 - (1.0 - SILOG_KEEP) * mean * mean).max(1e-12);
            let loss = dg.sqrt();
            for i in 0..n {
                // d loss / d g_i
                let dl = (weight[i] / wsum) * (gdiff[i] - (1.0 - SILOG_KEEP) * mean) / loss;
                match objective {
                    Objective::SilogLog => g[(i, 0)] = dl,
                    Objective::SilogBins { centres } => {
                        let zr = z.row(i);
                        let s: f32 = zr.iter().map(|&v| bin_mass(v)).sum();
                        let pred = logp[i].exp();
                        for (k, (&v, c)) in zr.iter().zip(centres).enumerate() {
                            if v > 0.0 {
                                // d log pred / d z_k = (c_k - pred) / (s * pred)
                                g[(i, k)] = dl * (c - pred) / (s * pred);
                            }
                        }
                    }
                    Objective::CrossEntropy => unreachable!(),
                }
            }
            (loss, g)
        }
    }
}

/// Patch-level metric: mIoU over argmax classes for segmentation (rows at least half
/// labelled), mean AbsRel of the depth for depth.
fn metric(z: &Array2<f32>, target: ArrayView2<f32>, weight: &[f32], objective: &Objective) -> f32 {
    match objective {
        Objective::CrossEntropy => {
            let k = z.ncols();
            let mut c = Confusion::new(k);
            for (i, &wi) in weight.iter().enumerate().take(z.nrows()) {
                if wi < 0.5 {
                    continue;
                }
                let argmax = |r: ArrayView1<f32>| {
                    r.iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                        )
                        .0
                };
                c.add_one(argmax(target.row(i)), argmax(z.row(i)));
            }
            c.miou() as f32
        }
        Objective::SilogBins { centres } => {
            let mut sum = 0f32;
            for i in 0..z.nrows() {
                let d = bins_depth(z.row(i), centres);
                let t = target[(i, 0)].exp();
                sum += (d - t).abs() / t;
            }
            sum / z.nrows().max(1) as f32
        }
        Objective::SilogLog => {
            let mut sum = 0f32;
            for i in 0..z.nrows() {
                let t = target[(i, 0)].exp();
                sum += (z[(i, 0)].exp() - t).abs() / t;
            }
            sum / z.nrows().max(1) as f32
        }
    }
}

/// Train a linear head on `train` rows, validating on `val` (may be empty), calling
/// `on_epoch` after every epoch (for a progress bar).
pub fn train(
    train: &Rows,
    val: &Rows,
    outputs: usize,
    objective: &Objective,
    options: &TrainOptions,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<Trained, HeadsError> {
    if train.is_empty() {
        return Err(HeadsError::Empty(
            "no labelled patches in the training images".into(),
        ));
    }
    if options.batch == 0 || options.epochs == 0 || options.lr.is_nan() || options.lr <= 0.0 {
        return Err(HeadsError::InvalidOption(
            "epochs, batch and learning rate must be above 0".into(),
        ));
    }
    let c = train.x.ncols();
    // standardise with the training rows' statistics
    let mean = train.x.mean_axis(Axis(0)).expect("rows");
    let std = train
        .x
        .var_axis(Axis(0), 0.0)
        .mapv(|v| if v > 1e-12 { v.sqrt() } else { 1.0 });
    let standardise =
        |x: &Array2<f32>| (x - &mean.view().insert_axis(Axis(0))) / std.view().insert_axis(Axis(0));
    let xt = standardise(&train.x).as_standard_layout().into_owned();
    let targets = train.target.as_standard_layout().into_owned();
    let xv = standardise(&val.x);

    let mut w = Array2::<f32>::zeros((outputs, c));
    let mut b = Array1::<f32>::zeros(outputs);
    match objective {
        Objective::SilogBins { .. } => {
            // every bin active at the start (relu'(0) = 0 would freeze them)
            let mut rng = fastrand::Rng::with_seed(options.seed ^ 0x5eed);
            w.mapv_inplace(|_| (rng.f32() - 0.5) * 0.02);
            b.fill(1.0);
        }
        Objective::SilogLog => {
            let wsum: f32 = train.weight.iter().sum();
            b[0] = train
                .target
                .column(0)
                .iter()
                .zip(&train.weight)
                .map(|(t, w)| t * w)
                .sum::<f32>()
                / wsum;
        }
        Objective::CrossEntropy => {}
    }
    let mut adam = Adam {
        m: Array2::zeros(w.dim()),
        v: Array2::zeros(w.dim()),
        mb: Array1::zeros(outputs),
        vb: Array1::zeros(outputs),
        t: 0,
    };
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut best = (f32::INFINITY, w.clone(), b.clone(), 0usize);
    let mut epochs = Vec::new();
    let mut bad = 0usize;
    let mut stopped_early = false;
    for epoch in 1..=options.epochs {
        let t0 = std::time::Instant::now();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut rows) = (0f32, 0usize);
        for batch in order.chunks(options.batch) {
            let xb = gather(&xt, batch);
            let tb = gather(&targets, batch);
            let wb: Vec<f32> = batch.iter().map(|&i| train.weight[i]).collect();
            let z = logits(xb.view(), &w, &b, options.threads);
            let (loss, gz) = loss_and_grad(&z, tb.view(), &wb, objective);
            if !loss.is_finite() {
                return Err(HeadsError::InvalidOption(format!(
                    "the loss diverged at epoch {epoch} (learning rate {} too high?)",
                    options.lr
                )));
            }
            let parts = par_chunks(batch.len(), options.threads, |r| {
                gz.slice(s![r.clone(), ..]).t().dot(&xb.slice(s![r, ..]))
            });
            let mut gw = Array2::<f32>::zeros(w.dim());
            for p in parts {
                gw += &p;
            }
            let gb = gz.sum_axis(Axis(0));
            adam.step(&mut w, &mut b, &gw, &gb, options);
            loss_sum += loss * batch.len() as f32;
            rows += batch.len();
        }
        let train_loss = loss_sum / rows as f32;
        let (val_loss, val_metric) = if val.is_empty() {
            let z = logits(xt.view(), &w, &b, options.threads);
            let (l, _) = loss_and_grad(&z, train.target.view(), &train.weight, objective);
            (l, metric(&z, train.target.view(), &train.weight, objective))
        } else {
            let z = logits(xv.view(), &w, &b, options.threads);
            let (l, _) = loss_and_grad(&z, val.target.view(), &val.weight, objective);
            (l, metric(&z, val.target.view(), &val.weight, objective))
        };
        let log = EpochLog {
            epoch,
            train_loss,
            val_loss: Some(val_loss),
            val_metric: Some(val_metric),
            seconds: t0.elapsed().as_secs_f32(),
        };
        on_epoch(&log);
        epochs.push(log);
        if !best.0.is_finite() || val_loss < best.0 - 1e-5 * best.0.abs().max(1e-3) {
            best = (val_loss, w.clone(), b.clone(), epoch);
            bad = 0;
        } else {
            bad += 1;
            if options.patience > 0 && bad >= options.patience {
                stopped_early = true;
                break;
            }
        }
    }
    let (_, w, b, best_epoch) = best;
    // fold the standardisation: W' = W / std, b' = b - W' mean
    let wf = &w / &std.view().insert_axis(Axis(0));
    let bf = &b - &wf.dot(&mean);
    Ok(Trained {
        weight: wf,
        bias: bf,
        report: TrainReport {
            epochs,
            best_epoch,
            stopped_early,
            rows: (train.len(), val.len()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_targets_count_labelled_pixels() {
        // 4x4 mask, 2x2 grid of 2-pixel patches: left half class 1, top-right ignored
        let mut mask = Array2::<u8>::from_elem((4, 4), 1);
        mask.slice_mut(s![0..2, 2..4]).fill(IGNORE);
        mask.slice_mut(s![2..4, 2..4]).fill(0);
        mask[(3, 3)] = 2;
        let (q, v) = seg_targets(mask.view(), (2, 2), 2, 3, false);
        assert_eq!(v.to_vec(), vec![1.0, 0.0, 1.0, 1.0]);
        assert_eq!(q.row(0).to_vec(), vec![0.0, 1.0, 0.0]);
        assert_eq!(q.row(3).to_vec(), vec![0.75, 0.0, 0.25]);
        let (qf, vf) = seg_targets(mask.view(), (2, 2), 2, 3, true);
        assert_eq!(vf.to_vec(), vec![0.0, 1.0, 1.0, 1.0]);
        assert_eq!(qf.row(2), q.row(3));
        let depth = Array2::from_shape_fn((4, 4), |(y, _)| if y == 0 { 0.0 } else { 2.0f32 });
        let (d, v) = depth_targets(depth.view(), (2, 2), 2, false);
        assert_eq!(v.to_vec(), vec![0.5, 0.5, 1.0, 1.0]);
        assert!((d[0] - 2f32.ln()).abs() < 1e-6);
    }

    /// Finite differences agree with the analytic gradients of all three objectives.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = fastrand::Rng::with_seed(3);
        let n = 6;
        let centres: Vec<f32> = (0..5).map(|i| 0.5 + i as f32).collect();
        let cases = [
            (Objective::CrossEntropy, 4),
            (Objective::SilogBins { centres }, 5),
            (Objective::SilogLog, 1),
        ];
        for (obj, k) in cases {
            let z = Array2::from_shape_fn((n, k), |_| rng.f32() * 2.0 - 0.3);
            let target = match obj {
                Objective::CrossEntropy => {
                    let mut t = Array2::from_shape_fn((n, k), |_| rng.f32());
                    for mut r in t.outer_iter_mut() {
                        let s = r.sum();
                        r /= s;
                    }
                    t
                }
                _ => Array2::from_shape_fn((n, 1), |_| rng.f32() * 1.5),
            };
            let weight: Vec<f32> = (0..n).map(|_| 0.3 + rng.f32()).collect();
            let (_, g) = loss_and_grad(&z, target.view(), &weight, &obj);
            for i in 0..n {
                for j in 0..k {
                    if matches!(obj, Objective::SilogBins { .. }) && z[(i, j)].abs() < 1e-2 {
                        continue; // relu kink
                    }
                    let h = 1e-3;
                    let mut zp = z.clone();
                    zp[(i, j)] += h;
                    let mut zm = z.clone();
                    zm[(i, j)] -= h;
                    let fd = (loss_and_grad(&zp, target.view(), &weight, &obj).0
                        - loss_and_grad(&zm, target.view(), &weight, &obj).0)
                        / (2.0 * h);
                    assert!(
                        (fd - g[(i, j)]).abs() < 2e-3,
                        "{obj:?} ({i},{j}): numeric {fd} analytic {}",
                        g[(i, j)]
                    );
                }
            }
        }
    }

    /// Two separable classes are learnt; the folded weights work on raw inputs.
    #[test]
    fn learns_a_separable_problem() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut rows = Rows::new(3, 2);
        for i in 0..400 {
            let c = i % 2;
            let x = ndarray::array![[100.0 + rng.f32() + c as f32 * 2.0, rng.f32() * 50.0, 7.0]];
            let mut t = ndarray::array![[0.0f32, 0.0]];
            t[(0, c)] = 1.0;
            rows.push(0, x.view(), t.view(), ndarray::array![1.0f32].view())
                .unwrap();
        }
        let opts = TrainOptions {
            epochs: 60,
            lr: 0.05,
            threads: 2,
            batch: 64,
            ..Default::default()
        };
        let mut seen = 0;
        let t = train(
            &rows,
            &Rows::new(3, 2),
            2,
            &Objective::CrossEntropy,
            &opts,
            |_| seen += 1,
        )
        .unwrap();
        assert_eq!(seen, t.report.epochs.len());
        let first = t.report.epochs[0].train_loss;
        let last = t.report.epochs.last().unwrap().val_loss.unwrap();
        assert!(last < first * 0.5, "loss {first} -> {last}");
        let z = rows.x.dot(&t.weight.t()) + t.bias.view().insert_axis(Axis(0));
        let right = (0..rows.len())
            .filter(|&i| (z[(i, 1)] > z[(i, 0)]) == (i % 2 == 1))
            .count();
        assert!(right > 380, "{right}/400 right");
    }
}
