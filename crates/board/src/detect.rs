//! Which board this is.

use std::path::Path;

/// A board dinoedge has a profile for, or another machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Board {
    /// Raspberry Pi 4 Model B / 400 / CM4.
    RaspberryPi4 {
        /// The device tree's model string.
        model: String,
    },
    /// Raspberry Pi 5 / 500 / CM5.
    RaspberryPi5 {
        /// The device tree's model string.
        model: String,
    },
    /// Another Raspberry Pi (3, Zero 2, …): no profile, the Pi 4 one is the closest.
    RaspberryPiOther {
        /// The device tree's model string.
        model: String,
    },
    /// An NVIDIA Jetson (L4T).
    Jetson {
        /// The device tree's model string (e.g. "NVIDIA Jetson Orin Nano Developer Kit").
        model: String,
        /// The L4T release line (e.g. "R36 (release), REVISION: 4.3").
        release: String,
    },
    /// An x86-64 machine.
    X86 {
        /// DMI product name, when readable.
        product: Option<String>,
    },
    /// Anything else.
    Other {
        /// What could be read about it.
        description: String,
    },
}

impl Board {
    /// The profile in `firmware-configs/` for this board, if there is one.
    pub fn profile(&self) -> Option<&'static str> {
        match self {
            Board::RaspberryPi4 { .. } => Some("rpi4"),
            Board::RaspberryPi5 { .. } => Some("rpi5"),
            Board::Jetson { model, .. } if model.contains("Orin Nano") => Some("jetson-orin-nano"),
            Board::X86 { .. } => Some("x86"),
            _ => None,
        }
    }

    /// Whether this is a Raspberry Pi (GPIO through rppal, firmware throttling flags).
    pub fn is_raspberry_pi(&self) -> bool {
        matches!(
            self,
            Board::RaspberryPi4 { .. }
                | Board::RaspberryPi5 { .. }
                | Board::RaspberryPiOther { .. }
        )
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            Board::RaspberryPi4 { model }
            | Board::RaspberryPi5 { model }
            | Board::RaspberryPiOther { model } => model.clone(),
            Board::Jetson { model, release } => format!("{model} (L4T {release})"),
            Board::X86 { product } => match product {
                Some(p) => format!("x86-64 ({p})"),
                None => "x86-64".into(),
            },
            Board::Other { description } => description.clone(),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    // device-tree strings end in NUL
    let s = String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// The board whose root file system is at `root` (`/` on the board itself; a sample tree in
/// tests). `arch` is the CPU architecture (`std::env::consts::ARCH` on the board).
pub fn detect_at(root: &Path, arch: &str) -> Board {
    let model = read_trimmed(&root.join("proc/device-tree/model"))
        .or_else(|| read_trimmed(&root.join("sys/firmware/devicetree/base/model")));
    if let Some(release) = read_trimmed(&root.join("etc/nv_tegra_release")) {
        let release = release
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches('#')
            .trim()
            .split(", GCID")
            .next()
            .unwrap_or_default()
            .to_string();
        return Board::Jetson {
            model: model.unwrap_or_else(|| "NVIDIA Jetson".into()),
            release,
        };
    }
    if let Some(model) = model {
        if let Some(rest) = model.strip_prefix("Raspberry Pi") {
            let rest = rest.trim_start();
            return if rest.starts_with('5')
                || rest.starts_with("Compute Module 5")
                || rest.starts_with("500")
            {
                Board::RaspberryPi5 { model }
            } else if rest.starts_with('4')
                || rest.starts_with("Compute Module 4")
                || rest.starts_with("400")
            {
                Board::RaspberryPi4 { model }
            } else {
                Board::RaspberryPiOther { model }
            };
        }
        if model.contains("Jetson") {
            return Board::Jetson {
                model,
                release: "unknown".into(),
            };
        }
        return Board::Other { description: model };
    }
    if arch == "x86_64" {
        return Board::X86 {
            product: read_trimmed(&root.join("sys/devices/virtual/dmi/id/product_name")),
        };
    }
    Board::Other {
        description: format!("{arch} machine"),
    }
}

/// The board this process runs on.
pub fn detect() -> Board {
    detect_at(Path::new("/"), std::env::consts::ARCH)
}
