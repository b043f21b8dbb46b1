//! Bad input gets a typed error with a clear message, never a panic.

use crate::common::*;
use dinoedge_model::{Backbone, ModelError, ModelInfo, Resolution, load_rgb};
use ndarray::Array4;
use prost::Message;
use tract_onnx::pb;

fn tiny() -> std::path::PathBuf {
    model("tiny/dinov2-tiny/onnx/model.onnx")
}

#[test]
fn missing_file() {
    let err = Backbone::load("/nonexistent/dinov2.onnx", &options(224, 224, 1)).unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dinov2.onnx"),
        "{err}"
    );
}

#[test]
fn truncated_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny()).unwrap();
    let p = dir.path().join("truncated.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Backbone::load(&p, &options(224, 224, 1)).unwrap_err();
    assert!(matches!(err, ModelError::InvalidOnnx { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated or corrupt"), "{err}");
}

#[test]
fn corrupt_and_empty_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.onnx");
    std::fs::write(
        &p,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = Backbone::load(&p, &options(224, 224, 1)).unwrap_err();
    assert!(matches!(err, ModelError::InvalidOnnx { .. }), "{err:?}");
    let p = dir.path().join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    let err = ModelInfo::read(&p).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = ModelInfo::read(dir.path()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

fn write_model(
    path: &std::path::Path,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
) {
    let tensor_type = |dims: &[i64]| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: 1,
            shape: Some(pb::TensorShapeProto {
                dim: dims
                    .iter()
                    .map(|d| pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            name: "not-dino".into(),
            node: nodes,
            initializer: initializers,
            input: vec![pb::ValueInfoProto {
                name: "x".into(),
                r#type: Some(tensor_type(&[1, 3, 224, 224])),
                ..Default::default()
            }],
            output: vec![pb::ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn onnx_that_is_not_dinov2() {
    let dir = tempfile::tempdir().unwrap();
    // A valid ONNX file: one Relu.
    let p = dir.path().join("relu.onnx");
    let relu = pb::NodeProto {
        op_type: "Relu".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        ..Default::default()
    };
    write_model(&p, vec![relu], vec![]);
    let err = Backbone::load(&p, &options(224, 224, 1)).unwrap_err();
    assert!(matches!(err, ModelError::NotDinov2 { .. }), "{err:?}");
    assert!(err.to_string().contains("patch-embedding"), "{err}");

    // A CNN stem (3x3 stride 1 convolution) is not a patch embedding either.
    let p = dir.path().join("cnn.onnx");
    let conv = pb::NodeProto {
        op_type: "Conv".into(),
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        attribute: vec![
            pb::AttributeProto {
                name: "kernel_shape".into(),
                ints: vec![3, 3],
                r#type: 7,
                ..Default::default()
            },
            pb::AttributeProto {
                name: "strides".into(),
                ints: vec![1, 1],
                r#type: 7,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let w = pb::TensorProto {
        name: "w".into(),
        dims: vec![8, 3, 3, 3],
        data_type: 1,
        float_data: vec![0.1; 216],
        ..Default::default()
    };
    write_model(&p, vec![conv.clone()], vec![w.clone()]);
    let err = ModelInfo::read(&p).unwrap_err();
    assert!(err.to_string().contains("not a patch embedding"), "{err}");

    // A ConvNeXt stem (4x4 stride 4, like a patch embedding) and no attention: not a ViT.
    let p = dir.path().join("convnext.onnx");
    let mut stem = conv;
    stem.attribute[0].ints = vec![4, 4];
    stem.attribute[1].ints = vec![4, 4];
    let w = pb::TensorProto {
        dims: vec![8, 3, 4, 4],
        float_data: vec![0.1; 384],
        ..w
    };
    write_model(&p, vec![stem], vec![w]);
    let err = ModelInfo::read(&p).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a vision transformer (a ConvNeXt"),
        "{err}"
    );
}

#[test]
fn wrong_resolution_names_valid_sizes() {
    let err = Backbone::load(tiny(), &options(224, 230, 1)).unwrap_err();
    assert!(
        matches!(err, ModelError::InvalidResolution { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("224x224") && msg.contains("224x238"), "{msg}");
}

#[test]
fn wrong_input_shape_and_options() {
    let mut bb = Backbone::load(tiny(), &options(28, 28, 1)).unwrap();
    let err = bb
        .run(Array4::<f32>::zeros((1, 3, 56, 56)).view())
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err:?}");
    assert!(err.to_string().contains("--size 56x56"), "{err}");
    // The model still works after a bad call.
    assert_eq!(
        bb.run(Array4::<f32>::zeros((1, 3, 28, 28)).view())
            .unwrap()
            .len(),
        1
    );

    let mut o = options(28, 28, 1);
    o.blocks = vec![3];
    let err = Backbone::load(tiny(), &o).unwrap_err();
    assert!(err.to_string().contains("block 3 does not exist"), "{err}");
    let mut o = options(28, 28, 1);
    o.threads = Some(0);
    assert!(matches!(
        Backbone::load(tiny(), &o),
        Err(ModelError::InvalidOption(_))
    ));
    // `--threads 99999` is refused at once instead of starting them for minutes
    o.threads = Some(99_999);
    let err = Backbone::load(tiny(), &o).unwrap_err().to_string();
    assert!(err.contains("at most 256"), "{err}");
    assert!("28y28".parse::<Resolution>().is_err());
}

#[test]
fn image_that_fails_to_decode() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("not-an-image.png");
    std::fs::write(&p, b"this is text, not a PNG").unwrap();
    let err = load_rgb(&p).unwrap_err();
    assert!(matches!(err, ModelError::Image { .. }), "{err:?}");
    // A real PNG cut in half.
    let png = std::fs::read(fixtures().join("images/voc2012_val_vainf/23_image.png")).unwrap();
    let p = dir.path().join("cut.png");
    std::fs::write(&p, &png[..png.len() / 2]).unwrap();
    assert!(matches!(load_rgb(&p), Err(ModelError::Image { .. })));
    assert!(matches!(
        load_rgb(&dir.path().join("missing.jpg")),
        Err(ModelError::Image { .. })
    ));
}
