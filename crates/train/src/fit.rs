//! Train-and-evaluate workflows over a labelled folder: what `dinoedge train-head` and
//! `dinoedge eval-head` run, usable from Rust the same way.

use std::collections::HashMap;

use ndarray::{Array2, Axis};

use crate::dataset::{Dataset, DepthFormat, MaskFormat, check_same_size};
use crate::featcache::Extractor;
use crate::metrics::{ClassIou, Confusion, DepthScores, DepthSummary};
use crate::trainer::{
    EpochLog, Objective, Rows, TrainOptions, TrainReport, depth_targets, seg_targets, train,
};
use dinoedge_heads::HeadsError;
use dinoedge_heads::linear::{DepthHead, DepthOutput, LinearHead, SegHead, depth_input, seg_input};

/// What to train.
#[derive(Debug, Clone)]
pub enum Task {
    /// Semantic segmentation from class masks.
    Segmentation {
        /// How masks are read (and the classes).
        format: MaskFormat,
        /// Append the last block's attention maps to the inputs.
        attention: bool,
    },
    /// Metric depth from depth maps.
    Depth {
        /// How depth maps are read.
        format: DepthFormat,
        /// Blocks read (before the final norm), e.g. `[11]` or `[2, 5, 8, 11]`.
        blocks: Vec<usize>,
        /// Bins or log-depth regression.
        output: DepthOutput,
        /// Depth range of the bins, metres.
        range: (f32, f32),
        /// Number of bins (256 in DINOv2).
        bins: usize,
    },
}

/// A loaded label.
#[derive(Debug, Clone)]
pub enum Label {
    /// Class ids, [`crate::dataset::IGNORE`] where unlabelled.
    Mask(Array2<u8>),
    /// Metres, 0 where unknown.
    Depth(Array2<f32>),
}

/// Read every depth map of `dataset` (as [`Task::load_labels`] does for a depth task): what a
/// depth model is scored on.
pub fn load_depth_maps(dataset: &Dataset, format: &DepthFormat) -> Result<Vec<Label>, HeadsError> {
    load_all(dataset, |s| {
        let d = format.load(&s.label)?;
        check_same_size(s, (d.ncols(), d.nrows()))?;
        Ok(Label::Depth(d))
    })
}

/// `load` on every sample; all failures reported together (up to ten).
fn load_all(
    dataset: &Dataset,
    load: impl Fn(&crate::dataset::Sample) -> Result<Label, HeadsError>,
) -> Result<Vec<Label>, HeadsError> {
    let mut labels = Vec::with_capacity(dataset.samples.len());
    let mut errors = Vec::new();
    for s in &dataset.samples {
        match load(s) {
            Ok(l) => labels.push(l),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        return Ok(labels);
    }
    let n = errors.len();
    let mut text: Vec<String> = errors.into_iter().take(10).collect();
    if n > 10 {
        text.push(format!("… and {} more", n - 10));
    }
    Err(HeadsError::Dataset {
        path: dataset.root.clone(),
        reason: format!("{n} bad label file(s):\n  {}", text.join("\n  ")),
    })
}

/// What a workflow reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Features of `done` of `total` images (flips included) are ready.
    Features {
        /// Done so far.
        done: usize,
        /// All of them.
        total: usize,
    },
    /// An epoch ended.
    Epoch(EpochLog),
}

impl Task {
    /// Read every label of `dataset`, checking each against its image's size. All bad files
    /// are reported together (up to ten), so a user fixes a folder in one pass.
    pub fn load_labels(&self, dataset: &Dataset) -> Result<Vec<Label>, HeadsError> {
        match self {
            Task::Segmentation { format, .. } => load_all(dataset, |s| {
                let m = format.load(&s.label)?;
                check_same_size(s, (m.ncols(), m.nrows()))?;
                Ok(Label::Mask(m))
            }),
            Task::Depth { format, .. } => load_depth_maps(dataset, format),
        }
    }

    fn outputs(&self) -> usize {
        match self {
            Task::Segmentation { format, .. } => format.classes(),
            Task::Depth {
                output: DepthOutput::LogDepth,
                ..
            } => 1,
            Task::Depth { bins, .. } => *bins,
        }
    }

