//! SoC temperature and Raspberry Pi throttling flags, read from sysfs.

use std::path::Path;

/// The firmware's `get_throttled` bits (what `vcgencmd get_throttled` prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttling(pub u32);

impl Throttling {
    /// `throttled=0x50005`, `0x50005` or `50005` (hex).
    pub fn parse(s: &str) -> Option<Throttling> {
        let s = s.trim();
        let s = s.strip_prefix("throttled=").unwrap_or(s);
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        u32::from_str_radix(s, 16).ok().map(Throttling)
    }

    fn bit(self, n: u32) -> bool {
        self.0 & (1 << n) != 0
    }

    /// The supply is below 4.63 V now.
    pub fn under_voltage_now(self) -> bool {
        self.bit(0)
    }
    /// The ARM clock is capped now.
    pub fn freq_capped_now(self) -> bool {
        self.bit(1)
    }
    /// The SoC is throttled now.
    pub fn throttled_now(self) -> bool {
        self.bit(2)
    }
    /// The soft temperature limit is active now.
    pub fn soft_temp_limit_now(self) -> bool {
        self.bit(3)
    }
    /// Under-voltage has happened since boot.
    pub fn under_voltage_occurred(self) -> bool {
        self.bit(16)
    }
    /// Throttling has happened since boot.
    pub fn throttled_occurred(self) -> bool {
        self.bit(18)
    }

    /// What a user should be told, now-conditions first.
    pub fn warnings(self) -> Vec<String> {
        let mut w = Vec::new();
        if self.under_voltage_now() {
            w.push("under-voltage now: use the official power supply (5 V 5 A for a Pi 5)".into());
        }
        if self.throttled_now() || self.freq_capped_now() {
            w.push("the SoC is throttled now: frames will slow down; add cooling".into());
        }
        if self.soft_temp_limit_now() {
            w.push("the soft temperature limit is active".into());
        }
        if w.is_empty() && (self.under_voltage_occurred() || self.throttled_occurred()) {
            w.push(format!(
                "throttling or under-voltage happened since boot (flags {:#x})",
                self.0
            ));
        }
        w
    }
}

/// What the board's sensors say.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// SoC temperature in °C, if a thermal zone gives one.
    pub temperature_c: Option<f32>,
    /// Which thermal zone (its `type`).
    pub zone: Option<String>,
    /// The Pi firmware's throttling flags (Raspberry Pi only).
    pub throttling: Option<Throttling>,
}

/// Thermal zone types that measure the SoC, best first (Pi, Jetson, x86).
const SOC_ZONES: [&str; 7] = [
    "cpu-thermal",
    "cpu_thermal",
    "CPU-therm",
    "cpu-thermal0",
    "tj-thermal",
    "soc_thermal",
    "x86_pkg_temp",
];

/// Read the sensors under `root` (`/` on the board).
pub fn read_health(root: &Path) -> Health {
    let mut zones: Vec<(String, f32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("sys/class/thermal")) {
        for e in dir.flatten() {
            let p = e.path();
            if !e.file_name().to_string_lossy().starts_with("thermal_zone") {
                continue;
            }
            let kind = std::fs::read_to_string(p.join("type")).unwrap_or_default();
            let temp = std::fs::read_to_string(p.join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<f32>().ok());
            if let Some(t) = temp {
                // millidegrees Celsius
                zones.push((kind.trim().to_string(), t / 1000.0));
            }
        }
    }
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    let best = SOC_ZONES
        .iter()
        .find_map(|want| zones.iter().find(|(k, _)| k == want))
        .or_else(|| zones.first())
        .cloned();
    let throttling =
        std::fs::read_to_string(root.join("sys/devices/platform/soc/soc:firmware/get_throttled"))
            .ok()
            .and_then(|s| Throttling::parse(&s));
    Health {
        temperature_c: best.as_ref().map(|b| b.1),
        zone: best.map(|b| b.0),
        throttling,
    }
}

impl Health {
    /// Warnings for the user: throttling flags, and a temperature at or above `hot_c`.
    pub fn warnings(&self, hot_c: f32) -> Vec<String> {
        let mut w = self
            .throttling
            .map(Throttling::warnings)
            .unwrap_or_default();
        if let Some(t) = self.temperature_c.filter(|t| *t >= hot_c) {
            w.push(format!(
                "SoC at {t:.1} °C (≥ {hot_c:.0} °C): add cooling or lower --threads"
            ));
        }
        w
    }
}
