//! dinoedge-resize's tests (an integration test, not unit tests: a unit-test build would
//! compile fast_image_resize's generic convolutions a second time, ~110 s of CI's build).

use dinoedge_resize::{ResizeError, Rgb8Resizer};

#[test]
fn a_uniform_image_stays_uniform_at_any_size_and_crop() {
    let src = [10u8, 200, 30].repeat(40 * 30);
    let mut r = Rgb8Resizer::new();
    for (crop, dst) in [
        ([0.0, 0.0, 40.0, 30.0], (14, 14)),
        ([5.5, 2.0, 20.0, 25.0], (56, 42)),
        ([0.0, 0.0, 40.0, 30.0], (40, 30)),
    ] {
        let out = r.resize(&src, (40, 30), crop, dst).unwrap();
        assert_eq!(out.len(), (dst.0 * dst.1 * 3) as usize);
        assert!(
            out.chunks_exact(3).all(|p| p == [10, 200, 30]),
            "{crop:?} {dst:?}"
        );
    }
}

#[test]
fn the_crop_decides_what_is_seen() {
    // left half black, right half white; crops well inside each half (the filter reads a
    // couple of source pixels past a crop's edge, as PIL's does) see one colour
    let mut src = vec![0u8; 40 * 10 * 3];
    for y in 0..10 {
        for x in 20..40 {
            src[(y * 40 + x) * 3..][..3].copy_from_slice(&[255, 255, 255]);
        }
    }
    let mut r = Rgb8Resizer::new();
    let right = r
        .resize(&src, (40, 10), [26.0, 0.0, 10.0, 10.0], (20, 20))
        .unwrap();
    assert!(right.iter().all(|&v| v == 255));
    let left = r
        .resize(&src, (40, 10), [2.0, 0.0, 10.0, 10.0], (20, 20))
        .unwrap();
    assert!(left.iter().all(|&v| v == 0));
    // across the edge: both colours, in order
    let both = r
        .resize(&src, (40, 10), [0.0, 0.0, 40.0, 10.0], (8, 2))
        .unwrap();
    assert_eq!(&both[..3], &[0, 0, 0]);
    assert_eq!(&both[7 * 3..8 * 3], &[255, 255, 255]);
}

#[test]
fn wrong_buffers_are_errors_not_panics() {
    let mut r = Rgb8Resizer::new();
    let short = vec![0u8; 10];
    assert!(matches!(
        r.resize(&short, (4, 4), [0.0, 0.0, 4.0, 4.0], (2, 2)),
        Err(ResizeError::Buffer(_))
    ));
    let ok = vec![0u8; 4 * 4 * 3];
    assert!(matches!(
        r.resize(&ok, (4, 4), [0.0, 0.0, 4.0, 4.0], (0, 2)),
        Err(ResizeError::Buffer(_))
    ));
}