    fn objective(&self) -> Objective {
        match self {
            Task::Segmentation { .. } => Objective::CrossEntropy,
            Task::Depth {
                output: DepthOutput::LogDepth,
                ..
            } => Objective::SilogLog,
            Task::Depth { range, bins, .. } => Objective::SilogBins {
                centres: (0..*bins)
                    .map(|i| range.0 + (range.1 - range.0) * i as f32 / (*bins - 1).max(1) as f32)
                    .collect(),
            },
        }
    }

    /// Rows of the images `indices` (and their mirror images when `flip`).
    pub fn rows(
        &self,
        extractor: &mut Extractor<'_>,
        dataset: &Dataset,
        labels: &[Label],
        indices: &[usize],
        flip: bool,
        mut progress: impl FnMut(Progress),
    ) -> Result<Rows, HeadsError> {
        let mut rows: Option<Rows> = None;
        let flips: &[bool] = if flip { &[false, true] } else { &[false] };
        let total = indices.len() * flips.len();
        let mut done = 0;
        for &i in indices {
            for &fl in flips {
                let f = extractor.features(&dataset.samples[i].image, fl)?;
                let (gh, gw, _) = f.patches().dim();
                let patch = extractor.patch();
                let (x, target, weight) = match (self, &labels[i]) {
                    (Task::Segmentation { format, attention }, Label::Mask(m)) => {
                        let inp = seg_input(&f, *attention)?;
                        let c = inp.dim().2;
                        let x = inp
                            .into_shape_with_order((gh * gw, c))
                            .map_err(|e| HeadsError::Shape(e.to_string()))?;
                        let (q, w) = seg_targets(m.view(), (gh, gw), patch, format.classes(), fl);
                        (x, q, w)
                    }
                    (Task::Depth { .. }, Label::Depth(d)) => {
                        let x = depth_input(&f)?;
                        let (t, w) = depth_targets(d.view(), (gh, gw), patch, fl);
                        (x, t.insert_axis(Axis(1)), w)
                    }
                    _ => return Err(HeadsError::Shape("labels of another task".into())),
                };
                let r = rows.get_or_insert_with(|| Rows::new(x.ncols(), target.ncols()));
                r.push(i, x.view(), target.view(), weight.view())?;
                done += 1;
                progress(Progress::Features { done, total });
            }
        }
        Ok(rows.unwrap_or_else(|| Rows::new(0, self.outputs())))
    }

    /// Train on `train_idx` (flipped too when `flip`), validating on `val_idx`, and build the
    /// head. `metadata` is stored in the head (backbone hash, resolution, …).
    #[allow(clippy::too_many_arguments)]
    pub fn train(
        &self,
        extractor: &mut Extractor<'_>,
        dataset: &Dataset,
        labels: &[Label],
        (train_idx, val_idx): (&[usize], &[usize]),
        flip: bool,
        options: &TrainOptions,
        attention_heads: usize,
        mut metadata: HashMap<String, String>,
        mut progress: impl FnMut(Progress),
    ) -> Result<(LinearHead, TrainReport), HeadsError> {
        let train_rows = self.rows(extractor, dataset, labels, train_idx, flip, &mut progress)?;
        let mut val_rows = self.rows(extractor, dataset, labels, val_idx, false, |_| {})?;
        if val_rows.is_empty() {
            val_rows = Rows::new(train_rows.x.ncols(), train_rows.target.ncols());
        }
        let t = train(
            &train_rows,
            &val_rows,
            self.outputs(),
            &self.objective(),
            options,
            |e| progress(Progress::Epoch(*e)),
        )?;
        metadata.insert(
            "training".into(),
            serde_json::json!({
                "epochs": t.report.epochs.len(),
                "best_epoch": t.report.best_epoch,
                "stopped_early": t.report.stopped_early,
                "train_rows": t.report.rows.0,
                "val_rows": t.report.rows.1,
                "train_images": train_idx.len(),
                "val_images": val_idx.len(),
                "flip": flip,
                "lr": options.lr,
                "batch": options.batch,
            })
            .to_string(),
        );
        let head = match self {
            Task::Segmentation { format, attention } => {
                metadata.insert("ignore_index".into(), format.ignore_index.to_string());
                LinearHead::Seg(SegHead::from_trained(
                    t.weight,
                    t.bias,
                    format.palette.clone(),
                    if *attention { attention_heads } else { 0 },
                    metadata,
                )?)
            }
            Task::Depth {
                blocks,
                output,
                range,
                ..
            } => LinearHead::Depth(DepthHead::from_trained(
                t.weight,
                t.bias,
                blocks.clone(),
                *output,
                *range,
                metadata,
            )?),
        };
        Ok((head, t.report))
    }
}

