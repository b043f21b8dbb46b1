//! The Rust preprocessor against the Hugging Face processor's tensors in the fixtures, and
//! the allocation-free streaming path.

use crate::common::*;
use dinoedge_model::{Backbone, Normalization, Preprocessor, ResizeMode, Resolution, load_rgb};
use ndarray::Array4;

fn compare(image: &str, size: Resolution, mode: ResizeMode, reference: &str) -> (f32, f32) {
    let img = load_rgb(&fixtures().join("images/voc2012_val_vainf").join(image)).unwrap();
    let mut pre = Preprocessor::new(size, mode, Normalization::default()).unwrap();
    let mut out = vec![0.0; pre.output_len()];
    pre.run(&img, &mut out).unwrap();
    let got =
        Array4::from_shape_vec((1, 3, size.height as usize, size.width as usize), out).unwrap();
    let want = npy(&format!("inputs/{reference}"));
    let mean = got
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / got.len() as f32;
    (max_abs(got.view().into_dyn(), want.view()), mean)
}

#[test]
fn crop_mode_matches_the_hugging_face_processor() {
    // PIL's bicubic and fast_image_resize's Catmull-Rom are the same filter, computed with
    // different rounding: allow a couple of 8-bit levels (1/255/0.225 = 0.017 per level).
    let (max, mean) = compare(
        "23_image.png",
        Resolution::square(224),
        "crop".parse().unwrap(),
        "pixel_values_224x224.npy",
    );
    println!("224 crop: max abs {max:.4}, mean abs {mean:.5}");
    assert!(max < 0.05 && mean < 0.005, "{max} {mean}");
    let (max, mean) = compare(
        "114_image.png",
        Resolution::new(308, 448),
        "fill".parse().unwrap(),
        "pixel_values_308x448.npy",
    );
    println!("308x448 fill: max abs {max:.4}, mean abs {mean:.5}");
    assert!(max < 0.05 && mean < 0.005, "{max} {mean}");
}

#[test]
fn streaming_reuses_the_input_buffer() {
    let mut bb = Backbone::load(
        model("tiny/dinov2-tiny/onnx/model.onnx"),
        &options(28, 42, 1),
    )
    .unwrap();
    let mut pre = bb.preprocessor(ResizeMode::Letterbox).unwrap();
    let frame = load_rgb(&fixtures().join("images/voc2012_val_vainf/8_image.png")).unwrap();
    let mut last = None;
    for _ in 0..5 {
        let f = bb.run_image(&mut pre, &frame).unwrap();
        assert_eq!(f.patches().dim(), (2, 3, 48));
        if let Some(prev) = &last {
            assert_eq!(prev, &f, "same frame, same features");
        }
        last = Some(f);
    }
    assert_eq!(
        bb.input_allocations(),
        1,
        "the input buffer was reallocated while streaming"
    );
}
