//! `dinoedge compare A B IMAGES...`: how far model B (an int8 export, say) is from model A (its
//! fp32 original) on the user's own images — patch-feature cosine similarity, and with a head
//! the segmentation agreement (mIoU of B's classes against A's) and depth AbsRel between them.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use dinoedge_heads::LinearHead;
use dinoedge_model::{Backbone, Features, ResizeMode, Resolution, load_rgb};
use dinoedge_train::metrics::{AgreementSummary, Confusion, DepthScores, FeatureAgreement};
use ndarray::Array4;

use super::{ModelArgs, head_options, progress};

/// Arguments of `dinoedge compare`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reference model (the fp32 original), a path or a fetched name.
    #[arg(value_parser = crate::cmd::fetch::model_ref)]
    reference: PathBuf,
    /// The model to judge against it (int8, QDQ, another export).
    #[arg(value_parser = crate::cmd::fetch::model_ref)]
    candidate: PathBuf,
    /// Images (PNG/JPEG), or preprocessed `[1,3,H,W]` float32 `.npy` tensors (run as they are).
    #[arg(required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// A head (released .pth, trained .safetensors, or a fetched name): adds segmentation mIoU
    /// or depth AbsRel between the two models' outputs.
    #[arg(long, value_parser = crate::cmd::fetch::model_ref)]
    head: Option<PathBuf>,
    /// Depth heads: the largest bin depth in metres (default: from the checkpoint).
    #[arg(long)]
    max_depth: Option<f32>,
    /// Input size HxW, multiples of 14 (default: the model's, or the size of the .npy inputs).
    #[arg(long, short)]
    size: Option<Resolution>,
    /// Backbone threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where both backbones run: `cpu`, `cuda` or `cuda-or-cpu` (see `dinoedge run --help`).
    #[arg(long, default_value = "cpu", value_parser = super::parse_runtime)]
    runtime: dinoedge_model::Runtime,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One row of the table.
#[derive(serde::Serialize)]
struct Row {
    image: String,
    #[serde(flatten)]
    features: AgreementSummary,
    seg_miou: Option<f64>,
    seg_pixel_agreement: Option<f64>,
    depth_abs_rel: Option<f64>,
    depth_rmse_m: Option<f64>,
}

enum Input {
    Image(image::RgbImage),
    Tensor(Array4<f32>),
}

fn read_input(path: &PathBuf) -> Result<Input> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let x: Array4<f32> = ndarray_npy::read_npy(path)
            .with_context(|| format!("reading {} as a [1,3,H,W] float32 tensor", path.display()))?;
        let (n, c, h, w) = x.dim();
        ensure!(
            n == 1 && c == 3,
            "{}: shape [{n},{c},{h},{w}], expected [1,3,H,W]",
            path.display()
        );
        Ok(Input::Tensor(x))
    } else {
        Ok(Input::Image(load_rgb(path)?))
    }
}