/// Scores of a head on labelled images.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// Segmentation.
    Segmentation {
        /// The confusion matrix over all images.
        confusion: Confusion,
        /// Class names.
        names: Vec<String>,
    },
    /// Depth.
    Depth(DepthSummary),
}

impl Evaluation {
    /// Score `head` on the images `indices` at their full resolution (logits upsampled
    /// bilinearly to the label's size, as at inference).
    pub fn run(
        head: &LinearHead,
        extractor: &mut Extractor<'_>,
        dataset: &Dataset,
        labels: &[Label],
        indices: &[usize],
        mut progress: impl FnMut(Progress),
    ) -> Result<Evaluation, HeadsError> {
        let mut confusion = match head {
            LinearHead::Seg(s) => Some(Confusion::new(s.classes())),
            LinearHead::Depth(_) => None,
        };
        let mut depth = DepthScores::default();
        for (n, &i) in indices.iter().enumerate() {
            let f = extractor.features(&dataset.samples[i].image, false)?;
            match (head, &labels[i]) {
                (LinearHead::Seg(s), Label::Mask(m)) => {
                    let (h, w) = m.dim();
                    if let Some(&bad) = m
                        .iter()
                        .find(|&&c| c != crate::dataset::IGNORE && c as usize >= s.classes())
                    {
                        return Err(HeadsError::Incompatible(format!(
                            "{} has class {bad} but the head has {} classes",
                            dataset.samples[i].label.display(),
                            s.classes()
                        )));
                    }
                    let out = s.predict_features(&f, h, w)?;
                    confusion
                        .as_mut()
                        .expect("seg")
                        .add(m.view(), out.labels.view());
                }
                (LinearHead::Depth(d), Label::Depth(t)) => {
                    let (h, w) = t.dim();
                    let pred = d.predict_features(&f, h, w)?;
                    depth.add(t.view(), pred.view());
                }
                _ => {
                    return Err(HeadsError::Incompatible(
                        "a segmentation head needs masks and a depth head depth maps".into(),
                    ));
                }
            }
            progress(Progress::Features {
                done: n + 1,
                total: indices.len(),
            });
        }
        Ok(match head {
            LinearHead::Seg(s) => Evaluation::Segmentation {
                confusion: confusion.expect("seg"),
                names: s.palette.names.clone(),
            },
            LinearHead::Depth(_) => Evaluation::Depth(depth.summary()),
        })
    }

    /// Score the depth a model gives itself (Depth Anything V2) on the images `indices` at
    /// their full resolution (the map resized bilinearly to the label's size): metric depth
    /// as it is; a `relative` inverse depth aligned per image by scale and shift
    /// ([`DepthScores::add_relative`]). `extractor` must run the backbone (no feature cache:
    /// it keeps no depth maps).
    pub fn model_depth(
        extractor: &mut Extractor<'_>,
        dataset: &Dataset,
        labels: &[Label],
        indices: &[usize],
        relative: bool,
        mut progress: impl FnMut(Progress),
    ) -> Result<Evaluation, HeadsError> {
        let mut scores = DepthScores::default();
        for (n, &i) in indices.iter().enumerate() {
            let path = &dataset.samples[i].image;
            let Label::Depth(truth) = &labels[i] else {
                return Err(HeadsError::Incompatible(
                    "a depth model is scored on depth maps, not class masks".into(),
                ));
            };
            let f = extractor.features(path, false)?;
            let depth = f.depth.as_ref().ok_or_else(|| {
                HeadsError::Incompatible(format!(
                    "{}: the model gave no depth map (is it a depth model?)",
                    path.display()
                ))
            })?;
            let (h, w) = truth.dim();
            let (dh, dw) = depth.dim();
            let planes = depth
                .view()
                .into_shape_with_order((1, dh, dw))
                .map_err(|e| HeadsError::Incompatible(e.to_string()))?;
            let pred = dinoedge_heads::resize::resize_bilinear(planes, h, w);
            let pred = pred.index_axis(Axis(0), 0);
            match relative {
                true => scores.add_relative(truth.view(), pred),
                false => scores.add(truth.view(), pred),
            };
            progress(Progress::Features {
                done: n + 1,
                total: indices.len(),
            });
        }
        Ok(Evaluation::Depth(scores.summary()))
    }

