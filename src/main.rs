//! `dinoedge`: DINOv2 dense features, depth and segmentation on edge boards.
//!
//! The binary only parses arguments and calls the library crates; see `crates/`.

mod cmd;

use clap::{CommandFactory, Parser, Subcommand};

/// DINOv2 on small boards: dense features, attention and PCA views from ONNX models, and
/// frames from cameras, files and streams.
#[derive(Parser)]
#[command(name = "dinoedge", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: variant, precision, parameters, resolution limits, operators, load times.
    Info(cmd::info::Args),
    /// Extract patch grids, CLS tokens and chosen blocks as .npy files.
    Features(cmd::features::Args),
    /// The DINOv2 PCA picture: first three principal components of the patch features as RGB.
    Pca(cmd::pca::Args),
    /// A grid of the last block's per-head CLS attention over an image.
    Attention(cmd::attention::Args),
    /// DINOv2's released linear segmentation or depth head on images: class maps, depth in metres.
    Predict(cmd::predict::Args),
    /// Train a linear segmentation or depth head on a labelled folder (features cached on disk).
    TrainHead(cmd::train_head::Args),
    /// Score a head on a labelled folder: mIoU and pixel accuracy, or RMSE, AbsRel and δ<1.25.
    EvalHead(cmd::eval_head::Args),
    /// The live runner: frames from a camera, file, stream or recording through the backbone and
    /// a head to files, JSON lines, MCAP recordings and a live view in the browser.
    Run(Box<cmd::run::Args>),
    /// How far one model is from another (int8 from fp32) on your images: feature cosine, and
    /// with a head segmentation mIoU or depth AbsRel between their outputs.
    Compare(cmd::compare::Args),
    /// Which board this is, its profile, SoC temperature and throttling flags.
    Board(cmd::board::Args),
    /// Download model files by name into the cache (progress, resume, sha256 check).
    Fetch(cmd::fetch::FetchArgs),
    /// The model files dinoedge knows and which of them are in the cache.
    Models(cmd::fetch::ModelsArgs),
    /// Time the backbone alone (median of repeated runs), as one JSON line.
    Bench(cmd::bench::Args),
    /// List the V4L2 (USB) cameras on this machine and their formats, sizes and frame rates.
    Cameras(cmd::cameras::Args),
    /// Read frames from a camera, file or stream; print them and optionally save them.
    Capture(cmd::capture::Args),
    /// Man pages and shell completions of this command line (what the packages install).
    Generate(cmd::generate::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    explain_panics_in_abort_builds();
    if !matches!(cli.command, Command::Run(_)) {
        quiet_on_closed_stdout();
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // a failed write (stderr a closed pipe: `dinoedge run … 2>&1 | head -1`) is dropped:
        // reporting it goes through `eprintln!`, which panics there
        .log_internal_errors(false)
        .init();
    let result = match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Features(a) => cmd::features::run(a),
        Command::Pca(a) => cmd::pca::run(a),
        Command::Attention(a) => cmd::attention::run(a),
        Command::Run(a) => cmd::run::run(*a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Board(a) => cmd::board::run(a),
        Command::Fetch(a) => cmd::fetch::run_fetch(a),
        Command::Models(a) => cmd::fetch::run_models(a),
        Command::Predict(a) => cmd::predict::run(a),
        Command::TrainHead(a) => cmd::train_head::run(a),
        Command::EvalHead(a) => cmd::eval_head::run(a),
        Command::Cameras(a) => cmd::cameras::run(a),
        Command::Capture(a) => cmd::capture::run(a),
        Command::Generate(a) => cmd::generate::run(a, Cli::command()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The board packages' binary is built with `panic = "abort"` (Cargo.toml's `dist` profile: no
/// unwinding tables, ~7 MB less), so a panic — a bug — ends the process where the other builds'
/// runner closes its outputs and returns an error. Say so after the panic's own message, and what
/// of the recordings is kept (the MCAP sink closes a chunk every second; JSON lines and files are
/// written as they come).
fn explain_panics_in_abort_builds() {
    if cfg!(panic = "abort") {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            eprintln!(
                "error: dinoedge stopped on an internal error (a bug: please report it with the \
                 message above). This build stops at once on one: recordings keep all but their \
                 last second (`mcap recover` rewrites a cut MCAP file)."
            );
        }));
    }
}

/// `dinoedge info … | head -1`: a command whose reader went away ends quietly, as other Unix
/// tools do, instead of panicking in `println!` (Rust ignores SIGPIPE). Not for `run`, whose
/// sinks see the closed pipe as an error of that sink alone and close the others' recordings.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    /// `main` writes an error with its causes (`{:#}`); a library error that has its OS error in
    /// its message does not give it again as its source, so the reason is said once.
    #[test]
    fn a_library_errors_reason_is_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = dinoedge_model::ModelInfo::read(dir.path())
            .context("reading the model")
            .unwrap_err();
        let line = format!("{e:#}");
        assert_eq!(line.matches("is a directory").count(), 1, "{line}");
        assert!(line.starts_with("reading the model: cannot read"), "{line}");
        let e = dinoedge_imagefile::load(dir.path())
            .context("loading")
            .unwrap_err();
        let line = format!("{e:#}");
        assert!(line.starts_with("loading: cannot read"), "{line}");
        assert_eq!(e.chain().count(), 2, "{line}");
    }
}
