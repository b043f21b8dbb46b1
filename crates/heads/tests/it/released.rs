//! DINOv2's released linear heads, read from `.pth` in the released layout, against the
//! fixture reference outputs (`../shared/fixtures/reference/heads`), at 224x224 and 308x448.

use dinoedge_heads::{HeadsError, LinearHead};
use dinoedge_model::{Backbone, BackboneOptions, CacheMode, Resolution};
use dinoedge_testkit::{fixtures, npy};
use ndarray::{Array3, ArrayD, Axis, Ix2, s};

fn head(name: &str) -> LinearHead {
    LinearHead::load(&fixtures().join("heads").join(name), None).unwrap()
}

/// `[1, T, D]` tokens → patch grid `[h, w, D]` and CLS `[D]`.
fn split(tokens: ArrayD<f32>, h: usize, w: usize) -> (Array3<f32>, ndarray::Array1<f32>) {
    let t = tokens
        .index_axis_move(Axis(0), 0)
        .into_dimensionality::<Ix2>()
        .unwrap();
    let d = t.ncols();
    let patches = t
        .slice(s![1.., ..])
        .to_owned()
        .into_shape_with_order((h, w, d))
        .unwrap();
    (patches, t.row(0).to_owned())
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SIZES: [(&str, usize, usize); 2] = [("224x224", 224, 224), ("308x448", 308, 448)];

#[test]
fn segmentation_heads_match_the_reference() {
    for (ds, file, classes) in [
        ("voc2012", "dinov2_vits14_voc2012_linear_head.pth", 21),
        ("ade20k", "dinov2_vits14_ade20k_linear_head.pth", 150),
    ] {
        let LinearHead::Seg(seg) = head(file) else {
            panic!("{file} is a segmentation head")
        };
        assert_eq!(seg.classes(), classes);
        assert_eq!(seg.palette.names.len(), classes);
        for (size, hh, ww) in SIZES {
            let (patches, _) = split(
                npy(&format!("dinov2-small/{size}/last_hidden_state.npy")),
                hh / 14,
                ww / 14,
            );
            let logits = seg.logits(patches.view()).unwrap();
            let want: ArrayD<f32> = npy(&format!("heads/dinov2-small/{size}/seg_{ds}_logits.npy"));
            let err = max_abs(logits.as_slice().unwrap(), want.as_slice().unwrap());
            let out = seg.predict(patches.view(), hh, ww).unwrap();
            let labels: ArrayD<u8> = npy(&format!("heads/dinov2-small/{size}/seg_{ds}_labels.npy"));
            let differ = out
                .labels
                .iter()
                .zip(labels.iter())
                .filter(|(a, b)| a != b)
                .count();
            let frac = differ as f64 / out.labels.len() as f64;
            println!(
                "{ds} {size}: logits max abs {err:.2e}, labels differing {:.3} %",
                frac * 100.0
            );
            assert!(err <= 1e-4, "{ds} {size} logits {err}");
            assert!(
                frac <= 0.005,
                "{ds} {size}: {frac} of the labels differ (near-ties allowed up to 0.5 %)"
            );
            assert!(
                out.confidence
                    .iter()
                    .all(|&c| c > 1.0 / classes as f32 - 1e-6 && c <= 1.0 + 1e-6)
            );
        }
    }
}

fn backbone_blocks(
    size: &str,
    h: u32,
    w: u32,
    blocks: &[usize],
) -> Vec<(Array3<f32>, ndarray::Array1<f32>)> {
    let mut bb = Backbone::load(
        fixtures().join("dinov2-small/onnx/model.onnx"),
        &BackboneOptions {
            resolution: Some(Resolution::new(h, w)),
            blocks: blocks.to_vec(),
            cache: CacheMode::Off,
            ..Default::default()
        },
    )
    .unwrap();
    let input: ndarray::Array4<f32> = npy::<f32>(&format!("inputs/pixel_values_{size}.npy"))
        .into_dimensionality()
        .unwrap();
    let f = bb.run(input.view()).unwrap().remove(0);
    blocks
        .iter()
        .map(|&b| {
            let t = &f.block(b).unwrap().tokens;
            (t.patches.clone(), t.cls.clone())
        })
        .collect()
}

#[test]
fn depth_heads_match_the_reference() {
    for (kind, file, blocks) in [
        ("linear", "dinov2_vits14_nyu_linear_head.pth", vec![11]),
        (
            "linear4",
            "dinov2_vits14_nyu_linear4_head.pth",
            vec![2, 5, 8, 11],
        ),
    ] {
        let LinearHead::Depth(depth) = head(file) else {
            panic!("{file} is a depth head")
        };
        assert_eq!(depth.blocks(12), blocks);
        assert_eq!(depth.range, (0.001, 10.0));
        for (size, hh, ww) in SIZES {
            let (h, w) = (hh / 14, ww / 14);
            // The stored PyTorch blocks where the fixtures have them, else our own backbone
            // on the same input (the full-pipeline tolerance of the fixtures README).
            let stored: Option<Vec<_>> = blocks
                .iter()
                .map(|b| {
                    let p = fixtures().join(format!(
                        "reference/dinov2-small/{size}/hidden_states_block{b:02}.npy"
                    ));
                    p.is_file().then(|| {
                        split(
                            npy(&format!(
                                "dinov2-small/{size}/hidden_states_block{b:02}.npy"
                            )),
                            h,
                            w,
                        )
                    })
                })
                .collect();
            let (feats, tol) = match stored {
                Some(f) => (f, 1e-4),
                None => (backbone_blocks(size, hh as u32, ww as u32, &blocks), 1e-3),
            };
            let views: Vec<_> = feats.iter().map(|(p, c)| (p.view(), c.view())).collect();
            let low = depth.depth_lowres(&views).unwrap();
            let want: ArrayD<f32> = npy(&format!(
                "heads/dinov2-small/{size}/depth_nyu_{kind}_depth_lowres.npy"
            ));
            let want = want.into_shape_with_order((4 * h, 4 * w)).unwrap();
            let err = max_abs(low.as_slice().unwrap(), want.as_slice().unwrap());
            println!(
                "{kind} {size}: low-res depth max abs {err:.2e} m (tolerance {tol:.0e}); range {:.2}..{:.2} m",
                want.fold(f32::MAX, |a, &b| a.min(b)),
                want.fold(0f32, |a, &b| a.max(b))
            );
            assert!(err <= tol, "{kind} {size}: {err}");
            if size == "224x224" {
                let full = depth.predict(&views, hh, ww).unwrap();
                let want: ArrayD<f32> = npy(&format!(
                    "heads/dinov2-small/{size}/depth_nyu_{kind}_depth.npy"
                ));
                let err = max_abs(full.as_slice().unwrap(), want.as_slice().unwrap());
                assert!(err <= 1e-4, "{kind} full-size depth {err}");
            }
        }
    }
}

#[test]
fn bad_heads_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &std::path::Path| LinearHead::load(p, None).unwrap_err();
    // not a file
    assert!(matches!(
        err(&dir.path().join("none.pth")),
        HeadsError::NotFound(_)
    ));
    // not a zip
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let e = err(&junk);
    assert!(matches!(e, HeadsError::Checkpoint { .. }), "{e}");
    // a truncated checkpoint
    let real =
        std::fs::read(fixtures().join("heads/dinov2_vits14_voc2012_linear_head.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    assert!(matches!(err(&cut), HeadsError::Checkpoint { .. }));
    // a head for another backbone width
    let LinearHead::Seg(seg) = head("dinov2_vits14_voc2012_linear_head.pth") else {
        unreachable!()
    };
    let e = seg
        .logits(Array3::<f32>::zeros((4, 4, 768)).view())
        .unwrap_err();
    assert!(matches!(e, HeadsError::Incompatible(_)), "{e}");
    assert!(e.to_string().contains("384"), "{e}");
    let LinearHead::Depth(depth) = head("dinov2_vits14_nyu_linear4_head.pth") else {
        unreachable!()
    };
    assert!(matches!(
        depth.check_backbone(768),
        Err(HeadsError::Incompatible(_))
    ));
    let one = Array3::<f32>::zeros((2, 2, 384));
    let cls = ndarray::Array1::<f32>::zeros(384);
    assert!(matches!(
        depth.depth_lowres(&[(one.view(), cls.view())]),
        Err(HeadsError::Shape(_))
    ));
}

#[test]
fn a_checkpoint_that_is_not_a_head() {
    // A valid torch zip whose state dict has other tensors: made by rewriting a head's
    // pickle so that its keys say something else.
    let real = fixtures().join("heads/dinov2_vits14_voc2012_linear_head.pth");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("other.pth");
    let mut zin = zip::ZipArchive::new(std::fs::File::open(&real).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        if name.ends_with("data.pkl") {
            // same length, so the pickle's string lengths stay right
            let text = String::from_utf8_lossy(&data).into_owned();
            assert!(text.contains("conv_seg"));
            data = data
                .windows(8)
                .enumerate()
                .fold(data.clone(), |mut acc, (i, w)| {
                    if w == b"conv_seg" {
                        acc[i..i + 8].copy_from_slice(b"conv_xyz");
                    }
                    acc
                });
        }
        zout.start_file(
            name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        std::io::Write::write_all(&mut zout, &data).unwrap();
    }
    zout.finish().unwrap();
    let e = LinearHead::load(&out, None).unwrap_err();
    assert!(matches!(e, HeadsError::NotAHead { .. }), "{e}");
    assert!(e.to_string().contains("conv_xyz"), "{e}");
}
