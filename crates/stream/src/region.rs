//! Regions of the frame that per-frame summaries are taken over ("the nearest depth in the
//! lower middle", "how much of the left third is road").

use ndarray::{ArrayView2, s};
use serde_json::{Value, json};

use crate::result::{Analysed, FrameResult};

/// A rectangle in fractions of the frame (0,0 top left; 1,1 bottom right), with a name.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Name in the JSON output.
    pub name: String,
    /// Left, top, right, bottom as fractions of the width and height.
    pub rect: [f32; 4],
}

impl Region {
    /// The whole frame.
    pub fn frame() -> Region {
        Region {
            name: "frame".into(),
            rect: [0.0, 0.0, 1.0, 1.0],
        }
    }

    /// The pixel rows and columns this region covers in an `h`×`w` map (at least one each).
    pub fn pixels(&self, h: usize, w: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let [l, t, r, b] = self.rect;
        let span = |a: f32, b: f32, n: usize| {
            let lo = ((a * n as f32).floor() as usize).min(n.saturating_sub(1));
            let hi = ((b * n as f32).ceil() as usize).clamp(lo + 1, n.max(1));
            lo..hi
        };
        (span(t, b, h), span(l, r, w))
    }

    /// Summary of every result of a pass over this region: with classes and depth from one
    /// pass, one object with both `classes` and the depth's key.
    pub fn summarise_all(&self, r: &FrameResult) -> Value {
        let mut v = json!({"region": self.name});
        for part in r.parts() {
            if let (Value::Object(all), Value::Object(one)) = (&mut v, self.summarise(part)) {
                all.extend(one);
            }
        }
        v
    }

    /// Summary of a result over this region: nearest, median and mean depth, or the fraction
    /// of each class present.
    pub fn summarise(&self, a: &Analysed) -> Value {
        let mut v = json!({"region": self.name});
        match a {
            Analysed::Depth(d) => {
                let (rows, cols) = self.pixels(d.nrows(), d.ncols());
                v["depth"] = depth_summary(d.slice(s![rows, cols]));
            }
            Analysed::RelativeDepth(d) => {
                let (rows, cols) = self.pixels(d.nrows(), d.ncols());
                v["relative_depth"] = relative_depth_summary(d.slice(s![rows, cols]));
            }
            Analysed::Seg(seg, palette) => {
                v["classes"] = class_summary(
                    self.pixels(seg.labels.nrows(), seg.labels.ncols()),
                    seg,
                    palette,
                )
            }
            Analysed::Features(_) | Analysed::Pca(_) => {}
        }
        v
    }
}

/// The fraction of each class present in `(rows, cols)` of `seg`, with the palette's names.
fn class_summary(
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    seg: &dinoedge_heads::SegOutput,
    palette: &dinoedge_heads::Palette,
) -> Value {
    let part = seg.labels.slice(s![rows, cols]);
    let mut counts = [0u64; 256];
    for &l in part.iter() {
        counts[l as usize] += 1;
    }
    let n = part.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(k, c)| {
            let mut e = json!({"class": k, "fraction": *c as f64 / n});
            if let Some(name) = palette.names.get(k) {
                e["name"] = json!(name);
            }
            e
        })
        .collect()
}

/// Smallest, largest, mean and median of `v` (not empty), the median by selection, not a
/// sort: this runs on every frame.
fn spread(v: &mut [f32]) -> (f32, f32, f64, f32) {
    let (mut lo, mut hi, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0f64);
    for &x in v.iter() {
        lo = lo.min(x);
        hi = hi.max(x);
        sum += x as f64;
    }
    let n = v.len();
    let median = *v.select_nth_unstable_by(n / 2, f32::total_cmp).1;
    (lo, hi, sum / n as f64, median)
}

/// Relative inverse depth (larger is nearer, no unit): the nearest is the largest value.
fn relative_depth_summary(d: ArrayView2<f32>) -> Value {
    let mut v: Vec<f32> = d.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return json!({"valid_fraction": 0.0});
    }
    let (lo, hi, mean, median) = spread(&mut v);
    json!({
        "unit": "relative inverse depth: larger is nearer, no unit",
        "nearest": hi,
        "median": median,
        "mean": mean,
        "farthest": lo,
        "valid_fraction": v.len() as f64 / d.len().max(1) as f64,
    })
}

fn depth_summary(d: ArrayView2<f32>) -> Value {
    let mut v = crate::render::valid_depths(d);
    if v.is_empty() {
        return json!({"valid_fraction": 0.0});
    }
    let (lo, hi, mean, median) = spread(&mut v);
    json!({
        "nearest_m": lo,
        "median_m": median,
        "mean_m": mean,
        "farthest_m": hi,
        "valid_fraction": v.len() as f64 / d.len().max(1) as f64,
    })
}

impl std::str::FromStr for Region {
    type Err = String;

    /// `NAME=LEFT,TOP,RIGHT,BOTTOM` in fractions of the frame, e.g. `ahead=0.33,0.5,0.67,1`.
    fn from_str(s: &str) -> Result<Region, String> {
        let (name, rect) = s.split_once('=').ok_or_else(|| {
            format!("region `{s}`: write NAME=LEFT,TOP,RIGHT,BOTTOM in fractions of the frame, e.g. ahead=0.33,0.5,0.67,1")
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("region `{s}`: the name is empty"));
        }
        let parts: Vec<&str> = rect.split(',').map(str::trim).collect();
        if parts.len() != 4 {
            return Err(format!(
                "region `{s}`: {} numbers; give LEFT,TOP,RIGHT,BOTTOM",
                parts.len()
            ));
        }
        let mut r = [0f32; 4];
        for (x, p) in r.iter_mut().zip(&parts) {
            *x = p
                .parse()
                .map_err(|_| format!("region `{s}`: `{p}` is not a number"))?;
            if !(0.0..=1.0).contains(x) {
                return Err(format!(
                    "region `{s}`: {p} is outside 0..1 (fractions of the frame)"
                ));
            }
        }
        if r[2] <= r[0] || r[3] <= r[1] {
            return Err(format!(
                "region `{s}`: right must be > left and bottom > top"
            ));
        }
        Ok(Region {
            name: name.to_string(),
            rect: r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_pixels() {
        let r: Region = "ahead=0.25,0.5,0.75,1".parse().unwrap();
        assert_eq!(r.pixels(100, 200), (50..100, 50..150));
        assert_eq!(Region::frame().pixels(3, 4), (0..3, 0..4));
        // a sliver still covers one pixel
        let r: Region = "x=0.5,0.5,0.501,0.501".parse().unwrap();
        assert_eq!(r.pixels(10, 10), (5..6, 5..6));
        for bad in [
            "0,0,1,1",
            "a=0,0,1",
            "a=0,0,1,x",
            "a=0.5,0,0.2,1",
            "a=0,0,1,2",
        ] {
            assert!(bad.parse::<Region>().is_err(), "{bad}");
        }
    }
}
