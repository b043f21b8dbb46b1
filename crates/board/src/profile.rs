//! Board profiles (`firmware-configs/<board>/profile.toml`): the defaults of
//! `dinoedge run --board NAME`.

use std::path::Path;

use serde::Deserialize;

use crate::{BoardError, Result, RuleSet};

/// The profiles built into dinoedge, by name: one per board folder of `firmware-configs/`
/// (`profile.toml`), and for the boards Depth Anything V2 suits a `-da2` one beside it
/// (`profile-da2.toml`, see [`file_of`]).
pub const BUILTIN: [(&str, &str); 7] = [
    (
        "rpi4",
        include_str!("../../../firmware-configs/rpi4/profile.toml"),
    ),
    (
        "rpi5",
        include_str!("../../../firmware-configs/rpi5/profile.toml"),
    ),
    (
        "jetson-orin-nano",
        include_str!("../../../firmware-configs/jetson-orin-nano/profile.toml"),
    ),
    (
        "x86",
        include_str!("../../../firmware-configs/x86/profile.toml"),
    ),
    (
        "rpi4-da2",
        include_str!("../../../firmware-configs/rpi4/profile-da2.toml"),
    ),
    (
        "rpi5-da2",
        include_str!("../../../firmware-configs/rpi5/profile-da2.toml"),
    ),
    (
        "jetson-orin-nano-da2",
        include_str!("../../../firmware-configs/jetson-orin-nano/profile-da2.toml"),
    ),
];

/// Where a built-in profile lives under `firmware-configs/`: its board's folder and file
/// (`rpi5-da2` is `rpi5/profile-da2.toml`).
pub fn file_of(name: &str) -> (&str, &'static str) {
    match name.strip_suffix("-da2") {
        Some(board) => (board, "profile-da2.toml"),
        None => (name, "profile.toml"),
    }
}

/// A board profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// How to build for the board.
    pub board: BoardSection,
    /// `dinoedge run`'s defaults on it.
    pub run: RunSection,
}

/// `[board]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSection {
    /// What the profile was written for.
    pub description: String,
    /// The Rust target triple.
    pub target: String,
    /// The `-C target-cpu` for the board's cores.
    pub target_cpu: String,
    /// The build command.
    pub build: String,
}

