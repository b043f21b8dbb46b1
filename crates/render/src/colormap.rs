//! Colour maps for scalar fields (attention, depth, principal components).

use std::str::FromStr;

use crate::RenderError;

/// A perceptual colour map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Google's Turbo (depth).
    Turbo,
    /// Viridis.
    #[default]
    Viridis,
    /// Inferno (attention).
    Inferno,
    /// Plain grey ramp.
    Gray,
}

impl Colormap {
    /// The colour at `t` in [0, 1] (clamped; NaN maps to 0).
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) } as f64;
        let c = match self {
            Colormap::Turbo => colorous::TURBO.eval_continuous(t),
            Colormap::Viridis => colorous::VIRIDIS.eval_continuous(t),
            Colormap::Inferno => colorous::INFERNO.eval_continuous(t),
            Colormap::Gray => {
                let v = (t * 255.0).round() as u8;
                return [v, v, v];
            }
        };
        [c.r, c.g, c.b]
    }
}

/// Steps in [`Colormap::table`].
pub const TABLE_STEPS: usize = 1024;

impl Colormap {
    /// The map as a table of [`TABLE_STEPS`] colours from 0 to 1, built once per map (for
    /// per-pixel colouring: evaluating the continuous map costs ~1 µs a call).
    pub fn table(self) -> &'static [[u8; 3]] {
        use std::sync::OnceLock;
        static TABLES: [OnceLock<Vec<[u8; 3]>>; 4] = [const { OnceLock::new() }; 4];
        let slot = match self {
            Colormap::Turbo => 0,
            Colormap::Viridis => 1,
            Colormap::Inferno => 2,
            Colormap::Gray => 3,
        };
        TABLES[slot].get_or_init(|| {
            (0..TABLE_STEPS)
                .map(|i| self.rgb(i as f32 / (TABLE_STEPS - 1) as f32))
                .collect()
        })
    }
}

impl FromStr for Colormap {
    type Err = RenderError;
    fn from_str(s: &str) -> Result<Self, RenderError> {
        match s.to_ascii_lowercase().as_str() {
            "turbo" => Ok(Colormap::Turbo),
            "viridis" => Ok(Colormap::Viridis),
            "inferno" => Ok(Colormap::Inferno),
            "gray" | "grey" => Ok(Colormap::Gray),
            o => Err(RenderError::InvalidOption(format!(
                "unknown colour map {o:?}: use turbo, viridis, inferno or gray"
            ))),
        }
    }
}

/// Scale values to [0, 1] by their minimum and maximum (all zeros when constant).
pub fn min_max(values: &mut [f32]) {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let span = hi - lo;
    for v in values.iter_mut() {
        *v = if span > 0.0 && v.is_finite() {
            (*v - lo) / span
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_maps() {
        assert_eq!(Colormap::Gray.rgb(0.0), [0, 0, 0]);
        assert_eq!(Colormap::Gray.rgb(2.0), [255, 255, 255]);
        assert_ne!(Colormap::Viridis.rgb(0.0), Colormap::Viridis.rgb(1.0));
        assert_eq!(Colormap::Turbo.rgb(f32::NAN), Colormap::Turbo.rgb(0.0));
        assert!("jet".parse::<Colormap>().is_err());
    }

    #[test]
    fn min_max_scales() {
        let mut v = vec![2.0, 4.0, 3.0];
        min_max(&mut v);
        assert_eq!(v, vec![0.0, 1.0, 0.5]);
        let mut c = vec![1.0, 1.0];
        min_max(&mut c);
        assert_eq!(c, vec![0.0, 0.0]);
    }
}
