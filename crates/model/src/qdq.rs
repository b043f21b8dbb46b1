//! QDQ files with int8 products: `MatMul(DequantizeLinear(x_q), DequantizeLinear(W_q))`, the
//! pattern onnxruntime's `quantize_static` writes for every weight product, runs in tract as a
//! float product of dequantised values (the int8 weights are expanded to f32 at load). This
//! rewrites the ONNX graph before tract reads it so each such product is
//! `Mul(Cast(MatMulInteger(x_q, W_q, x_zero_point)), x_scale · w_scale)`: the same int8 kernels as
//! the dynamic-int8 files, with the static scales folded into one constant per output column.
//! onnxruntime turns the same pattern, with the `QuantizeLinear` after it, into `QLinearMatMul`
//! at `ORT_ENABLE_ALL`; where that `QuantizeLinear` is there, its scale is folded in as well, so
//! the requantised activations are rounded as onnxruntime rounds them.
//!
//! The integer sum is exact; what differs from the float product of the dequantised values is
//! the rounding at each requantisation (tested against onnxruntime's output of the file in
//! `tests/it/parity_small.rs`).
//!
//! Only what the rewrite can prove is left alone otherwise: activations quantised per tensor
//! with initializer scale and zero point, weights as int8 initializers quantised per output
//! column (or per tensor) with zero points all 0, no external data.

use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

pub(crate) const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
pub(crate) const ATTR_INT: i32 = 2;

pub(crate) fn external(t: &TensorProto) -> bool {
    t.data_location == Some(1)
}

