//! Point clouds from metric depth: each pixel (every `stride`-th along both axes) lifted into
//! the camera's frame with its intrinsics (x right, y down, z forward, metres: the optical
//! frame ROS and Foxglove use), coloured by the frame's pixel.

use dinoedge_camera::{Frame, Pinhole};
use foxglove::bytes::Bytes;
use foxglove::schemas::packed_element_field::NumericType;
use foxglove::schemas::{PackedElementField, PointCloud, Pose, Quaternion, Timestamp, Vector3};
use ndarray::ArrayView2;

/// Bytes per point: x, y, z as f32, then red, green, blue, alpha as u8.
pub const POINT_STRIDE: u32 = 16;

/// How a recording decimates its point clouds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Points {
    /// No point cloud.
    Off,
    /// Every `n`-th pixel along both axes (4: a 640x480 frame gives 19 200 points).
    Stride(usize),
}

impl Default for Points {
    fn default() -> Self {
        Points::Stride(4)
    }
}

impl std::str::FromStr for Points {
    type Err = String;

    /// `off` or `stride:N` (N from 1 to 64).
    fn from_str(s: &str) -> Result<Points, String> {
        if s == "off" {
            return Ok(Points::Off);
        }
        match s.strip_prefix("stride:").map(str::parse::<usize>) {
            Some(Ok(n @ 1..=64)) => Ok(Points::Stride(n)),
            _ => Err(format!(
                "points={s}: use points=stride:N (every N-th pixel along both axes, 1 to 64) or points=off"
            )),
        }
    }
}

/// The points of `depth` (metres along the optical axis, at the frame's size; pixels whose
/// depth is not a positive finite number are left out) seen by a camera with intrinsics `k`,
/// every `stride`-th pixel, coloured from `frame`.
pub fn point_cloud(
    depth: ArrayView2<f32>,
    frame: &Frame,
    k: Pinhole,
    stride: usize,
    timestamp: Option<Timestamp>,
) -> PointCloud {
    let (h, w) = depth.dim();
    let stride = stride.max(1);
    let fits = (frame.width as usize, frame.height as usize) == (w, h);
    let mut data = Vec::with_capacity(h.div_ceil(stride) * w.div_ceil(stride) * 16);
    for v in (0..h).step_by(stride) {
        for u in (0..w).step_by(stride) {
            let z = depth[[v, u]];
            if !(z > 0.0 && z.is_finite()) {
                continue;
            }
            let x = ((u as f64 - k.cx) * z as f64 / k.fx) as f32;
            let y = ((v as f64 - k.cy) * z as f64 / k.fy) as f32;
            for c in [x, y, z] {
                data.extend(c.to_le_bytes());
            }
            let rgb = match fits {
                true => &frame.rgb[(v * w + u) * 3..][..3],
                false => &[255, 255, 255][..],
            };
            data.extend(rgb);
            data.push(255);
        }
    }
    let field = |name: &str, offset: u32, t: NumericType| PackedElementField {
        name: name.into(),
        offset,
        r#type: t as i32,
    };
    PointCloud {
        timestamp,
        frame_id: "camera".into(),
        pose: Some(Pose {
            position: Some(Vector3 {
                x: 0.0,
                y: 0.0,
                z: 0.0,
            }),
            orientation: Some(Quaternion {
                x: 0.0,
                y: 0.0,
                z: 0.0,
                w: 1.0,
            }),
        }),
        point_stride: POINT_STRIDE,
        fields: vec![
            field("x", 0, NumericType::Float32),
            field("y", 4, NumericType::Float32),
            field("z", 8, NumericType::Float32),
            field("red", 12, NumericType::Uint8),
            field("green", 13, NumericType::Uint8),
            field("blue", 14, NumericType::Uint8),
            field("alpha", 15, NumericType::Uint8),
        ],
        data: Bytes::from(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_two_metres_away_lies_at_z_two_and_spreads_with_the_intrinsics() {
        let (w, h) = (8usize, 6usize);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| i as u8).collect();
        let frame = Frame::new(rgb.clone(), w as u32, h as u32, 0);
        let mut depth = ndarray::Array2::from_elem((h, w), 2.0f32);
        depth[[0, 2]] = f32::NAN;
        depth[[2, 0]] = 0.0;
        let k = Pinhole {
            fx: 4.0,
            fy: 5.0,
            cx: 3.5,
            cy: 2.5,
        };
        let pc = point_cloud(depth.view(), &frame, k, 2, None);
        // a 4x3 grid of sampled pixels, less the NaN and the zero
        assert_eq!(pc.data.len(), (12 - 2) * 16);
        let point = |i: usize| {
            let b = &pc.data[i * 16..][..16];
            let f = |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            ((f(0), f(4), f(8)), [b[12], b[13], b[14], b[15]])
        };
        // the first is pixel (0, 0), the second (4, 0): (0, 2) had no depth
        assert_eq!(
            point(0).0,
            ((0.0 - 3.5) * 2.0 / 4.0, (0.0 - 2.5) * 2.0 / 5.0, 2.0)
        );
        assert_eq!(point(1).0, ((4.0 - 3.5) * 2.0 / 4.0, -1.0, 2.0));
        let at = 4 * 3; // row 0, column 4
        assert_eq!(point(1).1, [rgb[at], rgb[at + 1], rgb[at + 2], 255]);
        assert_eq!(pc.point_stride, POINT_STRIDE);
        assert_eq!(
            pc.fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["x", "y", "z", "red", "green", "blue", "alpha"]
        );
        assert_eq!("stride:4".parse::<Points>(), Ok(Points::Stride(4)));
        assert_eq!("off".parse::<Points>(), Ok(Points::Off));
        for bad in ["stride:0", "stride:x", "4", "stride:65"] {
            assert!(bad.parse::<Points>().unwrap_err().contains(bad));
        }
    }
}
