//! GPIO rules: outputs driven by results, inputs that trigger snapshots.
//!
//! One rule per `--gpio` flag (or per entry of a profile's `gpio` list), `PIN=ACTION`, with BCM
//! pin numbers 0–27:
//!
//! | rule | meaning |
//! |---|---|
//! | `17=high:nearest(ahead)<0.8` | pin 17 high while the nearest depth in region `ahead` is under 0.8 m (`>` too) |
//! | `18=pwm:proximity(ahead,0.3,2)` | PWM duty 100 % at ≤ 0.3 m, 0 % at ≥ 2 m, linear between |
//! | `22=high:class(person)>0.05` | high while class `person` covers more than 5 % of the frame |
//! | `23=high:class(person@ahead)>0.2` | … of region `ahead` |
//! | `27=snapshot` | an input: a rising edge asks for a snapshot |
//!
//! Outputs are low (duty 0) while there is no result or the rule's region/class is unknown.

use std::collections::BTreeMap;

use crate::{BoardError, Result};

/// What the rules read from a result.
pub trait Measures {
    /// The nearest valid depth in `region`, metres.
    fn nearest_m(&self, region: &str) -> Option<f32>;
    /// The share of `region` (0–1) covered by class `class`.
    fn coverage(&self, class: &str, region: &str) -> Option<f32>;
}

/// A GPIO backend: rppal on a Raspberry Pi, a recorder in tests.
pub trait Pins {
    /// Drive output `pin`.
    fn set(&mut self, pin: u8, high: bool) -> Result<()>;
    /// Software PWM on `pin` with `duty` in 0–1.
    fn pwm(&mut self, pin: u8, duty: f32) -> Result<()>;
    /// Read input `pin`.
    fn read(&mut self, pin: u8) -> Result<bool>;
}

/// Comparison of a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cmp {
    /// Below the threshold.
    Below(f32),
    /// Above the threshold.
    Above(f32),
}

impl Cmp {
    fn holds(self, v: f32) -> bool {
        match self {
            Cmp::Below(t) => v < t,
            Cmp::Above(t) => v > t,
        }
    }
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Output high while the nearest depth in `region` compares true.
    Nearest {
        /// BCM pin.
        pin: u8,
        /// Region name (`frame` is the whole frame).
        region: String,
        /// The test.
        cmp: Cmp,
    },
    /// PWM whose duty follows proximity.
    Proximity {
        /// BCM pin.
        pin: u8,
        /// Region name.
        region: String,
        /// Full duty at or below this depth.
        near_m: f32,
        /// Zero duty at or beyond this depth.
        far_m: f32,
    },
    /// Output high while a class's coverage compares true.
    Class {
        /// BCM pin.
        pin: u8,
        /// Class name (as in the head's palette).
        class: String,
        /// Region name.
        region: String,
        /// The test.
        cmp: Cmp,
    },
    /// Input: a rising edge asks for a snapshot.
    Snapshot {
        /// BCM pin.
        pin: u8,
    },
}

impl Rule {
    /// The rule's pin.
    pub fn pin(&self) -> u8 {
        match self {
            Rule::Nearest { pin, .. }
            | Rule::Proximity { pin, .. }
            | Rule::Class { pin, .. }
            | Rule::Snapshot { pin } => *pin,
        }
    }

    /// Regions the rule reads (to check against `--region`).
    pub fn region(&self) -> Option<&str> {
        match self {
            Rule::Nearest { region, .. }
            | Rule::Proximity { region, .. }
            | Rule::Class { region, .. } => Some(region),
            Rule::Snapshot { .. } => None,
        }
    }
}

const FORMS: &str = "forms: PIN=high:nearest(REGION)<METRES, PIN=pwm:proximity(REGION,NEAR,FAR), \
                     PIN=high:class(NAME[@REGION])>FRACTION, PIN=snapshot (BCM pins 0-27)";

fn number(s: &str, what: &str) -> std::result::Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what} {s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{what} must be finite"))
    }
}

/// `name(args)REST` → (args, REST).
fn call<'a>(s: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let rest = s.strip_prefix(name)?.strip_prefix('(')?;
    let close = rest.find(')')?;
    Some((&rest[..close], &rest[close + 1..]))
}

fn compare(s: &str) -> std::result::Result<Cmp, String> {
    let s = s.trim();
    if let Some(v) = s.strip_prefix('<') {
        Ok(Cmp::Below(number(v, "the threshold")?))
    } else if let Some(v) = s.strip_prefix('>') {
        Ok(Cmp::Above(number(v, "the threshold")?))
    } else {
        Err(format!(
            "expected <VALUE or >VALUE after the measure, found {s:?}"
        ))
    }
}

fn region_name(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    if s.is_empty() || !s.chars().all(|c| c.is_alphanumeric() || "_-".contains(c)) {
        return Err(format!("region {s:?}: letters, digits, '_' and '-'"));
    }
    Ok(s.to_string())
}

impl std::str::FromStr for Rule {
    type Err = BoardError;

