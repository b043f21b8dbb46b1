//! The Raspberry Pi's GPIO through `rppal` (feature `rpi`).

use std::collections::HashMap;

use rppal::gpio::{Gpio, InputPin, OutputPin};

use crate::gpio::{Pins, Rule, RuleSet};
use crate::{BoardError, Result};

/// PWM frequency of proximity outputs (software PWM; enough for a buzzer's or LED's duty).
const PWM_HZ: f64 = 200.0;

/// The pins of a rule set, set up: outputs low, snapshot inputs with pull-downs.
pub struct RppalPins {
    outputs: HashMap<u8, OutputPin>,
    inputs: HashMap<u8, InputPin>,
}

impl RppalPins {
    /// Open the GPIO and claim the rules' pins.
    pub fn open(rules: &RuleSet) -> Result<RppalPins> {
        let gpio = Gpio::new().map_err(|e| {
            BoardError::Gpio(format!(
                "cannot open the GPIO ({e}): GPIO rules need a Raspberry Pi, and access to \
                 /dev/gpiomem (the `gpio` group)"
            ))
        })?;
        let mut outputs = HashMap::new();
        let mut inputs = HashMap::new();
        for r in rules.rules() {
            let pin = gpio
                .get(r.pin())
                .map_err(|e| BoardError::Gpio(format!("pin {}: {e}", r.pin())))?;
            match r {
                Rule::Snapshot { .. } => {
                    inputs.insert(r.pin(), pin.into_input_pulldown());
                }
                _ => {
                    outputs.insert(r.pin(), pin.into_output_low());
                }
            }
        }
        Ok(RppalPins { outputs, inputs })
    }

    fn output(&mut self, pin: u8) -> Result<&mut OutputPin> {
        self.outputs
            .get_mut(&pin)
            .ok_or_else(|| BoardError::Gpio(format!("pin {pin} is not an output of the rules")))
    }
}

impl Pins for RppalPins {
    fn set(&mut self, pin: u8, high: bool) -> Result<()> {
        let p = self.output(pin)?;
        if high {
            p.set_high()
        } else {
            p.set_low()
        }
        Ok(())
    }

    fn pwm(&mut self, pin: u8, duty: f32) -> Result<()> {
        let p = self.output(pin)?;
        p.set_pwm_frequency(PWM_HZ, duty.clamp(0.0, 1.0) as f64)
            .map_err(|e| BoardError::Gpio(format!("pin {pin}: {e}")))
    }

    fn read(&mut self, pin: u8) -> Result<bool> {
        self.inputs
            .get(&pin)
            .map(|p| p.is_high())
            .ok_or_else(|| BoardError::Gpio(format!("pin {pin} is not an input of the rules")))
    }
}
