//! int8 convolutions as float convolutions, exactly: the patch embedding of an int8 file
//! (`ConvInteger` in dynamic files, `Conv` of dequantised weights in QDQ files) is one
//! convolution that dinoedge's product kernels do not take, and tract runs its quantised form
//! through a slow path on x86 (107 ms of a 250 ms ViT-S run on an AVX2 machine; 1.6 ms in
//! float). This rewrites the ONNX graph before tract reads it:
//!
//! - `ConvInteger(x, W, x₀, W₀)` becomes `Cast<i32>(Conv(Cast<f32>(x) − Cast<f32>(x₀), W − W₀))`,
//!   with `W − W₀` a float initializer. Every product of two integers below 2⁸ in magnitude is
//!   exact in `f32`, and so is every partial sum below 2²⁴: the rewrite is made only when each
//!   output channel's `255 · Σ|W − W₀|` is under 2²⁴, so the sums, and the result, are the
//!   integer convolution's, bit for bit, for any input. Where the whole sum could pass 2²⁴ (a
//!   3x3 convolution over 192 or 384 channels, as Depth Anything's neck has), the input
//!   channels are split into runs that each stay under it: one float convolution per run, each
//!   result cast to `i32` (exact), the runs added in `i32` (exact): still the integer
//!   convolution bit for bit. Left to tract only where a single channel's sum could pass 2²⁴
//!   (kernels of over 258 taps) or the convolution is grouped.
//! - In a QDQ file, `Conv(…, DequantizeLinear(W_q, s, 0))` takes the dequantised weights as a
//!   float initializer (the values tract computes from them at load anyway), so tract does not
//!   form a quantised convolution.

use std::collections::HashMap;

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

use crate::qdq::{ATTR_INT, FLOAT, bytes, floats, node};

const INT32: i32 = 6;

/// `2²⁴`: below it every integer is exact in `f32`.
const EXACT: i64 = 1 << 24;

fn cast(name: String, input: String, output: String, to: i32) -> NodeProto {
    let mut n = node("Cast", name, vec![input], output);
    n.attribute.push(AttributeProto {
        name: "to".into(),
        r#type: ATTR_INT,
        i: to as i64,
        ..Default::default()
    });
    n
}

fn float_init(name: String, dims: Vec<i64>, values: Vec<f32>) -> TensorProto {
    TensorProto {
        name,
        dims,
        data_type: FLOAT,
        float_data: values,
        ..Default::default()
    }
}

/// `W − W₀` of a convolution's weights `[out, channels, taps…]`; `zero` is one value or one
/// per output channel (axis 0).
struct Centred {
    values: Vec<i32>,
    out: usize,
    channels: usize,
    taps: usize,
}

impl Centred {
    fn new(w: &TensorProto, zero: &[i32]) -> Option<Centred> {
        let values = bytes(w)?;
        let (out, channels) = (*w.dims.first()? as usize, *w.dims.get(1)? as usize);
        if out == 0 || channels == 0 || !values.len().is_multiple_of(out * channels) {
            return None;
        }
        if zero.len() != 1 && zero.len() != out {
            return None;
        }
        let per = values.len() / out;
        let values = values
            .iter()
            .enumerate()
            .map(|(i, v)| v - zero[if zero.len() == 1 { 0 } else { i / per }])
            .collect();
        Some(Centred {
            values,
            out,
            channels,
            taps: per / channels,
        })
    }

    /// The input channels in runs whose sums are exact in `f32` for every output channel
    /// (`255 · Σ|W − W₀|` under 2²⁴; see the module's text), or `None` when one channel alone
    /// is not.
    fn exact_runs(&self) -> Option<Vec<std::ops::Range<usize>>> {
        let mut runs = Vec::new();
        let mut sums = vec![0i64; self.out];
        let mut start = 0;
        for c in 0..self.channels {
            let adds: Vec<i64> = (0..self.out)
                .map(|o| {
                    self.channel(o, c)
                        .iter()
                        .map(|v| v.unsigned_abs() as i64)
                        .sum()
                })
                .collect();
            if adds.iter().any(|a| a * 255 >= EXACT) {
                return None;
            }
            if sums.iter().zip(&adds).any(|(s, a)| (s + a) * 255 >= EXACT) {
                runs.push(start..c);
                start = c;
                sums.fill(0);
            }
            sums.iter_mut().zip(&adds).for_each(|(s, a)| *s += a);
        }
        runs.push(start..self.channels);
        Some(runs)
    }

