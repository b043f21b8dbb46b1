//! `dinoedge fetch` and `dinoedge models`: the files dinoedge knows, downloaded into the cache;
//! and names from the manifest wherever a model or head path is asked for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dinoedge_fetch::{FetchOptions, Kind, Manifest, ModelCache, Progress, Source, fetch};
use indicatif::{ProgressBar, ProgressStyle};

/// Where the files are and which manifest names them.
#[derive(clap::Args, Debug, Clone)]
pub struct Place {
    /// The model cache (default: $DINOEDGE_MODELS_DIR, else ~/.cache/dinoedge/models).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// More entries, in the shape of models/manifest.toml (same name: replaces the built-in one).
    #[arg(long, env = "DINOEDGE_MANIFEST")]
    manifest: Option<PathBuf>,
}

impl Place {
    fn open(&self) -> Result<(Manifest, ModelCache)> {
        let manifest = match &self.manifest {
            Some(p) => Manifest::builtin()
                .with_file(p)
                .with_context(|| format!("reading {}", p.display()))?,
            None => Manifest::builtin(),
        };
        let cache = match &self.cache_dir {
            Some(d) => ModelCache::new(d),
            None => ModelCache::at_default()?,
        };
        Ok((manifest, cache))
    }
}

/// `dinoedge fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Names from `dinoedge models`, e.g. vits14-int8 vits14-nyu-linear.
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    place: Place,
    /// Give up when no data arrives for this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Download again even when the file is in the cache.
    #[arg(long)]
    force: bool,
}

/// `dinoedge models`.
#[derive(clap::Args, Debug)]
pub struct ModelsArgs {
    #[command(flatten)]
    place: Place,
    /// One JSON object per file instead of a table.
    #[arg(long)]
    json: bool,
}

/// A byte-count bar drawn on stderr (hidden when it is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: Option<u64>, from: u64) {
        if let Some(t) = total {
            self.0.set_length(t);
        }
        self.0.set_position(from);
        if from > 0 {
            self.0.println(format!(
                "  resuming after {} already on disk",
                indicatif::HumanBytes(from)
            ));
        }
    }
    fn advance(&mut self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn verifying(&mut self) {
        self.0.set_message("checking sha256");
    }
}

/// Run `dinoedge fetch`.
pub fn run_fetch(args: FetchArgs) -> Result<()> {
    let (manifest, cache) = args.place.open()?;
    let options = FetchOptions {
        timeout: Duration::from_secs(args.timeout.max(1)),
        force: args.force,
        ..FetchOptions::default()
    };
    // every name is checked before anything is downloaded
    let entries = args
        .names
        .iter()
        .map(|n| manifest.get(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut failed = Vec::new();
    for entry in entries {
        let bar = ProgressBar::new(entry.size.unwrap_or(0)).with_message(entry.name.clone());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let result = fetch(entry, &cache, &options, &mut Bar(bar.clone()));
        bar.finish_and_clear();
        match result {
            Ok(f) if !f.downloaded => {
                println!("{}: in the cache: {}", entry.name, f.path.display())
            }
            Ok(f) => {
                let check = match f.verified_against {
                    "manifest" => "sha256 as in the manifest",
                    "hub" => "sha256 as published by the Hub",
                    _ => "no published sha256 to check against",
                };
                println!(
                    "{}: {} ({}, sha256 {}; {check})",
                    entry.name,
                    f.path.display(),
                    indicatif::HumanBytes(f.bytes),
                    f.sha256.as_deref().unwrap_or("-"),
                );
            }
            Err(e) => {
                eprintln!("error: {}: {e}", entry.name);
                failed.push(entry.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} not fetched: {}",
            failed.len(),
            args.names.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Run `dinoedge models`.
pub fn run_models(args: ModelsArgs) -> Result<()> {
    let (manifest, cache) = args.place.open()?;
    if !args.json {
        println!("model cache: {}", cache.root().display());
        println!(
            "{:<22} {:<8} {:>9}  {:<10} description",
            "name", "kind", "size", "cached"
        );
    }
    for e in &manifest.entries {
        let cached = cache.find(e);
        let kind = match e.kind {
            Kind::Backbone => "backbone",
            Kind::Head => "head",
        };
        let source = match &e.source {
            Source::Hub { repo, file, .. } => format!("hf://{repo}/{file}"),
            Source::Url(u) => u.clone(),
        };
        if args.json {
            let v = serde_json::json!({
                "name": e.name,
                "kind": kind,
                "description": e.description,
                "source": source,
                "size": e.size,
                "sha256": e.sha256,
                "backbone": e.backbone,
                "cached": cached.as_ref().map(|c| c.path.display().to_string()),
                "cached_bytes": cached.as_ref().map(|c| c.bytes),
                "by_hand": cache.by_hand_path(e).display().to_string(),
            });
            println!("{v}");
        } else {
            let size = e
                .size
                .or(cached.as_ref().map(|c| c.bytes))
                .map(|s| indicatif::HumanBytes(s).to_string())
                .unwrap_or_else(|| "?".into());
            println!(
                "{:<22} {:<8} {:>9}  {:<10} {}",
                e.name,
                kind,
                size,
                if cached.is_some() { "yes" } else { "-" },
                e.description
            );
        }
    }
    if !args.json {
        println!(
            "\n`dinoedge fetch NAME` downloads one; `--model NAME` / `--head NAME` use it from the cache."
        );
    }
    Ok(())
}

/// A `--model`/`--head` value: a path, or a name from the manifest whose file is in the cache
/// (`$DINOEDGE_MODELS_DIR`/default cache, `$DINOEDGE_MANIFEST` entries too).
pub fn model_ref(s: &str) -> Result<PathBuf, String> {
    let path = Path::new(s);
    if path.exists() || s.contains(['/', '\\']) || s.ends_with(".onnx") || s.ends_with(".pth") {
        return Ok(path.to_owned());
    }
    let place = Place {
        cache_dir: None,
        manifest: std::env::var_os("DINOEDGE_MANIFEST").map(PathBuf::from),
    };
    let Ok((manifest, cache)) = place.open() else {
        return Ok(path.to_owned());
    };
    let Ok(entry) = manifest.get(s) else {
        // not a name either: the command says the file is missing
        return Ok(path.to_owned());
    };
    match cache.find(entry) {
        Some(c) => Ok(c.path),
        None => Err(format!(
            "{s} is not downloaded yet: run `dinoedge fetch {s}` (or put the file at {})",
            cache.by_hand_path(entry).display()
        )),
    }
}