    /// The scores as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Evaluation::Segmentation { confusion, names } => {
                let per: Vec<serde_json::Value> = confusion
                    .per_class()
                    .into_iter()
                    .filter(|c: &ClassIou| c.pixels > 0 || c.iou.is_some())
                    .map(|c| {
                        serde_json::json!({
                            "class": c.class,
                            "name": names.get(c.class),
                            "iou": c.iou,
                            "pixels": c.pixels,
                        })
                    })
                    .collect();
                let majority = confusion.majority_class();
                let (bm, ba) = confusion.constant_baseline(majority);
                serde_json::json!({
                    "task": "segmentation",
                    "miou": confusion.miou(),
                    "pixel_accuracy": confusion.pixel_accuracy(),
                    "pixels": confusion.total(),
                    "classes": per,
                    "majority_baseline": {
                        "class": majority,
                        "miou": bm,
                        "pixel_accuracy": ba,
                    },
                })
            }
            Evaluation::Depth(d) => {
                let mut v = serde_json::to_value(d).expect("plain numbers");
                v["task"] = "depth".into();
                v
            }
        }
    }

    /// The scores as a text table.
    pub fn table(&self) -> String {
        match self {
            Evaluation::Segmentation { confusion, names } => {
                let mut out = String::new();
                out.push_str(&format!(
                    "{:<4} {:<16} {:>8} {:>10}\n",
                    "id", "class", "IoU", "pixels"
                ));
                for c in confusion.per_class() {
                    if c.pixels == 0 && c.iou.is_none() {
                        continue;
                    }
                    let name = names.get(c.class).map(String::as_str).unwrap_or("?");
                    // a class only predicted, never labelled, does not count in the mIoU
                    let iou = match c.iou {
                        Some(v) if c.pixels > 0 => format!("{:.1} %", 100.0 * v),
                        _ => "-".into(),
                    };
                    out.push_str(&format!(
                        "{:<4} {:<16} {:>8} {:>10}\n",
                        c.class, name, iou, c.pixels
                    ));
                }
                let majority = confusion.majority_class();
                let (bm, ba) = confusion.constant_baseline(majority);
                out.push_str(&format!(
                    "mIoU {:.1} %, pixel accuracy {:.1} % over {} labelled pixels\n\
                     (predicting the majority class \"{}\" everywhere: mIoU {:.1} %, pixel accuracy {:.1} %)\n",
                    100.0 * confusion.miou(),
                    100.0 * confusion.pixel_accuracy(),
                    confusion.total(),
                    names.get(majority).map(String::as_str).unwrap_or("?"),
                    100.0 * bm,
                    100.0 * ba
                ));
                out
            }
            Evaluation::Depth(d) => format!(
                "{:<8} {:>8}\n{:<8} {:>8.3}\n{:<8} {:>8.3}\n{:<8} {:>8.3}\n{:<8} {:>8.3}\n{:<8} {:>8.3}\n{:<8} {:>8.3}\nover {} images\n",
                "metric",
                "value",
                "RMSE m",
                d.rmse,
                "AbsRel",
                d.abs_rel,
                "δ<1.25",
                d.delta1,
                "δ<1.25²",
                d.delta2,
                "δ<1.25³",
                d.delta3,
                "log10",
                d.log10,
                d.images
            ),
        }
    }
}