    /// Output channel `o`'s weights for input channel `c`.
    fn channel(&self, o: usize, c: usize) -> &[i32] {
        &self.values[(o * self.channels + c) * self.taps..][..self.taps]
    }

    /// The weights of input channels `run`, as floats, `[out, run.len(), taps…]`.
    fn floats(&self, run: &std::ops::Range<usize>) -> Vec<f32> {
        (0..self.out)
            .flat_map(|o| run.clone().flat_map(move |c| self.channel(o, c)))
            .map(|v| *v as f32)
            .collect()
    }
}

fn int64_init(name: String, values: &[i64]) -> TensorProto {
    TensorProto {
        name,
        dims: vec![values.len() as i64],
        data_type: 7, // INT64
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// The `ConvInteger` at `ix` rewritten (see the module's text), or `None` to leave it.
fn rewrite_conv_integer(
    graph: &GraphProto,
    inits: &HashMap<&str, &TensorProto>,
    ix: usize,
    read_as_float: bool,
) -> Option<(Vec<NodeProto>, Vec<TensorProto>)> {
    let conv = &graph.node[ix];
    let x = conv.input.first()?;
    let w = inits.get(conv.input.get(1)?.as_str())?;
    let x_zero = conv.input.get(2).filter(|z| !z.is_empty());
    let w_zero = match conv.input.get(3).filter(|z| !z.is_empty()) {
        Some(z) => bytes(inits.get(z.as_str())?)?,
        None => vec![0],
    };
    let centred = Centred::new(w, &w_zero)?;
    let runs = centred.exact_runs()?;
    let grouped = conv.attribute.iter().any(|a| a.name == "group" && a.i != 1);
    if runs.len() > 1 && grouped {
        return None;
    }
    let base = format!("{}_dinoedge_float", conv.name);
    let (xf, xc, wf, yf) = (
        format!("{base}_x"),
        format!("{base}_x_centred"),
        format!("{base}_w"),
        format!("{base}_y"),
    );
    let mut nodes = vec![cast(format!("{base}_cast_x"), x.clone(), xf.clone(), FLOAT)];
    let conv_input = match x_zero {
        Some(z) => {
            let zf = format!("{base}_x_zero");
            nodes.push(cast(
                format!("{base}_cast_zero"),
                z.clone(),
                zf.clone(),
                FLOAT,
            ));
            nodes.push(node("Sub", format!("{base}_sub"), vec![xf, zf], xc.clone()));
            xc
        }
        None => xf,
    };
    if runs.len() > 1 {
        return split_by_channels(conv, &w.dims, &centred, &runs, &base, conv_input, nodes);
    }
    let mut float_conv = node(
        "Conv",
        format!("{base}_conv"),
        vec![conv_input, wf.clone()],
        yf.clone(),
    );
    float_conv.attribute = conv.attribute.clone();
    if read_as_float {
        // every reader casts the sums to float at once: the float convolution's output is
        // those sums exactly (each an integer under 2^24), so it goes to them as it is, and
        // their `Cast` becomes a no-op tract drops (no i32 round trip)
        float_conv.output[0] = conv.output.first()?.clone();
        nodes.push(float_conv);
    } else {
        nodes.push(float_conv);
        nodes.push(cast(
            format!("{base}_cast_y"),
            yf,
            conv.output.first()?.clone(),
            INT32,
        ));
    }
    let weights = centred.floats(&(0..centred.channels));
    Some((nodes, vec![float_init(wf, w.dims.clone(), weights)]))
}

/// The rest of [`rewrite_conv_integer`] when the input channels go in several `runs`: after
/// `nodes` (which make the centred float input `x`), per run a `Slice` of its channels, a float
/// `Conv` and a `Cast` to `i32`; then the runs' `i32` sums added into the `ConvInteger`'s output.
fn split_by_channels(
    conv: &NodeProto,
    w_dims: &[i64],
    centred: &Centred,
    runs: &[std::ops::Range<usize>],
    base: &str,
    x: String,
    mut nodes: Vec<NodeProto>,
) -> Option<(Vec<NodeProto>, Vec<TensorProto>)> {
    let mut inits = vec![int64_init(format!("{base}_axes"), &[1])];
    let mut sum: Option<String> = None;
    for (i, run) in runs.iter().enumerate() {
        let (starts, ends) = (format!("{base}_starts{i}"), format!("{base}_ends{i}"));
        inits.push(int64_init(starts.clone(), &[run.start as i64]));
        inits.push(int64_init(ends.clone(), &[run.end as i64]));
        let (xs, wf, yf, yi) = (
            format!("{base}_x{i}"),
            format!("{base}_w{i}"),
            format!("{base}_y{i}"),
            format!("{base}_y{i}_i32"),
        );
        nodes.push(node(
            "Slice",
            format!("{base}_slice{i}"),
            vec![x.clone(), starts, ends, format!("{base}_axes")],
            xs.clone(),
        ));
        let mut dims = w_dims.to_vec();
        dims[1] = run.len() as i64;
        inits.push(float_init(wf.clone(), dims, centred.floats(run)));
        let mut float_conv = node("Conv", format!("{base}_conv{i}"), vec![xs, wf], yf.clone());
        float_conv.attribute = conv.attribute.clone();
        nodes.push(float_conv);
        nodes.push(cast(format!("{base}_cast_y{i}"), yf, yi.clone(), INT32));
        sum = Some(match sum {
            None => yi,
            Some(prev) => {
                let last = i + 1 == runs.len();
                let out = if last {
                    conv.output.first()?.clone()
                } else {
                    format!("{base}_sum{i}")
                };
                nodes.push(node(
                    "Add",
                    format!("{base}_add{i}"),
                    vec![prev, yi],
                    out.clone(),
                ));
                out
            }
        });
    }
    Some((nodes, inits))
}

/// The dequantised weights of the QDQ `Conv` at `ix` as a float initializer, or `None`.
fn dequantized_conv_weights(
    graph: &GraphProto,
    producers: &HashMap<&str, &NodeProto>,
    inits: &HashMap<&str, &TensorProto>,
    ix: usize,
) -> Option<(String, TensorProto)> {
    let conv = &graph.node[ix];
    let dq = producers.get(conv.input.get(1)?.as_str())?;
    if dq.op_type != "DequantizeLinear" {
        return None;
    }
    let w = inits.get(dq.input.first()?.as_str())?;
    let values = bytes(w)?;
    let scale = floats(inits.get(dq.input.get(1)?.as_str())?)?;
    let zero = match dq.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => bytes(inits.get(z.as_str())?)?,
        None => vec![0],
    };
    let out_channels = *w.dims.first()? as usize;
    let axis = dq
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let per_channel = |len: usize| len == out_channels && axis == 0;
    if !(scale.len() == 1 || per_channel(scale.len()))
        || !(zero.len() == 1 || per_channel(zero.len()))
        || out_channels == 0
        || !values.len().is_multiple_of(out_channels)
    {
        return None;
    }
    let per = values.len() / out_channels;
    let pick = |v: &[f32], o: usize| v[if v.len() == 1 { 0 } else { o }];
    let dequantized = values
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let o = i / per;
            let z = zero[if zero.len() == 1 { 0 } else { o }];
            (q - z) as f32 * pick(&scale, o)
        })
        .collect();
    let name = format!("{}_dinoedge_weights", conv.name);
    Some((name.clone(), float_init(name, w.dims.clone(), dequantized)))
}

