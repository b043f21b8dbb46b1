//! Labelled image folders for training and evaluating heads: images paired with class masks
//! (class-id PNG or colour PNG with a palette) or with depth maps (16-bit PNG or `.npy`).
//!
//! Two layouts are recognised, checked in this order:
//! - `DATA/images/NAME.{jpg,png}` with `DATA/{masks,labels,annotations,targets,depth}/NAME.{png,npy}`;
//! - one flat folder where `NAME_image.png` (or `NAME_rgb.png`, `NAME_color.png`, `NAME.jpg`)
//!   sits beside `NAME_{target,mask,label,depth}.{png,npy}` (the layout of the VOC samples).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use dinoedge_heads::HeadsError;
use dinoedge_heads::palette::Palette;

/// Class id meaning "not labelled" inside dinoedge (and in class-id masks by default).
pub const IGNORE: u8 = 255;

const IMAGE_EXTS: [&str; 3] = ["png", "jpg", "jpeg"];
const LABEL_DIRS: [&str; 5] = ["masks", "labels", "annotations", "targets", "depth"];
const LABEL_SUFFIXES: [&str; 4] = ["target", "mask", "label", "depth"];
const IMAGE_SUFFIXES: [&str; 3] = ["image", "rgb", "color"];

/// One image and its label file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image.
    pub image: PathBuf,
    /// Its mask or depth map.
    pub label: PathBuf,
}

/// The pairs found in a folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder.
    pub root: PathBuf,
    /// Image/label pairs, in natural file-name order.
    pub samples: Vec<Sample>,
    /// Images for which no label was found (skipped).
    pub unlabelled: Vec<PathBuf>,
}

