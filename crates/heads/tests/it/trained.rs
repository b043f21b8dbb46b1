//! Heads trained on the board (`safetensors`), as `train-head` saves them: what a bad
//! `--max-depth` or a file with a bad range or no classes gives (errors, not panics).

use std::collections::HashMap;

use dinoedge_heads::{DepthHead, DepthOutput, HeadsError, LinearHead, Palette, SegHead};
use ndarray::{Array1, Array2};

/// A 4-bin depth head over blocks 11, of range `range`, saved to `dir/depth.safetensors`.
fn depth_file(dir: &std::path::Path, range: (f32, f32)) -> std::path::PathBuf {
    let path = dir.join("depth.safetensors");
    DepthHead::from_trained(
        Array2::zeros((4, 2 * 8)),
        Array1::zeros(4),
        vec![11],
        DepthOutput::Bins,
        range,
        HashMap::new(),
    )
    .unwrap()
    .save(&path)
    .unwrap();
    path
}

#[test]
fn a_bad_max_depth_for_a_trained_head_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = depth_file(dir.path(), (0.1, 5.0));
    let LinearHead::Depth(ok) = LinearHead::load(&path, Some(8.0)).unwrap() else {
        panic!("a depth head")
    };
    assert_eq!(ok.range, (0.1, 8.0));
    for bad in [0.0, f32::NAN, 0.0005, f32::INFINITY, -1.0, 0.05] {
        let e = LinearHead::load(&path, Some(bad)).unwrap_err();
        assert!(matches!(e, HeadsError::InvalidOption(_)), "{bad}: {e}");
        assert!(e.to_string().contains("--max-depth"), "{e}");
    }
}

#[test]
fn a_trained_head_with_a_bad_range_or_no_classes_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // the farthest depth before the nearest
    let path = depth_file(dir.path(), (5.0, 0.1));
    let e = LinearHead::load(&path, None).unwrap_err();
    assert!(matches!(e, HeadsError::NotAHead { .. }), "{e}");
    assert!(e.to_string().contains("depth range"), "{e}");
    // a segmentation head of zero classes
    let seg = dir.path().join("seg.safetensors");
    let palette = Palette {
        names: vec![],
        colors: vec![],
    };
    SegHead::from_trained(
        Array2::zeros((0, 8)),
        Array1::zeros(0),
        palette,
        0,
        HashMap::new(),
    )
    .unwrap()
    .save(&seg)
    .unwrap();
    let e = LinearHead::load(&seg, None).unwrap_err();
    assert!(e.to_string().contains("no classes"), "{e}");
    // no debug text in the messages
    for e in [e, LinearHead::load(&path, None).unwrap_err()] {
        let text = e.to_string();
        assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
    }
}