/// The backbone's precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Dynamic int8 (`vits14-int8`).
    Int8,
    /// fp32 (`vits14`).
    Fp32,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// The model by its name in `dinoedge models` (e.g. `da2-small-int8`), when it is not
    /// DINOv2 ViT-S/14 in `precision`.
    pub model: Option<String>,
    /// Which backbone file (when `--model` is not given): DINOv2 ViT-S/14 in int8 or fp32.
    pub precision: Precision,
    /// `--threads`.
    pub threads: usize,
    /// `--workers` (backbones sharing the threads; default 1).
    pub workers: Option<usize>,
    /// `--runtime` (`cpu`, `cuda`, `cuda-or-cpu`; default `cpu`).
    pub runtime: Option<String>,
    /// `--size` (`HxW`).
    pub resolution: String,
    /// `--source`.
    pub camera: String,
    /// `--head`.
    pub head: Option<String>,
    /// `--sink`, each.
    pub sinks: Vec<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--every` (`1`, `N` or `idle`).
    pub every: Option<String>,
    /// `--gpio` rules.
    #[serde(default)]
    pub gpio: Vec<String>,
}

impl Profile {
    /// Parse and check a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile> {
        let err = |reason: String| BoardError::Profile {
            origin: origin.to_string(),
            reason,
        };
        let p: Profile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let r = &p.run;
        let sides: Vec<Option<u32>> = r.resolution.split('x').map(|v| v.parse().ok()).collect();
        if !matches!(sides[..], [Some(h), Some(w)] if h > 0 && w > 0 && h % 14 == 0 && w % 14 == 0)
        {
            return Err(err(format!(
                "run.resolution {:?}: HxW, both multiples of 14 (e.g. 224x224)",
                r.resolution
            )));
        }
        if let Some(rt) = &r.runtime
            && !["cpu", "cuda", "cuda-or-cpu"].contains(&rt.as_str())
        {
            return Err(err(format!("run.runtime {rt:?}: cpu, cuda or cuda-or-cpu")));
        }
        if r.threads == 0 {
            return Err(err("run.threads: at least 1".into()));
        }
        if let Some(w) = r.workers
            && !(1..=r.threads).contains(&w)
        {
            return Err(err(format!(
                "run.workers {w}: from 1 to run.threads ({})",
                r.threads
            )));
        }
        if r.sinks.is_empty() {
            return Err(err("run.sinks: at least one (e.g. [\"http\"])".into()));
        }
        if let Some(e) = &r.every
            && e != "idle"
            && !e.parse::<u64>().is_ok_and(|k| k >= 1)
        {
            return Err(err(format!("run.every {e:?}: a count ≥ 1 or \"idle\"")));
        }
        RuleSet::parse(&r.gpio).map_err(|e| err(e.to_string()))?;
        let b = &p.board;
        if !b.build.contains(&b.target)
            || !b.build.contains(&format!("target-cpu={}", b.target_cpu))
        {
            return Err(err(format!(
                "board.build must build for board.target ({}) with -C target-cpu={}",
                b.target, b.target_cpu
            )));
        }
        Ok(p)
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Profile> {
        let (_, text) =
            BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| BoardError::Profile {
                    origin: name.to_string(),
                    reason: format!(
                        "no such board; built in: {}, or a path to a profile.toml, or auto",
                        BUILTIN.map(|(n, _)| n).join(", ")
                    ),
                })?;
        Profile::parse(text, name)
    }

    /// `auto` (the detected board's profile), a built-in name, or a path to a `profile.toml`.
    pub fn load(spec: &str) -> Result<Profile> {
        if spec == "auto" {
            let board = crate::detect();
            let name = board.profile().ok_or_else(|| BoardError::Profile {
                origin: "auto".into(),
                reason: format!(
                    "no profile for this machine ({}); name one: {}",
                    board.describe(),
                    BUILTIN.map(|(n, _)| n).join(", ")
                ),
            })?;
            return Profile::builtin(name);
        }
        if spec.ends_with(".toml") || spec.contains('/') {
            let path = Path::new(spec);
            let text = std::fs::read_to_string(path).map_err(|e| BoardError::Profile {
                origin: spec.to_string(),
                reason: e.to_string(),
            })?;
            return Profile::parse(&text, spec);
        }
        Profile::builtin(spec)
    }

    /// The model's name in `dinoedge models`: `run.model`, else DINOv2 ViT-S/14 in the
    /// profile's precision.
    pub fn model(&self) -> &str {
        match (&self.run.model, self.run.precision) {
            (Some(m), _) => m,
            (None, Precision::Int8) => "vits14-int8",
            (None, Precision::Fp32) => "vits14",
        }
    }

    /// Fill what the user left unset in `settings` with this profile's values. What the
    /// user gave wins; a head comes from the profile only when neither a head nor a task was
    /// given (a task alone means the backbone's own output); lists (sinks, GPIO rules) are
    /// taken whole or not at all.
    pub fn apply(&self, settings: &mut RunSettings) {
        let r = &self.run;
        let fill = |v: &mut Option<String>, from: Option<&String>| {
            if v.is_none() {
                *v = from.cloned();
            }
        };
        if settings.model.is_none() {
            settings.model = Some(self.model().to_string());
        }
        if !settings.task_given {
            fill(&mut settings.head, r.head.as_ref());
        }
        settings.threads = settings.threads.or(Some(r.threads));
        settings.workers = settings.workers.or(r.workers);
        fill(&mut settings.runtime, r.runtime.as_ref());
        fill(&mut settings.resolution, Some(&r.resolution));
        fill(&mut settings.camera, Some(&r.camera));
        if settings.sinks.is_empty() {
            settings.sinks = r.sinks.clone();
        }
        fill(&mut settings.listen, r.listen.as_ref());
        fill(&mut settings.every, r.every.as_ref());
        if settings.gpio.is_empty() {
            settings.gpio = r.gpio.clone();
        }
    }
}

/// The run settings a profile can fill, as text (each caller parses them as it parses its
/// own flags). `None` or empty: not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// The backbone (a name in `dinoedge models` or a path).
    pub model: Option<String>,
    /// The head.
    pub head: Option<String>,
    /// Whether a task was given (then no head comes from the profile).
    pub task_given: bool,
    /// Backbone threads.
    pub threads: Option<usize>,
    /// Backbones sharing them.
    pub workers: Option<usize>,
    /// Where the backbone runs.
    pub runtime: Option<String>,
    /// Input size, `HxW`.
    pub resolution: Option<String>,
    /// The frame source.
    pub camera: Option<String>,
    /// Sinks.
    pub sinks: Vec<String>,
    /// The live view's address.
    pub listen: Option<String>,
    /// Which frames to analyse (`1`, `N` or `idle`).
    pub every: Option<String>,
    /// GPIO rules.
    pub gpio: Vec<String>,
}
