//! `dinoedge bench MODEL`: the backbone alone, for comparisons across runtimes and boards.

use std::time::Instant;

use anyhow::Result;
use ndarray::Array4;

use super::ModelArgs;

/// Arguments of `dinoedge bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also print tract's profile: time per run by operator, largest first (to stderr).
    #[arg(long)]
    profile: bool,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let mut bb = args.model.load(&args.model.options())?;
    let r = bb.resolution();
    let input = Array4::from_shape_fn(
        (1, 3, r.height as usize, r.width as usize),
        |(_, c, y, x)| (((c * 131 + y * 7 + x * 13) % 255) as f32 / 127.5) - 1.0,
    );
    for _ in 0..args.warmup {
        bb.run(input.view())?;
    }
    let mut ms = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        bb.run(input.view())?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    let out = serde_json::json!({
        "runtime": format!("tract 0.23.9 {}", bb.runtime()),
        "model": bb.info().path,
        "precision": bb.precision().to_string(),
        "size": r.to_string(),
        "threads": bb.threads(),
        "runs": args.runs,
        "median_ms": median,
        "min_ms": ms[0],
        "max_ms": ms[ms.len() - 1],
        "load_s": bb.load_report().total.as_secs_f64(),
    });
    println!("{out}");
    if args.profile {
        let prof = bb.profile(input.view(), args.runs.min(5))?;
        let total: f64 = prof.iter().map(|p| p.per_run.as_secs_f64()).sum();
        eprintln!(
            "{:<40} {:>6} {:>10} {:>6}",
            "operator", "nodes", "ms/run", "share"
        );
        for p in prof.iter().take(15) {
            let ms = p.per_run.as_secs_f64() * 1e3;
            eprintln!(
                "{:<40} {:>6} {:>10.2} {:>5.1}%",
                p.op,
                p.nodes,
                ms,
                100.0 * p.per_run.as_secs_f64() / total
            );
        }
        eprintln!(
            "{:<40} {:>6} {:>10.2}",
            "all nodes",
            prof.iter().map(|p| p.nodes).sum::<usize>(),
            total * 1e3
        );
    }
    Ok(())
}
