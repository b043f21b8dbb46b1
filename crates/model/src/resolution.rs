//! Input resolutions: any height and width that are multiples of the patch size.

use std::fmt;
use std::str::FromStr;

use crate::error::{ModelError, Result};

/// An input size in pixels (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Resolution {
    /// Height in pixels.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
}

/// The most patches a model runs at (99x101 of them, 1386x1414 pixels at patch 14): beyond,
/// the activations take gigabytes and tract's unfused attention (ARM) its square.
pub const MAX_TOKENS: u64 = 10_000;

impl Resolution {
    /// A resolution, not yet checked against a model's patch size.
    pub const fn new(height: u32, width: u32) -> Self {
        Resolution { height, width }
    }

    /// A square resolution.
    pub const fn square(side: u32) -> Self {
        Resolution {
            height: side,
            width: side,
        }
    }

    /// Check that both sides are positive multiples of `patch` and the patches no more than
    /// [`MAX_TOKENS`]; the error names the nearest valid sizes.
    pub fn validate(self, patch: u32) -> Result<Self> {
        let bad = |v: u32| v == 0 || !v.is_multiple_of(patch);
        if !bad(self.height) && !bad(self.width) {
            let tokens = (self.height / patch) as u64 * (self.width / patch) as u64;
            if tokens > MAX_TOKENS {
                let side = (MAX_TOKENS as f64).sqrt() as u32 * patch;
                return Err(ModelError::InvalidResolution {
                    height: self.height,
                    width: self.width,
                    reason: format!(
                        "{tokens} patches, more than the {MAX_TOKENS} dinoedge runs (about \
                         {side}x{side}): memory grows with the patches and attention with their \
                         square; choose a smaller --size"
                    ),
                });
            }
            return Ok(self);
        }
        let mut parts = vec![];
        for (name, v) in [("height", self.height), ("width", self.width)] {
            if bad(v) {
                let (lo, hi) = nearest(v, patch);
                let options = match lo {
                    Some(lo) => format!("{lo} or {hi}"),
                    None => format!("{hi}"),
                };
                parts.push(format!(
                    "{name} {v} is not a multiple of {patch} (nearest: {options})"
                ));
            }
        }
        let (hl, hh) = nearest_or_self(self.height, patch);
        let (wl, wh) = nearest_or_self(self.width, patch);
        let mut suggestions: Vec<String> = vec![];
        for h in [hl, hh].into_iter().flatten() {
            for w in [wl, wh].into_iter().flatten() {
                let s = format!("{h}x{w}");
                if !suggestions.contains(&s) {
                    suggestions.push(s);
                }
            }
        }
        Err(ModelError::InvalidResolution {
            height: self.height,
            width: self.width,
            reason: format!("{}; try {}", parts.join(", "), suggestions.join(", ")),
        })
    }

    /// The patch grid (rows, columns) for a patch size.
    pub fn grid(self, patch: u32) -> (usize, usize) {
        (
            (self.height / patch) as usize,
            (self.width / patch) as usize,
        )
    }

    /// Number of pixels.
    pub fn pixels(self) -> usize {
        self.height as usize * self.width as usize
    }
}

fn nearest(v: u32, patch: u32) -> (Option<u32>, u32) {
    let lo = (v / patch) * patch;
    (if lo > 0 { Some(lo) } else { None }, lo + patch)
}

fn nearest_or_self(v: u32, patch: u32) -> (Option<u32>, Option<u32>) {
    if v > 0 && v.is_multiple_of(patch) {
        (Some(v), None)
    } else {
        let (lo, hi) = nearest(v, patch);
        (lo, Some(hi))
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.height, self.width)
    }
}

impl FromStr for Resolution {
    type Err = ModelError;

    /// Parses `HxW` (`308x448`), `H,W` or a single number for a square.
    fn from_str(s: &str) -> Result<Self> {
        let err = || ModelError::ParseResolution {
            text: s.to_string(),
        };
        let t = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = t.split(['x', ',', '×']).map(str::trim).collect();
        let num = |p: &str| p.parse::<u32>().map_err(|_| err());
        match parts.as_slice() {
            [side] => Ok(Resolution::square(num(side)?)),
            [h, w] => Ok(Resolution::new(num(h)?, num(w)?)),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(
            "308x448".parse::<Resolution>().unwrap(),
            Resolution::new(308, 448)
        );
        assert_eq!(
            "224".parse::<Resolution>().unwrap(),
            Resolution::square(224)
        );
        assert_eq!(
            " 42 , 56 ".parse::<Resolution>().unwrap(),
            Resolution::new(42, 56)
        );
        assert!(matches!(
            "224x".parse::<Resolution>(),
            Err(ModelError::ParseResolution { .. })
        ));
        assert!("ax3".parse::<Resolution>().is_err());
    }

    #[test]
    fn valid_sizes_pass() {
        assert_eq!(
            Resolution::new(308, 448).validate(14).unwrap().grid(14),
            (22, 32)
        );
    }

    #[test]
    fn a_size_too_large_to_run_is_refused_before_anything_is_allocated() {
        // 7142x7142 patches of 14: 51 million, as `--size 99988x99988` asks
        let e = Resolution::new(99988, 99988)
            .validate(14)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("51008164 patches") && e.contains("smaller --size"),
            "{e}"
        );
        assert!(Resolution::new(1386, 1400).validate(14).is_ok());
        assert!(Resolution::new(1400, 1414).validate(14).is_err());
    }

    #[test]
    fn invalid_size_names_nearest_valid_sizes() {
        let e = Resolution::new(224, 230)
            .validate(14)
            .unwrap_err()
            .to_string();
        assert!(e.contains("width 230 is not a multiple of 14"), "{e}");
        assert!(e.contains("224x224") && e.contains("224x238"), "{e}");
        let e = Resolution::new(10, 0).validate(14).unwrap_err().to_string();
        assert!(e.contains("14x14"), "{e}");
        assert!(e.contains("height 10") && e.contains("width 0"), "{e}");
    }
}
