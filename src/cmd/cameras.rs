//! `dinoedge cameras`: the V4L2 cameras on this machine and their modes.

use anyhow::{Context, Result};

/// Arguments of `dinoedge cameras`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// List cameras.
pub fn run(args: Args) -> Result<()> {
    let cameras = dinoedge_camera::list_cameras().context("listing cameras")?;
    if args.json {
        let list: Vec<_> = cameras
            .iter()
            .map(|c| {
                serde_json::json!({
                    "uri": c.uri,
                    "name": c.name,
                    "error": c.error,
                    "modes": c.modes.iter().map(|m| serde_json::json!({
                        "format": m.format, "width": m.width, "height": m.height, "fps": m.fps,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if cameras.is_empty() {
        println!(
            "no V4L2 cameras found (Raspberry Pi CSI cameras: use csi://0; check them with `rpicam-hello --list-cameras`)"
        );
        return Ok(());
    }
    for c in &cameras {
        println!("{}  {}", c.uri, c.name);
        if let Some(e) = &c.error {
            println!("    (modes unavailable: {e})");
        }
        // one line per format and size, with its frame rates
        let mut lines: Vec<(String, u32, u32, Vec<u32>)> = Vec::new();
        for m in &c.modes {
            match lines
                .iter_mut()
                .find(|l| l.0 == m.format && l.1 == m.width && l.2 == m.height)
            {
                Some(l) => l.3.push(m.fps),
                None => lines.push((m.format.clone(), m.width, m.height, vec![m.fps])),
            }
        }
        for (format, w, h, mut rates) in lines {
            rates.sort_unstable_by(|a, b| b.cmp(a));
            rates.dedup();
            let rates: Vec<String> = rates.iter().map(u32::to_string).collect();
            println!("    {format:<6} {w}x{h}  {} fps", rates.join("/"));
        }
    }
    println!(
        "\nopen one with e.g. --source 'v4l2:///dev/video0?width=1280&height=720&fps=30&format=mjpeg'"
    );
    Ok(())
}
