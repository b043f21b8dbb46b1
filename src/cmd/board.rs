//! `dinoedge board`: which board this is, its profile, temperature and throttling.

use anyhow::Result;

/// Arguments of `dinoedge board`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One JSON object instead of lines.
    #[arg(long)]
    json: bool,
    /// Read the sensors under this root instead of `/` (a copy of a board's /sys and /proc).
    #[arg(long, default_value = "/", hide = true)]
    root: std::path::PathBuf,
}

/// Run `dinoedge board`.
pub fn run(args: Args) -> Result<()> {
    let board = dinoedge_board::detect_at(&args.root, std::env::consts::ARCH);
    let health = dinoedge_board::read_health(&args.root);
    let warnings = health.warnings(80.0);
    let gpio = cfg!(feature = "rpi");
    let cuda = dinoedge_model::cuda_status();
    let cuda_text = match &cuda {
        dinoedge_model::CudaStatus::Ready => "ready (run --runtime cuda)".to_string(),
        dinoedge_model::CudaStatus::NotBuilt => {
            "not built in (build with --features cuda, for NVIDIA GPUs)".to_string()
        }
        dinoedge_model::CudaStatus::Unavailable(why) => format!("built in, but unavailable: {why}"),
    };
    if args.json {
        let v = serde_json::json!({
            "board": board.describe(),
            "profile": board.profile(),
            "arch": std::env::consts::ARCH,
            "temperature_c": health.temperature_c,
            "thermal_zone": health.zone,
            "throttled_flags": health.throttling.map(|t| format!("{:#x}", t.0)),
            "warnings": warnings,
            "gpio_support": gpio,
            "cuda": match &cuda {
                dinoedge_model::CudaStatus::Ready => "ready",
                dinoedge_model::CudaStatus::NotBuilt => "not built",
                dinoedge_model::CudaStatus::Unavailable(_) => "unavailable",
            },
            "cuda_reason": match &cuda {
                dinoedge_model::CudaStatus::Unavailable(why) => Some(why.as_str()),
                _ => None,
            },
        });
        println!("{v}");
        return Ok(());
    }
    println!("board:       {}", board.describe());
    println!(
        "profile:     {}",
        board
            .profile()
            .map(|p| format!("{p} (firmware-configs/{p}/)"))
            .unwrap_or_else(|| "none for this machine".into())
    );
    match (health.temperature_c, &health.zone) {
        (Some(t), Some(z)) => println!("temperature: {t:.1} °C ({z})"),
        _ => println!("temperature: not readable here"),
    }
    if let Some(t) = health.throttling {
        println!("throttling:  {:#x}", t.0);
    }
    println!(
        "GPIO:        {}",
        match (gpio, board.is_raspberry_pi()) {
            (true, true) => "yes (run --gpio RULE)",
            (true, false) => "built in, but this is not a Raspberry Pi",
            (false, _) => "not built in (build with --features rpi on a Raspberry Pi)",
        }
    );
    println!("CUDA:        {cuda_text}");
    for w in warnings {
        println!("warning:     {w}");
    }
    Ok(())
}
