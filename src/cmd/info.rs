//! `dinoedge info MODEL`

use anyhow::{Context, Result};
use dinoedge_model::{LoadSource, ModelInfo};

use super::ModelArgs;

/// Arguments of `dinoedge info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Only read the file; do not compile it (no load times).
    #[arg(long)]
    no_compile: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let info = ModelInfo::read(&args.model.model)
        .with_context(|| format!("reading {}", args.model.model.display()))?;
    let g = &info.graph;
    let size = std::fs::metadata(&info.path).map(|m| m.len()).unwrap_or(0);
    let mut ops: Vec<(&String, &usize)> = g.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut json = serde_json::json!({
        "file": info.path,
        "bytes": size,
        "family": g.family().to_string(),
        "variant": info.variant(),
        "head": info.head_description(),
        "depth": info.depth().map(|d| match d {
            dinoedge_model::DepthConfig::Relative => serde_json::json!({"kind": "relative"}),
            dinoedge_model::DepthConfig::Metric { max_depth } =>
                serde_json::json!({"kind": "metric", "max_depth_m": max_depth}),
        }),
        "precision": g.precision.to_string(),
        "parameters": g.parameters,
        "embed_dim": g.embed_dim,
        "blocks": g.num_blocks,
        "heads": info.heads,
        "registers": info.registers,
        "patch_size": g.patch_size,
        "native_grid": (!g.rope).then(|| info.native_grid()).flatten(),
        "position": if g.rope { "rope" } else { "learned" },
        "default_size": info.default_resolution().to_string(),
        "any_size": g.any_size(),
        "input": g.input_name,
        "outputs": g.output_names,
        "opset": g.opset,
        "producer": g.producer,
        "ops": g.op_histogram,
        "config": info.configs.model.as_ref().map(|(p, _)| p),
        "preprocessor_config": info.configs.preprocessor.as_ref().map(|(p, _)| p),
    });
    if !args.json {
        println!(
            "file          {} ({:.1} MB)",
            info.path.display(),
            size as f64 / 1e6
        );
        println!("model         {}", info.variant());
        if let Some(head) = info.head_description() {
            println!("head          {head}");
        }
        println!("precision     {}", g.precision);
        println!("parameters    {:.2} M", g.parameters as f64 / 1e6);
        println!(
            "layout        dim {}, {} blocks, {} heads, {} register tokens, patch {}",
            g.embed_dim,
            g.num_blocks,
            info.heads.map(|h| h.to_string()).unwrap_or("?".into()),
            info.registers.map(|r| r.to_string()).unwrap_or("?".into()),
            g.patch_size
        );
        let p = g.patch_size;
        if g.rope {
            println!(
                "position      RoPE (rotary, on the patch tokens; its angles follow the input size)"
            );
        }
        if g.any_size() {
            println!(
                "resolution    any HxW that are multiples of {p} (≥ {p}); default {}{}",
                info.default_resolution(),
                info.native_grid()
                    .filter(|_| !g.rope)
                    .map(|n| format!(
                        "; trained position grid {n}x{n} = {}x{} pixels",
                        n * p,
                        n * p
                    ))
                    .unwrap_or_default()
            );
        } else {
            println!(
                "resolution    fixed by the export (no position-embedding resize in the graph)"
            );
        }
        println!("input         {}", input_text(&g.input_name, &g.input_dims));
        println!("outputs       {}", g.output_names.join(", "));
        println!(
            "exporter      {} (opset {})",
            if g.producer.is_empty() {
                "?"
            } else {
                &g.producer
            },
            g.opset
        );
        let top: Vec<String> = ops
            .iter()
            .take(12)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "operators     {} nodes: {}{}",
            ops.iter().map(|(_, v)| **v).sum::<usize>(),
            top.join(", "),
            if ops.len() > 12 { ", …" } else { "" }
        );
    }
    if !args.no_compile {
        let options = args.model.options();
        let first = args.model.load(&options)?;
        let r1 = first.load_report().clone();
        let r2 = if r1.source == LoadSource::Compiled && r1.cache_entry.is_some() {
            Some(args.model.load(&options)?.load_report().clone())
        } else {
            None
        };
        let (cold, warm) = match (&r1.source, &r2) {
            (LoadSource::Compiled, Some(r2)) => (Some(r1.total), Some(r2.total)),
            (LoadSource::Compiled, None) => (Some(r1.total), None),
            (LoadSource::Cache, _) => (None, Some(r1.total)),
        };
        json["load"] = serde_json::json!({
            "size": first.resolution().to_string(),
            "threads": first.threads(),
            "runtime": first.runtime().name(),
            "runtime_note": r1.runtime_note,
            "compile_s": cold.map(|d| d.as_secs_f64()),
            "cached_s": warm.map(|d| d.as_secs_f64()),
            "cache_entry": r1.cache_entry,
            "cache_note": r1.cache_note,
            "plan_nodes": first.plan_nodes(),
            "int8_kernel": dinoedge_kernels::qgemm::kernel_name(),
            "int8_products": r1.int8_products,
            "seven_bit_products": r1.seven_bit_products,
            "byte_products": r1.byte_products,
            "split_weights": r1.split_weights,
            "saturating_products": r1.saturating_products,
            "requantized_products": r1.requantized_products,
            "requantized_biases": r1.requantized_biases,
        });
        if !args.json {
            let fmt = |d: Option<std::time::Duration>| {
                d.map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .unwrap_or("-".into())
            };
            println!(
                "load at {}    first start (compile) {}, cached start {} [{}, {} threads, {} plan nodes]",
                first.resolution(),
                fmt(cold),
                fmt(warm),
                first.runtime(),
                first.threads(),
                first.plan_nodes()
            );
            if let Some(e) = &r1.cache_entry {
                println!("cache         {}", e.display());
            }
            if let Some(n) = &r1.cache_note {
                println!("cache note    {n}");
            }
            if r1.int8_products > 0 {
                println!("int8 kernel   {}", int8_kernel_line(&r1));
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// What `dinoedge info` says of the int8 products on dinoedge's kernels: which kernel, and on
/// AVX2 how many it multiplies as bytes (exact, ~1.3x the widened ones) and why.
fn int8_kernel_line(r: &dinoedge_model::LoadReport) -> String {
    let kernel = dinoedge_kernels::qgemm::kernel_name();
    let mut line = format!("{kernel}: {} products", r.int8_products);
    if kernel == "avx2" {
        line += &format!(", {} multiplied as bytes", r.byte_products);
        let saturating = r.saturating_products;
        if saturating > 0 {
            line += &format!(
                " ({} with 7-bit weights, {saturating} 8-bit with saturating sums as \
                 onnxruntime's on AVX2, not exact: DINOEDGE_INT8_SUMS=saturating)",
                r.seven_bit_products
            );
        } else if r.byte_products > 0 {
            line += &format!(
                " ({} with 7-bit weights, {} 8-bit with {} weights split off)",
                r.seven_bit_products,
                r.byte_products - r.seven_bit_products,
                r.split_weights
            );
        }
        let widened = r.int8_products - r.byte_products;
        if widened > 0 {
            line += &format!(", {widened} widened to 16 bits (too many pairs to split)");
        }
    }
    if r.requantized_products > 0 {
        line += &format!(
            "; {} requantise their output themselves (QDQ), {} adding the bias after it",
            r.requantized_products, r.requantized_biases
        );
    }
    line
}

/// `pixel_values [batch, 3, H, W]`, or the fixed shape a file declares and what dinoedge
/// does with it.
fn input_text(name: &str, dims: &[Option<usize>]) -> String {
    // the channel count is fixed in every export: only a fixed batch or size is news
    let fixed = |i: usize| dims.get(i).copied().flatten().is_some();
    if !(fixed(0) || fixed(2) || fixed(3)) {
        return format!("{name} [batch, 3, H, W]");
    }
    let shown: Vec<String> = dims
        .iter()
        .zip(["batch", "3", "H", "W"])
        .map(|(d, sym)| d.map_or(sym.to_string(), |v| v.to_string()))
        .collect();
    format!(
        "{name} [{}] as exported (dinoedge sets the batch and size it runs at)",
        shown.join(", ")
    )
}
