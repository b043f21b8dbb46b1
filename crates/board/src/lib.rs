//! The board dinoedge runs on.
//!
//! - [`detect`]: which board this is (Raspberry Pi 4/5 from the device tree, Jetson from
//!   `/etc/nv_tegra_release`, x86 from DMI), and the name of its profile in `firmware-configs/`.
//! - [`health`]: SoC temperature from the thermal zones, and a Raspberry Pi's throttling and
//!   under-voltage flags (firmware `get_throttled`), with the warnings a user should see.
//! - [`gpio`]: rules that drive output pins from results (a pin high while the nearest depth in a
//!   region is under a threshold, a PWM duty that follows proximity, a pin per class present)
//!   and input pins that trigger snapshots; parsed with clear errors, evaluated against any
//!   [`gpio::Pins`] backend.
//! - [`profile`]: the board profiles of `firmware-configs/` (`dinoedge run --board NAME`).
//!
//! Everything reads files under a root directory (`/` on a board), so it is tested on sample
//! sysfs trees.
//!
//! Depends on no other dinoedge crate (the runner and the CLI depend on it).

pub mod detect;
pub mod gpio;
pub mod health;
pub mod profile;
#[cfg(feature = "rpi")]
pub mod rpi;

pub use detect::{Board, detect, detect_at};
pub use gpio::{Pins, Rule, RuleSet};
pub use health::{Health, Throttling, read_health};
pub use profile::{Profile, RunSettings};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// A GPIO rule does not parse.
    #[error("GPIO rule {rule:?}: {reason}")]
    Rule {
        /// The rule as written.
        rule: String,
        /// What is wrong, and the expected form.
        reason: String,
    },
    /// Two rules use one pin.
    #[error("GPIO pin {pin} is used by two rules: {first:?} and {second:?}")]
    PinTwice {
        /// BCM pin number.
        pin: u8,
        /// The first rule.
        first: String,
        /// The second rule.
        second: String,
    },
    /// A board profile does not parse or is inconsistent.
    #[error("board profile {origin}: {reason}")]
    Profile {
        /// The profile's name or path.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The GPIO backend failed (no GPIO on this machine, a pin in use, no permission).
    #[error("GPIO: {0}")]
    Gpio(String),
}

/// This crate's result.
pub type Result<T, E = BoardError> = std::result::Result<T, E>;

/// The pins for `rules` on this machine: the Raspberry Pi's GPIO (feature `rpi`), or a clear
/// error where there is none.
pub fn open_pins(rules: &RuleSet) -> Result<Box<dyn Pins + Send>> {
    #[cfg(feature = "rpi")]
    {
        Ok(Box::new(rpi::RppalPins::open(rules)?))
    }
    #[cfg(not(feature = "rpi"))]
    {
        let _ = rules;
        Err(BoardError::Gpio(
            "this dinoedge was built without GPIO support: GPIO rules need a Raspberry Pi and a \
             build with `--features rpi`"
                .into(),
        ))
    }
}
