//! Class names and colours for segmentation maps.

use image::RgbImage;
use ndarray::ArrayView2;

use crate::pth::Value;

const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The 21 PASCAL VOC class names (class 0 is background).
pub fn voc_classes() -> &'static [&'static str] {
    &VOC_CLASSES
}

/// The PASCAL VOC colour of class `i` (the bit-interleaving colour map of the VOC devkit,
/// which is also what VOC's label PNGs use).
pub fn voc_color(i: usize) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = i;
    for j in 0..8 {
        r |= ((c & 1) as u8) << (7 - j);
        g |= (((c >> 1) & 1) as u8) << (7 - j);
        b |= (((c >> 2) & 1) as u8) << (7 - j);
        c >>= 3;
    }
    [r, g, b]
}

/// Class names and colours.
#[derive(Debug, Clone, PartialEq)]
pub struct Palette {
    /// One name per class.
    pub names: Vec<String>,
    /// One colour per class.
    pub colors: Vec<[u8; 3]>,
}

impl Palette {
    /// PASCAL VOC 2012: 21 classes with the devkit's colours.
    pub fn voc() -> Palette {
        Palette {
            names: VOC_CLASSES.iter().map(|s| s.to_string()).collect(),
            colors: (0..21).map(voc_color).collect(),
        }
    }

    /// `n` classes named `class 0`, … with the VOC colour sequence.
    pub fn generic(n: usize) -> Palette {
        Palette {
            names: (0..n).map(|i| format!("class {i}")).collect(),
            colors: (0..n).map(voc_color).collect(),
        }
    }

    /// `CLASSES` and `PALETTE` from an mmseg checkpoint's `meta`, when they are there and
    /// have `classes` entries.
    pub fn from_meta(root: &Value, classes: usize) -> Option<Palette> {
        let meta = root.get("meta")?;
        let names: Vec<String> = meta
            .get("CLASSES")?
            .items()?
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()?;
        if names.len() != classes {
            return None;
        }
        let colors = match meta.get("PALETTE").and_then(Value::items) {
            Some(items) if items.len() == classes => items
                .iter()
                .map(|c| {
                    let rgb = c.items()?;
                    let v: Vec<u8> = rgb
                        .iter()
                        .map(|x| x.as_int().and_then(|i| u8::try_from(i).ok()))
                        .collect::<Option<_>>()?;
                    (v.len() == 3).then(|| [v[0], v[1], v[2]])
                })
                .collect::<Option<Vec<_>>>()?,
            _ => (0..classes).map(voc_color).collect(),
        };
        Some(Palette { names, colors })
    }

    /// Read a palette file: JSON `{"names": [...], "colors": [[r, g, b], ...]}`, 1 to 255
    /// classes, as many names as colours.
    pub fn read_json(path: &std::path::Path) -> Result<Palette, crate::HeadsError> {
        #[derive(serde::Deserialize)]
        struct File {
            names: Vec<String>,
            colors: Vec<[u8; 3]>,
        }
        let bad = |reason: String| crate::HeadsError::Dataset {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let f: File = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "a palette is {{\"names\": [...], \"colors\": [[r, g, b], ...]}} ({e})"
            ))
        })?;
        if f.names.len() != f.colors.len() || f.names.is_empty() || f.names.len() > 255 {
            return Err(bad(format!(
                "{} names and {} colours: give 1 to 255 of each, as many names as colours",
                f.names.len(),
                f.colors.len()
            )));
        }
        Ok(Palette {
            names: f.names,
            colors: f.colors,
        })
    }

    /// The class map in colour.
    pub fn colorize(&self, labels: ArrayView2<u8>) -> RgbImage {
        let (h, w) = labels.dim();
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let c = labels[(y as usize, x as usize)] as usize;
            image::Rgb(self.colors.get(c).copied().unwrap_or([255, 255, 255]))
        })
    }

    /// The class of each colour in a colour-coded mask (`None` for a colour not in the palette).
    pub fn class_of(&self, rgb: [u8; 3]) -> Option<u8> {
        self.colors.iter().position(|&c| c == rgb).map(|i| i as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_colours() {
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]); // person
        assert_eq!(voc_color(20), [0, 64, 128]); // tvmonitor
        let p = Palette::voc();
        assert_eq!(p.class_of([192, 128, 128]), Some(15));
        assert_eq!(p.class_of([224, 224, 192]), None); // VOC's "ignore" border
    }
}