/// Rewrite every int8 convolution of `model` as the module's text says. Returns how many.
pub fn float_convolutions(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let (integer, qdq) = {
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let producers: HashMap<&str, &NodeProto> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();
        let is =
            |ix: usize, op: &str| graph.node[ix].op_type == op && graph.node[ix].domain.is_empty();
        // whether every node reading `name` is a `Cast` to float (and the graph does not
        // output it)
        let read_as_float = |name: &str| {
            let mut readers = graph
                .node
                .iter()
                .filter(|n| n.input.iter().any(|i| i == name))
                .peekable();
            readers.peek().is_some()
                && readers.all(|n| {
                    n.op_type == "Cast"
                        && n.attribute
                            .iter()
                            .any(|a| a.name == "to" && a.i == FLOAT as i64)
                })
                && !graph.output.iter().any(|o| o.name == name)
        };
        let integer: Vec<_> = (0..graph.node.len())
            .filter(|ix| is(*ix, "ConvInteger"))
            .filter_map(|ix| {
                let as_float = read_as_float(graph.node[ix].output.first()?);
                Some((ix, rewrite_conv_integer(graph, &inits, ix, as_float)?))
            })
            .collect();
        let qdq: Vec<_> = (0..graph.node.len())
            .filter(|ix| is(*ix, "Conv"))
            .filter_map(|ix| Some((ix, dequantized_conv_weights(graph, &producers, &inits, ix)?)))
            .collect();
        (integer, qdq)
    };
    let count = integer.len() + qdq.len();
    for (ix, (name, init)) in qdq {
        graph.node[ix].input[1] = name;
        graph.initializer.push(init);
    }
    // in place of each ConvInteger, last first, so the graph stays in topological order
    for (ix, (nodes, inits)) in integer.into_iter().rev() {
        graph.node.remove(ix);
        for (k, n) in nodes.into_iter().enumerate() {
            graph.node.insert(ix + k, n);
        }
        graph.initializer.extend(inits);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdq::tests::{init_f32, init_i8, value};
    use dinoedge_testkit::noise_bytes as noise;
    use tract_onnx::prelude::*;

    fn n(op: &str, name: &str, i: &[&str], o: &[&str]) -> NodeProto {
        NodeProto {
            input: i.iter().map(|s| s.to_string()).collect(),
            output: o.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: 7, // INTS
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn init_u8(name: &str, dims: &[i64], v: &[u8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 2,
            raw_data: v.to_vec(),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![value("x", &[1, 3, 28, 28])],
                output: vec![value("out", &[1, 4, 2, 2])],
                name: "patch".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// x → DynamicQuantizeLinear → ConvInteger (14x14, stride 14; weights `w`, zero point
    /// `zw`) → Cast → out: a patch embedding as onnxruntime's `quantize_dynamic` writes it.
    fn dynamic(w: TensorProto, zw: TensorProto) -> ModelProto {
        let mut conv = n("ConvInteger", "conv", &["xq", "w", "xz", "zw"], &["acc"]);
        conv.attribute = vec![ints("kernel_shape", &[14, 14]), ints("strides", &[14, 14])];
        let mut to_f32 = n("Cast", "cast", &["acc"], &["out"]);
        to_f32.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: ATTR_INT,
            i: FLOAT as i64,
            ..Default::default()
        });
        let dql = n("DynamicQuantizeLinear", "dql", &["x"], &["xq", "xs", "xz"]);
        model(vec![dql, conv, to_f32], vec![w, zw])
    }

    fn run(proto: &ModelProto) -> Vec<f32> {
        let model = tract_onnx::onnx()
            .model_for_proto_model(proto)
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let x: Vec<f32> = noise(3 * 28 * 28, 5)
            .map(|v| v as f32 / 40.0 - 2.5)
            .collect();
        let x = tract_ndarray::Array4::from_shape_vec((1, 3, 28, 28), x).unwrap();
        let out = model.run(tvec![Tensor::from(x).into()]).unwrap();
        out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    /// The operators of `original` with its one int8 convolution rewritten, once the rewrite
    /// is checked to give tract's integer convolution bit for bit.
    fn rewritten_ops(original: &ModelProto) -> Vec<String> {
        let mut rewritten = original.clone();
        assert_eq!(float_convolutions(&mut rewritten), 1);
        let ops: Vec<String> = rewritten
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone())
            .collect();
        assert!(!ops.iter().any(|o| o == "ConvInteger"), "{ops:?}");
        let (want, got) = (run(original), run(&rewritten));
        assert_eq!(want.len(), 16);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.to_bits(), w.to_bits(), "{got:?} vs {want:?}");
        }
        ops
    }

    #[test]
    fn an_integer_convolution_becomes_a_float_one_with_the_same_bits() {
        let len = 4 * 3 * 14 * 14;
        let signed: Vec<i8> = noise(len, 9).map(|v| (v as i8) / 3).collect();
        let unsigned: Vec<u8> = noise(len, 11).map(|v| 96 + v / 3).collect();
        for (w, zw) in [
            (
                init_i8("w", &[4, 3, 14, 14], &signed),
                init_i8("zw", &[], &[0]),
            ),
            (
                init_u8("w", &[4, 3, 14, 14], &unsigned),
                init_u8("zw", &[], &[139]),
            ),
            (
                init_u8("w", &[4, 3, 14, 14], &unsigned),
                init_u8("zw", &[4], &[130, 135, 140, 128]),
            ),
        ] {
            rewritten_ops(&dynamic(w, zw));
        }
    }

    #[test]
    fn the_sums_stay_i32_unless_every_reader_casts_them_to_float() {
        let w = init_i8("w", &[4, 3, 14, 14], &[1; 4 * 3 * 14 * 14]);
        let casts_to = |proto: &ModelProto, to: i32| {
            proto.graph.as_ref().unwrap().node.iter().any(|n| {
                n.op_type == "Cast"
                    && n.attribute
                        .iter()
                        .any(|a| a.name == "to" && a.i == to as i64)
            })
        };
        // read by a Cast to float only: the float sums go straight to it
        let mut only_cast = dynamic(w.clone(), init_i8("zw", &[], &[0]));
        assert_eq!(float_convolutions(&mut only_cast), 1);
        assert!(!casts_to(&only_cast, INT32));
        // read by anything else too: the i32 sums, as the file has them
        let mut other = dynamic(w, init_i8("zw", &[], &[0]));
        other
            .graph
            .as_mut()
            .unwrap()
            .node
            .push(n("Identity", "also", &["acc"], &["acc_too"]));
        assert_eq!(float_convolutions(&mut other), 1);
        assert!(casts_to(&other, INT32));
    }

    #[test]
    fn sums_that_could_leave_f32_exactness_go_in_runs_of_channels() {
        // 255 · 196 · 127 per channel: two channels' sums stay under 2²⁴, three do not;
        // 255 · 196 · 255 (uint8 weights from a zero point of 0): one channel's alone does
        let signed = init_i8("w", &[4, 3, 14, 14], &[127; 4 * 3 * 14 * 14]);
        let unsigned = init_u8("w", &[4, 3, 14, 14], &[255; 4 * 3 * 14 * 14]);
        let mixed: Vec<i8> = noise(4 * 3 * 14 * 14, 17)
            .map(|v| if v % 2 == 0 { 127 } else { -127 })
            .collect();
        for (w, zw, runs) in [
            (signed, init_i8("zw", &[], &[0]), 2),
            (unsigned, init_u8("zw", &[], &[0]), 3),
            (
                init_i8("w", &[4, 3, 14, 14], &mixed),
                init_i8("zw", &[], &[0]),
                2,
            ),
        ] {
            let ops = rewritten_ops(&dynamic(w, zw));
            assert_eq!(ops.iter().filter(|o| *o == "Conv").count(), runs, "{ops:?}");
        }
    }

    #[test]
    fn a_channel_whose_own_sum_could_leave_f32_exactness_is_left_alone() {
        // 17x17 taps of 255 from a zero point of 0: 255 · 289 · 255 > 2²⁴ in one channel
        let w = init_u8("w", &[2, 3, 17, 17], &[255; 2 * 3 * 17 * 17]);
        let centred = Centred::new(&w, &[0]).unwrap();
        assert_eq!(centred.exact_runs(), None);
        let w = init_u8("w", &[2, 3, 16, 16], &[255; 2 * 3 * 16 * 16]);
        let centred = Centred::new(&w, &[0]).unwrap();
        assert_eq!(centred.exact_runs(), Some(vec![0..1, 1..2, 2..3]));
    }

    #[test]
    fn a_qdq_convolution_takes_its_weights_dequantized() {
        let q: Vec<i8> = noise(4 * 3 * 14 * 14, 13).map(|v| v as i8).collect();
        let mut dq_w = n("DequantizeLinear", "dq_w", &["w", "sw", "zw"], &["wd"]);
        dq_w.attribute.push(AttributeProto {
            name: "axis".into(),
            r#type: ATTR_INT,
            i: 0,
            ..Default::default()
        });
        let mut conv = n("Conv", "conv", &["xd", "wd", "b"], &["out"]);
        conv.attribute = vec![ints("kernel_shape", &[14, 14]), ints("strides", &[14, 14])];
        let original = model(
            vec![
                n("QuantizeLinear", "q_x", &["x", "sx", "zx"], &["xq"]),
                n("DequantizeLinear", "dq_x", &["xq", "sx", "zx"], &["xd"]),
                dq_w,
                conv,
            ],
            vec![
                init_f32("sx", &[], &[0.02]),
                init_i8("zx", &[], &[3]),
                init_i8("w", &[4, 3, 14, 14], &q),
                init_f32("sw", &[4], &[0.001, 0.002, 0.0015, 0.003]),
                init_i8("zw", &[4], &[0, 0, 0, 0]),
                init_f32("b", &[4], &[0.1, -0.2, 0.3, 0.0]),
            ],
        );
        let mut rewritten = original.clone();
        assert_eq!(float_convolutions(&mut rewritten), 1);
        let (want, got) = (run(&original), run(&rewritten));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }
}
