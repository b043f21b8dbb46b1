//! Principal components of patch features, and the well-known DINOv2 picture: the first
//! component separates foreground from background, the first three components of the
//! foreground patches become red, green and blue.

use image::RgbImage;
use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

use crate::colormap::min_max;
use crate::{RenderError, Result};

/// A fitted PCA: the mean and the leading components.
#[derive(Debug, Clone)]
pub struct Pca {
    mean: Vec<f64>,
    /// `[k, D]`, unit rows, by decreasing variance.
    components: Array2<f32>,
    /// Variance along each component.
    pub explained_variance: Vec<f64>,
}

impl Pca {
    /// Fit `k` components on `data` (`[N, D]`, one row per sample).
    pub fn fit(data: ArrayView2<f32>, k: usize) -> Result<Self> {
        let (n, d) = data.dim();
        if n < 2 {
            return Err(RenderError::Empty(format!(
                "PCA needs at least 2 samples, got {n}"
            )));
        }
        if k == 0 || k > d {
            return Err(RenderError::InvalidOption(format!(
                "cannot take {k} components of {d}-dimensional data"
            )));
        }
        let mean: Vec<f64> = (0..d)
            .map(|j| data.column(j).iter().map(|v| *v as f64).sum::<f64>() / n as f64)
            .collect();
        let mut cov = DMatrix::<f64>::zeros(d, d);
        let mut centered = vec![0f64; d];
        for row in data.axis_iter(Axis(0)) {
            for (j, v) in row.iter().enumerate() {
                centered[j] = *v as f64 - mean[j];
            }
            for a in 0..d {
                let ca = centered[a];
                if ca == 0.0 {
                    continue;
                }
                for b in a..d {
                    cov[(a, b)] += ca * centered[b];
                }
            }
        }
        for a in 0..d {
            for b in a..d {
                let v = cov[(a, b)] / (n - 1) as f64;
                cov[(a, b)] = v;
                cov[(b, a)] = v;
            }
        }
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|a, b| eig.eigenvalues[*b].total_cmp(&eig.eigenvalues[*a]));
        let mut components = Array2::zeros((k, d));
        for (i, &c) in order.iter().take(k).enumerate() {
            for j in 0..d {
                components[[i, j]] = eig.eigenvectors[(j, c)] as f32;
            }
        }
        let explained_variance = order.iter().take(k).map(|&c| eig.eigenvalues[c]).collect();
        Ok(Pca {
            mean,
            components,
            explained_variance,
        })
    }

    /// Project `[N, D]` onto the components: `[N, k]`.
    pub fn transform(&self, data: ArrayView2<f32>) -> Result<Array2<f32>> {
        let d = self.mean.len();
        if data.ncols() != d {
            return Err(RenderError::Shape(format!(
                "PCA was fitted on width {d}, got {}",
                data.ncols()
            )));
        }
        let mean: Vec<f32> = self.mean.iter().map(|m| *m as f32).collect();
        let centered = &data - &ndarray::ArrayView1::from(&mean[..]);
        Ok(centered.dot(&self.components.t()))
    }

    /// Flip the sign of component `i` (PCA signs are arbitrary).
    pub fn flip(&mut self, i: usize) {
        self.components.row_mut(i).mapv_inplace(|v| -v);
    }
}

/// Options of the PCA picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PcaView {
    /// Separate foreground with the first component: patches whose min-max-scaled first
    /// component is above this are foreground. `None` colours every patch.
    pub foreground_threshold: Option<f32>,
}

impl Default for PcaView {
    fn default() -> Self {
        PcaView {
            foreground_threshold: Some(0.5),
        }
    }
}