/// Run `dinoedge compare`.
pub fn run(args: Args) -> Result<()> {
    let head = match &args.head {
        Some(p) => Some(
            LinearHead::load(p, args.max_depth)
                .with_context(|| format!("loading the head {}", p.display()))?,
        ),
        None => None,
    };
    // .npy inputs fix the size: every tensor runs at its own size, so they must agree
    let mut size = args.size;
    for p in args
        .images
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
    {
        if let Input::Tensor(x) = read_input(p)? {
            let (_, _, h, w) = x.dim();
            let r = Resolution::new(h as u32, w as u32);
            match size {
                None => size = Some(r),
                Some(s) if s == r => {}
                Some(s) => bail!(
                    "{} is {h}x{w} but the models run at {s}: give tensors of one size (or --size {h}x{w})",
                    p.display()
                ),
            }
        }
    }
    let model = |path: &PathBuf| ModelArgs {
        model: path.clone(),
        size,
        threads: args.threads,
        cache_dir: None,
        no_cache: false,
        runtime: args.runtime,
    };
    let (ma, mb) = (model(&args.reference), model(&args.candidate));
    // each file read once: the head is checked against it, then it compiles
    let (ia, ib) = (ma.read()?, mb.read()?);
    let options = |m: &ModelArgs, info: &dinoedge_model::ModelInfo| match &head {
        Some(h) => head_options(h, info, m),
        None => Ok(m.options()),
    };
    let (oa, ob) = (options(&ma, &ia)?, options(&mb, &ib)?);
    let mut a = ma.load_info(ia, &oa)?;
    let mut b = mb.load_info(ib, &ob)?;
    ensure!(
        a.resolution() == b.resolution(),
        "the models run at different sizes ({} and {}): pass --size",
        a.resolution(),
        b.resolution()
    );
    let (wa, wb) = (a.info().graph.embed_dim, b.info().graph.embed_dim);
    ensure!(
        wa == wb,
        "{} is {wa} wide and {} is {wb}: only two versions of one backbone compare",
        args.reference.display(),
        args.candidate.display()
    );
    let mut pa = a.preprocessor(ResizeMode::Stretch)?;
    let mut pb = b.preprocessor(ResizeMode::Stretch)?;
    let run = |bb: &mut Backbone,
               pre: &mut dinoedge_model::Preprocessor,
               x: &Input|
     -> Result<(Features, f64)> {
        let t = Instant::now();
        let f = match x {
            Input::Image(img) => bb.run_image(pre, img)?,
            Input::Tensor(x) => bb
                .run(x.view())?
                .into_iter()
                .next()
                .context("the model returned no features")?,
        };
        Ok((f, t.elapsed().as_secs_f64() * 1e3))
    };
    let mut features = FeatureAgreement::default();
    let classes = match &head {
        Some(LinearHead::Seg(s)) => s.classes(),
        _ => 0,
    };
    let mut confusion = Confusion::new(classes.max(1));
    let mut depth = DepthScores::default();
    let mut rows = Vec::new();
    let (mut ms_a, mut ms_b) = (0f64, 0f64);
    let bar = progress(args.images.len(), "comparing");
    for path in &args.images {
        let x = read_input(path)?;
        let (h, w) = match &x {
            Input::Image(img) => (img.height() as usize, img.width() as usize),
            Input::Tensor(t) => (t.dim().2, t.dim().3),
        };
        let (fa, ta) = run(&mut a, &mut pa, &x)
            .with_context(|| format!("{} on {}", args.reference.display(), path.display()))?;
        let (fb, tb) = run(&mut b, &mut pb, &x)
            .with_context(|| format!("{} on {}", args.candidate.display(), path.display()))?;
        ms_a += ta;
        ms_b += tb;
        let one = features.add(
            fa.patches().view(),
            fb.patches().view(),
            fa.cls().view(),
            fb.cls().view(),
        );
        let mut row = Row {
            image: path.display().to_string(),
            features: one,
            seg_miou: None,
            seg_pixel_agreement: None,
            depth_abs_rel: None,
            depth_rmse_m: None,
        };
        match &head {
            Some(LinearHead::Seg(s)) => {
                let la = s.predict_features(&fa, h, w)?.labels;
                let lb = s.predict_features(&fb, h, w)?.labels;
                let mut own = Confusion::new(classes);
                own.add(la.view(), lb.view());
                confusion.add(la.view(), lb.view());
                row.seg_miou = Some(own.miou());
                row.seg_pixel_agreement = Some(own.pixel_accuracy());
            }
            Some(LinearHead::Depth(d)) => {
                let da = d.predict_features(&fa, h, w)?;
                let db = d.predict_features(&fb, h, w)?;
                let mut own = DepthScores::default();
                own.add(da.view(), db.view());
                depth.add(da.view(), db.view());
                row.depth_abs_rel = Some(own.summary().abs_rel);
                row.depth_rmse_m = Some(own.summary().rmse);
            }
            None => {}
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = args.images.len() as f64;
    let total = Row {
        image: format!(
            "all {} image{}",
            args.images.len(),
            if args.images.len() == 1 { "" } else { "s" }
        ),
        features: features.summary(),
        seg_miou: matches!(head, Some(LinearHead::Seg(_))).then(|| confusion.miou()),
        seg_pixel_agreement: matches!(head, Some(LinearHead::Seg(_)))
            .then(|| confusion.pixel_accuracy()),
        depth_abs_rel: matches!(head, Some(LinearHead::Depth(_))).then(|| depth.summary().abs_rel),
        depth_rmse_m: matches!(head, Some(LinearHead::Depth(_))).then(|| depth.summary().rmse),
    };
    let (ms_a, ms_b) = (ms_a / n, ms_b / n);
    if args.json {
        let v = serde_json::json!({
            "reference": {"model": args.reference, "variant": a.info().variant(), "precision": a.precision().to_string(), "ms_per_image": ms_a},
            "candidate": {"model": args.candidate, "variant": b.info().variant(), "precision": b.precision().to_string(), "ms_per_image": ms_b},
            "resolution": a.resolution().to_string(),
            "images": rows,
            "all": total,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "reference  {} ({}), {ms_a:.0} ms/image",
        args.reference.display(),
        a.info().variant()
    );
    println!(
        "candidate  {} ({}), {ms_b:.0} ms/image ({:.2}x the reference's speed)",
        args.candidate.display(),
        b.info().variant(),
        ms_a / ms_b.max(1e-9)
    );
    println!(
        "at {}; feature cosine per patch token; head outputs of the candidate scored against the reference's\n",
        a.resolution()
    );
    let head_cols = match &head {
        Some(LinearHead::Seg(_)) => format!(" {:>9} {:>11}", "seg mIoU", "pixels same"),
        Some(LinearHead::Depth(_)) => format!(" {:>12} {:>10}", "depth AbsRel", "RMSE m"),
        None => String::new(),
    };
    println!(
        "{:<32} {:>10} {:>10} {:>9} {:>8}{head_cols}",
        "image", "cos mean", "cos min", "CLS cos", "max |d|"
    );
    for r in rows.iter().chain(std::iter::once(&total)) {
        let name = if r.image.len() > 32 {
            format!("…{}", &r.image[r.image.len() - 31..])
        } else {
            r.image.clone()
        };
        let extra = match (&r.seg_miou, &r.depth_abs_rel) {
            (Some(m), _) => format!(" {:>9.4} {:>11.4}", m, r.seg_pixel_agreement.unwrap_or(0.0)),
            (_, Some(a)) => format!(" {:>12.5} {:>10.4}", a, r.depth_rmse_m.unwrap_or(0.0)),
            _ => String::new(),
        };
        let f = &r.features;
        println!(
            "{name:<32} {:>10.6} {:>10.6} {:>9.6} {:>8.4}{extra}",
            f.patch_cos_mean, f.patch_cos_min, f.cls_cos, f.max_abs
        );
    }
    Ok(())
}