fn dataset_err(path: &Path, reason: impl Into<String>) -> HeadsError {
    HeadsError::Dataset {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, HeadsError> {
    let rd = std::fs::read_dir(dir).map_err(|e| dataset_err(dir, e.to_string()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    alphanumeric_sort::sort_path_slice(&mut files);
    Ok(files)
}

impl Dataset {
    /// Find the image/label pairs under `root`. An empty folder, or one where no image has a
    /// label, is an error that says which layouts are expected.
    pub fn open(root: &Path) -> Result<Dataset, HeadsError> {
        if !root.is_dir() {
            return Err(if root.exists() {
                dataset_err(root, "not a folder")
            } else {
                HeadsError::NotFound(root.to_owned())
            });
        }
        let images_dir = root.join("images");
        let (samples, unlabelled) = if images_dir.is_dir() {
            let label_dirs: Vec<PathBuf> = LABEL_DIRS
                .iter()
                .map(|d| root.join(d))
                .filter(|d| d.is_dir())
                .collect();
            let mut labels: HashMap<String, PathBuf> = HashMap::new();
            for d in &label_dirs {
                for f in files_in(d)? {
                    if matches!(ext_of(&f).as_str(), "png" | "npy")
                        && let Some(stem) = f.file_stem().and_then(|s| s.to_str())
                    {
                        labels.entry(stem.to_string()).or_insert(f);
                    }
                }
            }
            let mut samples = Vec::new();
            let mut unlabelled = Vec::new();
            for img in files_in(&images_dir)? {
                if !IMAGE_EXTS.contains(&ext_of(&img).as_str()) {
                    continue;
                }
                let stem = img.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                match labels.get(stem) {
                    Some(l) => samples.push(Sample {
                        image: img.clone(),
                        label: l.clone(),
                    }),
                    None => unlabelled.push(img),
                }
            }
            (samples, unlabelled)
        } else {
            let files = files_in(root)?;
            let mut by_name: HashMap<String, PathBuf> = HashMap::new();
            for f in &files {
                if let Some(n) = f.file_name().and_then(|s| s.to_str()) {
                    by_name.insert(n.to_ascii_lowercase(), f.clone());
                }
            }
            let is_label = |p: &Path| {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                LABEL_SUFFIXES
                    .iter()
                    .any(|s| stem.to_ascii_lowercase().ends_with(&format!("_{s}")))
            };
            let mut samples = Vec::new();
            let mut unlabelled = Vec::new();
            for img in &files {
                if !IMAGE_EXTS.contains(&ext_of(img).as_str()) || is_label(img) {
                    continue;
                }
                let stem = img.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let lower = stem.to_ascii_lowercase();
                let base = IMAGE_SUFFIXES
                    .iter()
                    .find_map(|s| {
                        lower
                            .strip_suffix(&format!("_{s}"))
                            .map(|b| &stem[..b.len()])
                    })
                    .unwrap_or(stem);
                let label = LABEL_SUFFIXES.iter().find_map(|s| {
                    ["png", "npy"].iter().find_map(|e| {
                        by_name
                            .get(&format!("{base}_{s}.{e}").to_ascii_lowercase())
                            .cloned()
                    })
                });
                match label {
                    Some(label) => samples.push(Sample {
                        image: img.clone(),
                        label,
                    }),
                    None => unlabelled.push(img.clone()),
                }
            }
            (samples, unlabelled)
        };
        if samples.is_empty() {
            let what = if unlabelled.is_empty() {
                "no images found"
            } else {
                "no image has a label"
            };
            return Err(dataset_err(
                root,
                format!(
                    "{what}: expected images/NAME.png with masks/NAME.png (or labels/, depth/), \
                     or NAME_image.png beside NAME_target.png (or _mask, _label, _depth)"
                ),
            ));
        }
        Ok(Dataset {
            root: root.to_owned(),
            samples,
            unlabelled,
        })
    }

    /// Split into training and validation indices: every k-th sample goes to validation so
    /// the split is deterministic and spread over the folder. `fraction` 0 keeps every sample
    /// for training; at least one sample always stays in training.
    pub fn split(&self, fraction: f32) -> (Vec<usize>, Vec<usize>) {
        let n = self.samples.len();
        let n_val = ((n as f32 * fraction.clamp(0.0, 1.0)).round() as usize).min(n - 1);
        if n_val == 0 {
            return ((0..n).collect(), vec![]);
        }
        let mut val = Vec::with_capacity(n_val);
        for j in 0..n_val {
            // spread: centre of the j-th of n_val equal slices
            val.push(((2 * j + 1) * n) / (2 * n_val));
        }
        let train = (0..n).filter(|i| !val.contains(i)).collect();
        (train, val)
    }
}

/// How class masks are read.
#[derive(Debug, Clone)]
pub struct MaskFormat {
    /// Classes: names and colours (colour masks are decoded with these colours).
    pub palette: Palette,
    /// Colours that mean "not labelled" in colour masks (VOC: (224, 224, 192)).
    pub ignore_colors: Vec<[u8; 3]>,
    /// The id that means "not labelled" in class-id masks.
    pub ignore_index: u8,
}

impl MaskFormat {
    /// PASCAL VOC: 21 classes, its colour map, (224, 224, 192) and id 255 ignored.
    pub fn voc() -> MaskFormat {
        MaskFormat {
            palette: Palette::voc(),
            ignore_colors: vec![[224, 224, 192]],
            ignore_index: IGNORE,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.palette.names.len()
    }

    /// Read a mask as class ids (`IGNORE` for unlabelled pixels). Grey 8-bit PNGs are class
    /// ids; colour PNGs (and palette PNGs, which decode to colour) are mapped through the
    /// palette. An id beyond the class count or a colour not in the palette is an error.
    pub fn load(&self, path: &Path) -> Result<Array2<u8>, HeadsError> {
        let img = image::open(path).map_err(|e| dataset_err(path, e.to_string()))?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let k = self.classes();
        match img {
            image::DynamicImage::ImageLuma8(g) => {
                let mut out = Array2::<u8>::zeros((h, w));
                for (x, y, p) in g.enumerate_pixels() {
                    let v = p.0[0];
                    out[(y as usize, x as usize)] = if v == self.ignore_index {
                        IGNORE
                    } else if (v as usize) < k {
                        v
                    } else {
                        return Err(dataset_err(
                            path,
                            format!(
                                "class id {v} at ({x}, {y}) but there are {k} classes \
                                 (0..{}; {} = ignore)",
                                k - 1,
                                self.ignore_index
                            ),
                        ));
                    };
                }
                Ok(out)
            }
            image::DynamicImage::ImageRgb8(_) | image::DynamicImage::ImageRgba8(_) => {
                let rgb = img.to_rgb8();
                let mut lut: HashMap<[u8; 3], u8> = HashMap::new();
                for (i, c) in self.palette.colors.iter().enumerate() {
                    lut.entry(*c).or_insert(i as u8);
                }
                for c in &self.ignore_colors {
                    lut.insert(*c, IGNORE);
                }
                let mut out = Array2::<u8>::zeros((h, w));
                for (x, y, p) in rgb.enumerate_pixels() {
                    out[(y as usize, x as usize)] = match lut.get(&p.0) {
                        Some(&c) => c,
                        None => {
                            let [r, g, b] = p.0;
                            return Err(dataset_err(
                                path,
                                format!(
                                    "unknown colour ({r}, {g}, {b}) at ({x}, {y}): not one of the \
                                     palette's {k} class colours{} — give the right palette \
                                     (--palette) or class-id masks",
                                    if self.ignore_colors.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" or the ignore colour {:?}", self.ignore_colors)
                                    }
                                ),
                            ));
                        }
                    };
                }
                Ok(out)
            }
            other => Err(dataset_err(
                path,
                format!(
                    "a mask must be an 8-bit class-id PNG or a colour PNG, this one is {:?}{}",
                    other.color(),
                    if matches!(other, image::DynamicImage::ImageLuma16(_)) {
                        " (a depth map? use --task depth)"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
}

/// How depth maps are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthFormat {
    /// 16-bit PNG values per metre (1000: millimetres, as NYU and dinoedge's own output).
    pub png_units_per_metre: f32,
}

impl Default for DepthFormat {
    fn default() -> Self {
        DepthFormat {
            png_units_per_metre: 1000.0,
        }
    }
}

impl DepthFormat {
    /// Read a depth map in metres; 0 (or a non-finite value in `.npy`) means "no depth".
    /// 16-bit grey PNG, or a 2-D f32 `.npy` in metres.
    pub fn load(&self, path: &Path) -> Result<Array2<f32>, HeadsError> {
        if ext_of(path) == "npy" {
            let f = std::fs::File::open(path).map_err(|e| dataset_err(path, e.to_string()))?;
            let a: Array2<f32> = ndarray_npy::ReadNpyExt::read_npy(f)
                .map_err(|e| dataset_err(path, format!("not a 2-D f32 .npy depth map ({e})")))?;
            return Ok(a.mapv(|v| if v.is_finite() && v > 0.0 { v } else { 0.0 }));
        }
        let img = image::open(path).map_err(|e| dataset_err(path, e.to_string()))?;
        match img {
            image::DynamicImage::ImageLuma16(g) => {
                let (w, h) = g.dimensions();
                let s = self.png_units_per_metre;
                Ok(Array2::from_shape_fn((h as usize, w as usize), |(y, x)| {
                    g.get_pixel(x as u32, y as u32).0[0] as f32 / s
                }))
            }
            other => Err(dataset_err(
                path,
                format!(
                    "a depth map must be a 16-bit grey PNG or an f32 .npy, this one is {:?}",
                    other.color()
                ),
            )),
        }
    }
}

/// The size of an image file without decoding it.
pub fn image_size(path: &Path) -> Result<(usize, usize), HeadsError> {
    let (w, h) = image::image_dimensions(path).map_err(|e| dataset_err(path, e.to_string()))?;
    Ok((w as usize, h as usize))
}

/// Error unless a label of `label` (w, h) fits its image.
pub fn check_same_size(sample: &Sample, label: (usize, usize)) -> Result<(), HeadsError> {
    let img = image_size(&sample.image)?;
    if img != label {
        return Err(dataset_err(
            &sample.label,
            format!(
                "label is {}x{} but its image {} is {}x{}",
                label.0,
                label.1,
                sample.image.display(),
                img.0,
                img.1
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_spread_and_keeps_one_for_training() {
        let ds = Dataset {
            root: PathBuf::new(),
            samples: (0..10)
                .map(|i| Sample {
                    image: format!("{i}").into(),
                    label: PathBuf::new(),
                })
                .collect(),
            unlabelled: vec![],
        };
        let (t, v) = ds.split(0.2);
        assert_eq!(v, vec![2, 7]);
        assert_eq!(t.len(), 8);
        assert_eq!(ds.split(0.0).1.len(), 0);
        assert_eq!(ds.split(1.0).0.len(), 1);
    }
}