    fn from_str(text: &str) -> Result<Rule> {
        let err = |reason: String| BoardError::Rule {
            rule: text.to_string(),
            reason: format!("{reason}; {FORMS}"),
        };
        let (pin, action) = text
            .split_once('=')
            .ok_or_else(|| err("no '=' between the pin and the action".into()))?;
        let pin: u8 = pin
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 27)
            .ok_or_else(|| {
                err(format!(
                    "pin {:?} is not a BCM GPIO number 0-27",
                    pin.trim()
                ))
            })?;
        let action = action.trim();
        if action == "snapshot" {
            return Ok(Rule::Snapshot { pin });
        }
        if let Some(body) = action.strip_prefix("high:") {
            let body = body.trim();
            if let Some((args, rest)) = call(body, "nearest") {
                let cmp = compare(rest).map_err(err)?;
                if let Cmp::Below(t) | Cmp::Above(t) = cmp
                    && t <= 0.0
                {
                    return Err(err("a depth threshold is above 0 m".into()));
                }
                return Ok(Rule::Nearest {
                    pin,
                    region: region_name(args).map_err(err)?,
                    cmp,
                });
            }
            if let Some((args, rest)) = call(body, "class") {
                let (class, region) = match args.split_once('@') {
                    Some((c, r)) => (c.trim(), region_name(r).map_err(err)?),
                    None => (args.trim(), "frame".to_string()),
                };
                if class.is_empty() {
                    return Err(err("class() needs a class name".into()));
                }
                let cmp = compare(rest).map_err(err)?;
                if let Cmp::Below(t) | Cmp::Above(t) = cmp
                    && !(0.0..=1.0).contains(&t)
                {
                    return Err(err("a coverage threshold is a fraction 0-1".into()));
                }
                return Ok(Rule::Class {
                    pin,
                    class: class.to_string(),
                    region,
                    cmp,
                });
            }
            return Err(err(format!("unknown measure {body:?}")));
        }
        if let Some(body) = action.strip_prefix("pwm:") {
            let (args, rest) = call(body.trim(), "proximity")
                .ok_or_else(|| err("pwm: takes proximity(REGION,NEAR,FAR)".into()))?;
            if !rest.trim().is_empty() {
                return Err(err(format!("unexpected {rest:?} after proximity(…)")));
            }
            let parts: Vec<&str> = args.split(',').collect();
            let [region, near, far] = parts[..] else {
                return Err(err(
                    "proximity takes three arguments: REGION,NEAR,FAR".into()
                ));
            };
            let (near_m, far_m) = (
                number(near, "NEAR").map_err(err)?,
                number(far, "FAR").map_err(err)?,
            );
            if !(0.0 <= near_m && near_m < far_m) {
                return Err(err(format!(
                    "NEAR ({near_m}) must be ≥ 0 and below FAR ({far_m})"
                )));
            }
            return Ok(Rule::Proximity {
                pin,
                region: region_name(region).map_err(err)?,
                near_m,
                far_m,
            });
        }
        Err(err(format!("unknown action {action:?}")))
    }
}

/// What one evaluation set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// A digital level.
    Level(bool),
    /// A PWM duty, 0–1.
    Duty(f32),
}

/// The rules of a run, with the input pins' last levels (for edges).
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<(String, Rule)>,
    last_inputs: BTreeMap<u8, bool>,
}

impl RuleSet {
    /// The rules that read a depth in metres (`nearest`, `proximity`), as written: they need a
    /// model whose depth is in metres.
    pub fn depth_rules(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|(_, r)| matches!(r, Rule::Nearest { .. } | Rule::Proximity { .. }))
            .map(|(text, _)| text.as_str())
            .collect()
    }

    /// Parse rules; a pin used twice is an error.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<RuleSet> {
        let mut rules: Vec<(String, Rule)> = Vec::new();
        for t in texts {
            let t = t.as_ref().trim();
            let rule: Rule = t.parse()?;
            if let Some((first, _)) = rules.iter().find(|(_, r)| r.pin() == rule.pin()) {
                return Err(BoardError::PinTwice {
                    pin: rule.pin(),
                    first: first.clone(),
                    second: t.to_string(),
                });
            }
            rules.push((t.to_string(), rule));
        }
        Ok(RuleSet {
            rules,
            last_inputs: BTreeMap::new(),
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(_, r)| r)
    }

    /// What each output rule asks for given `measures` (`None`: no result yet → all low).
    pub fn evaluate(&self, measures: Option<&dyn Measures>) -> Vec<(u8, Output)> {
        self.rules()
            .filter_map(|r| {
                let m = measures;
                let out = match r {
                    Rule::Nearest { region, cmp, .. } => Output::Level(
                        m.and_then(|m| m.nearest_m(region))
                            .is_some_and(|v| cmp.holds(v)),
                    ),
                    Rule::Class {
                        class, region, cmp, ..
                    } => Output::Level(
                        m.and_then(|m| m.coverage(class, region))
                            .is_some_and(|v| cmp.holds(v)),
                    ),
                    Rule::Proximity {
                        region,
                        near_m,
                        far_m,
                        ..
                    } => Output::Duty(
                        m.and_then(|m| m.nearest_m(region))
                            .map(|d| ((far_m - d) / (far_m - near_m)).clamp(0.0, 1.0))
                            .unwrap_or(0.0),
                    ),
                    Rule::Snapshot { .. } => return None,
                };
                Some((r.pin(), out))
            })
            .collect()
    }

    /// Evaluate and drive the pins.
    pub fn apply(&self, measures: Option<&dyn Measures>, pins: &mut dyn Pins) -> Result<()> {
        for (pin, out) in self.evaluate(measures) {
            match out {
                Output::Level(high) => pins.set(pin, high)?,
                Output::Duty(d) => pins.pwm(pin, d)?,
            }
        }
        Ok(())
    }

    /// Read the snapshot inputs: true when any has gone from low to high since the last call.
    pub fn snapshot_requested(&mut self, pins: &mut dyn Pins) -> Result<bool> {
        let mut fire = false;
        for (_, r) in &self.rules {
            if let Rule::Snapshot { pin } = r {
                let now = pins.read(*pin)?;
                let before = self.last_inputs.insert(*pin, now).unwrap_or(now);
                fire |= now && !before;
            }
        }
        Ok(fire)
    }
}
