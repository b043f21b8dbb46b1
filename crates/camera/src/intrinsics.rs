//! A camera's pinhole intrinsics (focal lengths and principal point, in pixels): what turns a
//! depth map into points in space. Given by the user (`--intrinsics fx,fy,cx,cy` or a field
//! of view, `hfov=66`) or read from a recording's calibration topic (ROS 2
//! `sensor_msgs/msg/CameraInfo`, `foxglove.CameraCalibration`).

use std::str::FromStr;

/// Focal lengths and principal point in pixels of a `width`×`height` picture (the ROS
/// convention: pixel centres at whole coordinates, `(0, 0)` the centre of the top-left pixel).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pinhole {
    /// Focal length along x, pixels.
    pub fx: f64,
    /// Focal length along y, pixels.
    pub fy: f64,
    /// Principal point x, pixels.
    pub cx: f64,
    /// Principal point y, pixels.
    pub cy: f64,
}

/// How a camera's intrinsics are known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Intrinsics {
    /// In pixels of pictures of `size` (`None`: the frames as the source delivers them).
    Pinhole {
        /// The values.
        k: Pinhole,
        /// The picture size they are for (a calibration's own), if known.
        size: Option<(u32, u32)>,
    },
    /// A horizontal field of view in degrees: square pixels, the centre as principal point.
    HorizontalFov(f64),
}

impl Intrinsics {
    /// The intrinsics for a `width`×`height` frame: a calibration made at another size is
    /// scaled to it (the same field of view, resampled), a field of view turned into pixels.
    pub fn at(&self, width: u32, height: u32) -> Pinhole {
        let (w, h) = (width as f64, height as f64);
        match *self {
            Intrinsics::Pinhole { k, size: None } => k,
            Intrinsics::Pinhole {
                k,
                size: Some((cw, ch)),
            } => {
                let (sx, sy) = (w / cw.max(1) as f64, h / ch.max(1) as f64);
                // pixel centres scale about the picture's corner (half a pixel off the origin)
                Pinhole {
                    fx: k.fx * sx,
                    fy: k.fy * sy,
                    cx: (k.cx + 0.5) * sx - 0.5,
                    cy: (k.cy + 0.5) * sy - 0.5,
                }
            }
            Intrinsics::HorizontalFov(deg) => {
                let f = w / 2.0 / (deg.to_radians() / 2.0).tan();
                Pinhole {
                    fx: f,
                    fy: f,
                    cx: (w - 1.0) / 2.0,
                    cy: (h - 1.0) / 2.0,
                }
            }
        }
    }
}

impl FromStr for Intrinsics {
    type Err = String;

    /// `fx,fy,cx,cy` in pixels of the frames as the source delivers them, or `hfov=DEGREES`.
    fn from_str(s: &str) -> Result<Intrinsics, String> {
        let how = "give fx,fy,cx,cy in pixels of the frames (e.g. 600,600,320,240) or a horizontal field of view, hfov=DEGREES (e.g. hfov=66 for a Raspberry Pi Camera Module 3)";
        if let Some(deg) = s.trim().strip_prefix("hfov=") {
            let deg: f64 = deg
                .trim()
                .parse()
                .map_err(|_| format!("`{s}`: `{deg}` is not a number; {how}"))?;
            if !(1.0..=179.0).contains(&deg) {
                return Err(format!(
                    "`{s}`: a pinhole camera's field of view lies between 1 and 179 degrees"
                ));
            }
            return Ok(Intrinsics::HorizontalFov(deg));
        }
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{s}`: {how}"))?;
        let [fx, fy, cx, cy] = v[..] else {
            return Err(format!("`{s}`: {} numbers; {how}", v.len()));
        };
        if !(fx > 0.0 && fy > 0.0 && fx.is_finite() && fy.is_finite()) {
            return Err(format!("`{s}`: focal lengths must be positive"));
        }
        if !(cx.is_finite() && cy.is_finite()) {
            return Err(format!("`{s}`: {how}"));
        }
        Ok(Intrinsics::Pinhole {
            k: Pinhole { fx, fy, cx, cy },
            size: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_scale_and_field_of_view() {
        let i: Intrinsics = "600, 610,320,240".parse().unwrap();
        let k = i.at(640, 480);
        assert_eq!((k.fx, k.fy, k.cx, k.cy), (600.0, 610.0, 320.0, 240.0));
        // a calibration at 640x480 used on 320x240 frames
        let half = Intrinsics::Pinhole {
            k: Pinhole {
                fx: 600.0,
                fy: 600.0,
                cx: 319.5,
                cy: 239.5,
            },
            size: Some((640, 480)),
        }
        .at(320, 240);
        assert_eq!((half.fx, half.cx, half.cy), (300.0, 159.5, 119.5));
        // 90 degrees: the edge pixel's corner lies at x = z
        let k = "hfov=90".parse::<Intrinsics>().unwrap().at(200, 100);
        assert!((k.fx - 100.0).abs() < 1e-9 && k.cx == 99.5 && k.cy == 49.5);
        for bad in [
            "",
            "1,2,3",
            "a,b,c,d",
            "0,1,1,1",
            "hfov=",
            "hfov=180",
            "1,1,1,inf",
        ] {
            let e = bad.parse::<Intrinsics>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