/// The PCA picture of several patch grids at once (fitted jointly, so colours mean the same
/// across images, as in the DINOv2 paper): one `w`×`h` RGB image per grid, background black.
pub fn pca_images(grids: &[ArrayView3<f32>], view: PcaView) -> Result<Vec<RgbImage>> {
    let Some(first) = grids.first() else {
        return Err(RenderError::Empty("no patch grids".into()));
    };
    let d = first.dim().2;
    if let Some(g) = grids.iter().find(|g| g.dim().2 != d) {
        return Err(RenderError::Shape(format!(
            "feature widths differ: {d} and {}",
            g.dim().2
        )));
    }
    let counts: Vec<usize> = grids.iter().map(|g| g.dim().0 * g.dim().1).collect();
    let n: usize = counts.iter().sum();
    let mut all = Array2::<f32>::zeros((n, d));
    let mut border = vec![false; n];
    let mut row = 0;
    for g in grids {
        let (h, w, _) = g.dim();
        for y in 0..h {
            for x in 0..w {
                all.row_mut(row).assign(&g.slice(ndarray::s![y, x, ..]));
                border[row] = y == 0 || x == 0 || y + 1 == h || x + 1 == w;
                row += 1;
            }
        }
    }

    let mut foreground = vec![true; n];
    if let Some(threshold) = view.foreground_threshold {
        let mut first_pca = Pca::fit(all.view(), 1)?;
        let mut pc1: Vec<f32> = first_pca.transform(all.view())?.column(0).to_vec();
        // The sign is arbitrary: make the image border (mostly background) the low end.
        let mean_all = pc1.iter().sum::<f32>() / n as f32;
        let (bsum, bcount) = pc1
            .iter()
            .zip(&border)
            .filter(|(_, b)| **b)
            .fold((0.0, 0usize), |(s, c), (v, _)| (s + v, c + 1));
        if bcount > 0 && bsum / bcount as f32 > mean_all {
            first_pca.flip(0);
            pc1.iter_mut().for_each(|v| *v = -*v);
        }
        min_max(&mut pc1);
        foreground = pc1.iter().map(|v| *v > threshold).collect();
        if foreground.iter().filter(|f| **f).count() < 4 {
            foreground = vec![true; n];
        }
    }
    let fg_rows: Vec<usize> = (0..n).filter(|i| foreground[*i]).collect();
    let fg = all.select(Axis(0), &fg_rows);
    let k = d.min(3);
    let pca = Pca::fit(fg.view(), k)?;
    let proj = pca.transform(fg.view())?;
    let mut channels: Vec<Vec<f32>> = (0..k).map(|c| proj.column(c).to_vec()).collect();
    for c in channels.iter_mut() {
        min_max(c);
    }
    let mut rgb = vec![[0u8; 3]; n];
    for (i, &r) in fg_rows.iter().enumerate() {
        for (c, ch) in channels.iter().enumerate() {
            rgb[r][c] = (ch[i] * 255.0).round() as u8;
        }
    }
    let mut out = Vec::with_capacity(grids.len());
    let mut start = 0;
    for g in grids {
        let (h, w, _) = g.dim();
        let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            image::Rgb(rgb[start + y as usize * w + x as usize])
        });
        start += h * w;
        out.push(img);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn pca_finds_the_dominant_direction() {
        // Points along (1, 1, 0) with a little noise on the third axis.
        let data = Array2::from_shape_fn((50, 3), |(i, j)| match j {
            0 | 1 => i as f32,
            _ => ((i * 7) % 5) as f32 * 0.01,
        });
        let pca = Pca::fit(data.view(), 2).unwrap();
        let c = pca.components.row(0);
        assert!(
            (c[0].abs() - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-4,
            "{c}"
        );
        assert!(pca.explained_variance[0] > 100.0 * pca.explained_variance[1]);
        assert!(Pca::fit(data.view(), 4).is_err());
        assert!(Pca::fit(data.slice(ndarray::s![..1, ..]), 1).is_err());
    }

    #[test]
    fn foreground_square_is_coloured_and_border_is_black() {
        // An 8x8 grid: a distinct 4x4 "object" in the middle on a uniform background.
        let grid = Array3::from_shape_fn((8, 8, 6), |(y, x, c)| {
            let inside = (2..6).contains(&y) && (2..6).contains(&x);
            let base = if inside { 5.0 } else { 0.0 };
            base + ((y * 8 + x + c) % 3) as f32 * if inside { 1.0 } else { 0.01 }
        });
        let imgs = pca_images(&[grid.view()], PcaView::default()).unwrap();
        assert_eq!(imgs[0].dimensions(), (8, 8));
        assert_eq!(imgs[0].get_pixel(0, 0).0, [0, 0, 0]);
        let lit = (2..6)
            .flat_map(|y| (2..6).map(move |x| (x, y)))
            .filter(|&(x, y)| imgs[0].get_pixel(x, y).0 != [0, 0, 0])
            .count();
        assert!(lit >= 12, "only {lit} of 16 object patches coloured");
    }
}