pub(crate) fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT || external(t) {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let v = t.raw_data.chunks_exact(4);
    (v.remainder().is_empty()).then(|| {
        v.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

/// The values of an 8-bit initializer as i32 (int8 or uint8).
pub(crate) fn bytes(t: &TensorProto) -> Option<Vec<i32>> {
    if external(t) || !matches!(t.data_type, INT8 | UINT8) {
        return None;
    }
    let signed = t.data_type == INT8;
    if t.raw_data.is_empty() {
        return Some(t.int32_data.clone());
    }
    Some(
        t.raw_data
            .iter()
            .map(|b| if signed { *b as i8 as i32 } else { *b as i32 })
            .collect(),
    )
}

fn volume(t: &TensorProto) -> i64 {
    t.dims.iter().product()
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// What one product needs: `(x_q, x_zero_point, W_q, scale per column)`, and the
/// `QuantizeLinear` that alone reads the product, when one does.
struct Product {
    x_q: String,
    x_zero_point: String,
    w_q: String,
    scales: Vec<f32>,
    requantized_by: Option<usize>,
}

/// The per-tensor `QuantizeLinear` that is the only reader of `output`: `(node index, y_scale)`.
fn sole_quantizer(
    graph: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    output: &str,
) -> Option<(usize, f32)> {
    if graph.output.iter().any(|o| o.name == output) {
        return None;
    }
    let mut readers = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.input.iter().any(|i| i == output));
    let (ix, q) = readers.next()?;
    if readers.next().is_some() || q.op_type != "QuantizeLinear" || q.input[0] != output {
        return None;
    }
    let scale = floats(inits.get(q.input.get(1)?.as_str())?)?;
    (scale.len() == 1 && scale[0] != 0.0 && scale[0].is_finite()).then_some((ix, scale[0]))
}

fn product(
    graph: &GraphProto,
    producers: &HashMap<&str, &NodeProto>,
    inits: &HashMap<&str, &TensorProto>,
    matmul: &NodeProto,
) -> Option<Product> {
    let [a, b] = &matmul.input[..] else {
        return None;
    };
    let dq_x = producers.get(a.as_str())?;
    let dq_w = producers.get(b.as_str())?;
    if dq_x.op_type != "DequantizeLinear" || dq_w.op_type != "DequantizeLinear" {
        return None;
    }
    // activations: per tensor, scale and zero point as initializers, not themselves constant
    let [x_q, x_scale, x_zp] = &dq_x.input[..] else {
        return None;
    };
    if inits.contains_key(x_q.as_str()) || graph.input.iter().any(|i| &i.name == x_q) {
        return None;
    }
    let x_scale = floats(inits.get(x_scale.as_str())?)?;
    let x_zp_t = inits.get(x_zp.as_str())?;
    if x_scale.len() != 1 || volume(x_zp_t) != 1 || bytes(x_zp_t)?.len() != 1 {
        return None;
    }
    // weights: an int8 initializer [K, N], per column (axis 1) or per tensor, zero points 0
    let w_q = dq_w.input.first()?;
    let w = inits.get(w_q.as_str())?;
    if w.data_type != INT8 || w.dims.len() != 2 || external(w) {
        return None;
    }
    let n = w.dims[1] as usize;
    let w_scale = floats(inits.get(dq_w.input.get(1)?.as_str())?)?;
    if let Some(zp) = dq_w.input.get(2).filter(|z| !z.is_empty()) {
        let zp = bytes(inits.get(zp.as_str())?)?;
        if zp.iter().any(|z| *z != 0) {
            return None;
        }
    }
    let per_column = match w_scale.len() {
        1 => false,
        len if len == n && matches!(attr_i(dq_w, "axis").unwrap_or(1), 1 | -1) => true,
        _ => return None,
    };
    // When a per-tensor QuantizeLinear alone reads the product (as it does after every weight
    // product of onnxruntime's QDQ files), the product is requantised as onnxruntime's
    // QLinearMatMul does: round(acc · (x_scale · w_scale / y_scale)) + y_zero_point, one
    // multiplier per column, so the int8 activations come out as onnxruntime's do.
    let requant = sole_quantizer(graph, inits, &matmul.output[0]);
    let scales = (0..n)
        .map(|j| {
            let s = x_scale[0] * w_scale[if per_column { j } else { 0 }];
            requant.map_or(s, |(_, y_scale)| s / y_scale)
        })
        .collect();
    Some(Product {
        x_q: x_q.clone(),
        x_zero_point: dq_x.input[2].clone(),
        w_q: w_q.clone(),
        scales,
        requantized_by: requant.map(|(ix, _)| ix),
    })
}

pub(crate) fn node(op: &str, name: String, inputs: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output],
        name,
        op_type: op.into(),
        ..Default::default()
    }
}

/// Rewrite every float product of dequantised int8 values in `model` into an int8 product with
/// its scales folded. Returns how many were rewritten.
pub fn integer_products(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let found: Vec<(usize, Product)> = {
        let producers: HashMap<&str, &NodeProto> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.op_type == "MatMul" && n.domain.is_empty())
            .filter_map(|(i, n)| Some((i, product(graph, &producers, &inits, n)?)))
            .collect()
    };
    // the requantisers' scale becomes 1: it is folded into the products' multipliers
    let one = "dinoedge_qdq_unit_scale".to_string();
    if found.iter().any(|(_, p)| p.requantized_by.is_some()) {
        graph.initializer.push(TensorProto {
            name: one.clone(),
            data_type: FLOAT,
            float_data: vec![1.0],
            ..Default::default()
        });
    }
    for q in found.iter().filter_map(|(_, p)| p.requantized_by) {
        graph.node[q].input[1] = one.clone();
    }
    for (ix, p) in found.iter().rev() {
        let matmul = graph.node.remove(*ix);
        let base = format!("{}_dinoedge_int8", matmul.name);
        let out = matmul.output[0].clone();
        let (acc, acc_f32, scale) = (
            format!("{base}_i32"),
            format!("{base}_f32"),
            format!("{base}_scale"),
        );
        let n = p.scales.len();
        graph.initializer.push(TensorProto {
            name: scale.clone(),
            dims: vec![n as i64],
            data_type: FLOAT,
            float_data: p.scales.clone(),
            ..Default::default()
        });
        let mut cast = node(
            "Cast",
            format!("{base}_cast"),
            vec![acc.clone()],
            acc_f32.clone(),
        );
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: ATTR_INT,
            i: FLOAT as i64,
            ..Default::default()
        });
        let nodes = [
            node(
                "MatMulInteger",
                format!("{base}_matmul"),
                vec![p.x_q.clone(), p.w_q.clone(), p.x_zero_point.clone()],
                acc,
            ),
            cast,
            node("Mul", format!("{base}_mul"), vec![acc_f32, scale], out),
        ];
        // in place of the product, so the graph stays in topological order
        for (k, new) in nodes.into_iter().enumerate() {
            graph.node.insert(ix + k, new);
        }
    }
    found.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tract_onnx::pb::{TypeProto, ValueInfoProto, tensor_shape_proto, type_proto};
    use tract_onnx::prelude::*;

    pub(crate) fn init_f32(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    pub(crate) fn init_i8(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: INT8,
            raw_data: v.iter().map(|b| *b as u8).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
        let dim = |d: i64| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: FLOAT,
                    shape: Some(tract_onnx::pb::TensorShapeProto {
                        dim: dims.iter().map(|d| dim(*d)).collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// x [2, 4] → Q → DQ → MatMul(DQ(W [4, 3], per column)) → Q → DQ → y: one QDQ product, as
    /// onnxruntime's `quantize_static` writes it.
    pub(crate) fn qdq_model() -> ModelProto {
        let n = |op: &str, name: &str, i: &[&str], o: &str| {
            node(
                op,
                name.into(),
                i.iter().map(|s| s.to_string()).collect(),
                o.into(),
            )
        };
        let mut dq_w = n("DequantizeLinear", "dq_w", &["w", "sw", "zw"], "wd");
        dq_w.attribute.push(AttributeProto {
            name: "axis".into(),
            r#type: ATTR_INT,
            i: 1,
            ..Default::default()
        });
        let graph = GraphProto {
            node: vec![
                n("QuantizeLinear", "q_x", &["x", "sx", "zx"], "xq"),
                n("DequantizeLinear", "dq_x", &["xq", "sx", "zx"], "xd"),
                dq_w,
                n("MatMul", "mm", &["xd", "wd"], "y"),
                n("QuantizeLinear", "q_y", &["y", "sy", "zy"], "yq"),
                n("DequantizeLinear", "dq_y", &["yq", "sy", "zy"], "out"),
            ],
            initializer: vec![
                init_f32("sx", &[], &[0.05]),
                init_i8("zx", &[], &[-3]),
                init_i8(
                    "w",
                    &[4, 3],
                    &[12, -7, 100, -128, 5, 33, 64, -90, 1, 0, 127, -45],
                ),
                init_f32("sw", &[3], &[0.01, 0.002, 0.03]),
                init_i8("zw", &[3], &[0, 0, 0]),
                init_f32("sy", &[], &[0.02]),
                init_i8("zy", &[], &[4]),
            ],
            input: vec![value("x", &[2, 4])],
            output: vec![value("out", &[2, 3])],
            name: "qdq".into(),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn run(proto: &ModelProto) -> Vec<f32> {
        let model = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let x = tensor2(&[[0.31f32, -1.2, 2.05, 0.0], [-0.4, 0.77, -2.5, 1.13]]);
        let out = model.run(tvec![x.into()]).unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_qdq_product_becomes_an_int8_product_with_the_same_result() {
        let float = qdq_model();
        let mut int8 = qdq_model();
        assert_eq!(integer_products(&mut int8), 1);
        let g = int8.graph.as_ref().unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"MatMul"), "{ops:?}");
        assert!(ops.contains(&"MatMulInteger"), "{ops:?}");
        // the requantiser's scale is folded into the product's multipliers
        let q_y = g.node.iter().find(|n| n.name == "q_y").unwrap();
        assert_eq!(q_y.input[1], "dinoedge_qdq_unit_scale");
        // the integer sum is exact: the requantised result is the float path's, here where no
        // value sits on a rounding tie
        let (want, got) = (run(&float), run(&int8));
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 0.02 + 1e-6, "{want:?} vs {got:?}");
        }
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn products_it_cannot_prove_are_left_alone() {
        // a weight zero point that is not 0
        let mut m = qdq_model();
        let g = m.graph.as_mut().unwrap();
        g.initializer
            .iter_mut()
            .find(|t| t.name == "zw")
            .unwrap()
            .raw_data = vec![0, 1, 0];
        assert_eq!(integer_products(&mut m), 0);
        // weights that are not an initializer
        let mut m = qdq_model();
        let g = m.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "w");
        assert_eq!(integer_products(&mut m), 0);
    }
}
