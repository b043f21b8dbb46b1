//! Reading a DINOv2 ONNX graph: which variant it is, where its blocks and attention are.
//!
//! Everything here works on the ONNX protobuf, before tract sees the model, so `dinoedge
//! info` is instant and the tensors dinoedge taps (block outputs, attention probabilities)
//! are found by the graph's structure rather than by exporter-specific node names: the
//! TorchScript exporter, the dynamo exporter and onnxruntime's quantizer all name nodes
//! differently, but every DINOv2 block is `LayerNorm → attention (one Softmax) → residual →
//! LayerNorm → MLP → residual`, and the encoder ends with one more LayerNorm.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use tract_onnx::pb;

use crate::error::{ModelError, Result};

/// Numeric precision of the weights, as the file stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    /// Plain float32.
    Fp32,
    /// float16 weights.
    Fp16,
    /// onnxruntime `quantize_dynamic`: `MatMulInteger`/`ConvInteger` + `DynamicQuantizeLinear`.
    DynamicInt8 {
        /// Whether the weights are signed (`QInt8`) or unsigned (`QUInt8`).
        signed_weights: bool,
    },
    /// onnxruntime `quantize_static` in QDQ format (`QuantizeLinear`/`DequantizeLinear` pairs).
    QdqInt8,
    /// QOperator format (`QLinearMatMul`, `QLinearConv`).
    QOperatorInt8,
}

impl Precision {
    /// True for every int8 variant.
    pub fn is_int8(&self) -> bool {
        !matches!(self, Precision::Fp32 | Precision::Fp16)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Precision::Fp32 => write!(f, "fp32"),
            Precision::Fp16 => write!(f, "fp16"),
            Precision::DynamicInt8 {
                signed_weights: true,
            } => {
                write!(f, "int8 dynamic (MatMulInteger, int8 weights)")
            }
            Precision::DynamicInt8 {
                signed_weights: false,
            } => {
                write!(f, "int8 dynamic (MatMulInteger, uint8 weights)")
            }
            Precision::QdqInt8 => write!(f, "int8 static QDQ"),
            Precision::QOperatorInt8 => write!(f, "int8 QOperator (QLinearMatMul)"),
        }
    }
}

/// The final LayerNorm of the encoder, kept to normalise intermediate blocks on request
/// (dinov2's `get_intermediate_layers(norm=True)`).
#[derive(Debug, Clone, PartialEq)]
pub struct FinalNorm {
    /// Scale, length D.
    pub weight: Vec<f32>,
    /// Shift, length D.
    pub bias: Vec<f32>,
    /// Epsilon (1e-6 for DINOv2).
    pub eps: f32,
}

/// What the graph says about the model, read without running it.
#[derive(Debug, Clone)]
pub struct GraphInfo {
    /// Name of the image input (`pixel_values` for Hugging Face exports).
    pub input_name: String,
    /// The input's shape as the file declares it: a number where fixed (torch.hub exports
    /// fix `[1, 3, 224, 224]`), `None` where symbolic or absent.
    pub input_dims: Vec<Option<usize>>,
    /// Names of the declared outputs.
    pub output_names: Vec<String>,
    /// Patch size (kernel and stride of the patch-embedding convolution).
    pub patch_size: usize,
    /// Token width D.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub num_blocks: usize,
    /// Per block, the tensor holding its output (before the final LayerNorm).
    pub block_outputs: Vec<String>,
    /// Per block, the tensor holding its softmax attention probabilities `[B, heads, T, T]`.
    pub attention_probs: Vec<String>,
    /// The tensor holding all tokens after the final LayerNorm (`last_hidden_state`).
    pub tokens_output: String,
    /// The final LayerNorm's parameters.
    pub final_norm: FinalNorm,
    /// Weight precision.
    pub precision: Precision,
    /// Number of weight values stored in the file (initializers, biases and norms included).
    pub parameters: usize,
    /// How often each operator type occurs.
    pub op_histogram: BTreeMap<String, usize>,
    /// ONNX opset (default domain).
    pub opset: i64,
    /// Exporter that wrote the file.
    pub producer: String,
    /// Whether the position embedding is resized in the graph (an ONNX `Resize`), which is
    /// what lets one file run at any resolution.
    pub resizes_position_embedding: bool,
    /// Whether the patch tokens get rotary position embeddings (RoPE: DINOv3), computed in the
    /// graph from the patch grid (its `Sin` and `Cos`), so one file runs at any size.
    pub rope: bool,
    /// The dense depth head inside the file (Depth Anything V2's DPT), if it has one.
    pub depth_head: Option<DepthHead>,
}

/// A model family, told apart by the graph's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// DINOv2: a learned position embedding (resized in the graph), patch 14, with or without
    /// registers.
    Dinov2,
    /// DINOv3: rotary position embeddings (RoPE) on the patch tokens, patch 16, 4 registers.
    Dinov3,
    /// Depth Anything V2: a DINOv2 encoder with a DPT depth head in the same file.
    DepthAnythingV2,
}

impl Family {
    /// The `model_type` values of Hugging Face configs of this family.
    pub fn model_types(self) -> &'static [&'static str] {
        match self {
            Family::Dinov2 => &["dinov2", "dinov2_with_registers"],
            Family::Dinov3 => &["dinov3_vit"],
            Family::DepthAnythingV2 => &["depth_anything"],
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Dinov2 => "DINOv2",
            Family::Dinov3 => "DINOv3",
            Family::DepthAnythingV2 => "Depth Anything V2",
        })
    }
}

/// A depth head inside the file: Depth Anything V2's DPT neck and head, which read the
/// final-LayerNormed tokens of four blocks and write one depth map per image.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthHead {
    /// The blocks whose normalised tokens the head reads, in the graph's order (2, 5, 8, 11
    /// for ViT-S).
    pub blocks: Vec<usize>,
    /// Per entry of `blocks`, the tensor with that block's tokens after the final LayerNorm.
    pub normalized_outputs: Vec<String>,
    /// The graph output with the depth, `[batch, height, width]` (`predicted_depth`).
    pub output: String,
}

/// Where the blocks end, which LayerNorm is the encoder's final one, and the depth head if
/// the file has one.
struct Blocks<'a> {
    block_outputs: Vec<String>,
    final_norm: &'a pb::NodeProto,
    depth_head: Option<DepthHead>,
}

/// Read the blocks from the LayerNorms, whatever order the file lists its nodes in (onnxruntime's
/// quantiser sorts them its own way). Each block has two LayerNorms, one before the attention
/// and one before the MLP, so the residual stream passes `2 · blocks + 1` distinct tensors into
/// LayerNorms: `x₀, m₀, x₁, m₁, …, x_n`, in the order the graph computes them, where `x_{b+1}`
/// is block `b`'s output. The encoder's final LayerNorm reads `x_n`; a plain DINOv2 export has
/// that one, a Depth Anything V2 export applies the same weights to the outputs of the blocks
/// its DPT head reads (2, 5, 8, 11), and the graph's output is then that head's depth map.
fn find_blocks<'a>(
    graph: &pb::GraphProto,
    norms: &[&'a pb::NodeProto],
    num_blocks: usize,
) -> std::result::Result<Blocks<'a>, String> {
    let expected = || {
        format!(
            "expected {} LayerNormalization nodes for {num_blocks} blocks (two per block and a final one), found {}{}",
            2 * num_blocks + 1,
            norms.len(),
            if norms.is_empty() {
                " (exports below opset 17 decompose LayerNorm; re-export with opset 17 or later)"
            } else {
                ""
            }
        )
    };
    // where each tensor is computed (graph inputs and constants first)
    let made_at: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i + 1)))
        .collect();
    let mut stream: Vec<&str> = norms.iter().map(|n| n.input[0].as_str()).collect();
    stream.sort_by_key(|t| (made_at.get(t).copied().unwrap_or(0), *t));
    stream.dedup();
    if norms.len() <= 2 * num_blocks || stream.len() != 2 * num_blocks + 1 {
        return Err(expected());
    }
    let block_outputs: Vec<String> = (0..num_blocks)
        .map(|b| stream[2 * b + 2].to_string())
        .collect();
    let last: Vec<&&pb::NodeProto> = norms
        .iter()
        .filter(|n| n.input[0] == stream[2 * num_blocks])
        .collect();
    let [final_norm] = last.as_slice() else {
        return Err(format!(
            "{} LayerNormalization nodes read the last block's output: not a DINOv2 encoder dinoedge knows",
            last.len()
        ));
    };
    let weight = final_norm.input.get(1);
    // the other LayerNorms with the final one's weights, over earlier blocks' outputs
    let mut finals: Vec<(usize, &pb::NodeProto)> = norms
        .iter()
        .filter(|n| n.input.get(1) == weight)
        .filter_map(|n| {
            let b = block_outputs.iter().position(|o| *o == n.input[0])?;
            Some((b, *n))
        })
        .collect();
    finals.sort_by_key(|(b, _)| *b);
    if norms.len() != 2 * num_blocks + finals.len() {
        return Err(format!(
            "{} LayerNormalization nodes where {num_blocks} blocks and {} final ones make {}: a head on the encoder with weights of its own, which dinoedge does not know",
            norms.len(),
            finals.len(),
            2 * num_blocks + finals.len()
        ));
    }
    let final_norm: &'a pb::NodeProto = final_norm;
    if finals.len() == 1 {
        return Ok(Blocks {
            block_outputs,
            final_norm,
            depth_head: None,
        });
    }
    let depth = graph
        .output
        .iter()
        .find(|o| o.name == "predicted_depth" || declared_rank(o) == Some(3));
    let Some(depth) = depth else {
        return Err(format!(
            "a head reads {} blocks of the encoder, but no output is a depth map [batch, height, width] (outputs: {}): dinoedge knows DINOv2 encoders and Depth Anything V2's depth head",
            finals.len(),
            graph
                .output
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    Ok(Blocks {
        depth_head: Some(DepthHead {
            blocks: finals.iter().map(|(b, _)| *b).collect(),
            normalized_outputs: finals.iter().map(|(_, n)| n.output[0].clone()).collect(),
            output: depth.name.clone(),
        }),
        block_outputs,
        final_norm,
    })
}

impl GraphInfo {
    /// The family the structure says: a depth head makes Depth Anything V2, RoPE DINOv3.
    pub fn family(&self) -> Family {
        if self.depth_head.is_some() {
            Family::DepthAnythingV2
        } else if self.rope {
            Family::Dinov3
        } else {
            Family::Dinov2
        }
    }

    /// Whether one file runs at any size (a multiple of the patch): its position embedding is
    /// resized in the graph, or its positions are rotary (computed from the grid).
    pub fn any_size(&self) -> bool {
        self.resizes_position_embedding || self.rope
    }

    /// Read the structure of a decoded ONNX model. `path` is used in messages and to resolve
    /// external tensor data.
    pub fn from_proto(proto: &pb::ModelProto, path: &Path) -> Result<Self> {
        let not_dino = |reason: String| ModelError::NotDinov2 {
            path: path.to_owned(),
            reason,
        };
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| not_dino("the file holds no graph".into()))?;
        let initializers: HashMap<&str, &pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let producers: HashMap<&str, &pb::NodeProto> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
            .collect();

        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains_key(i.name.as_str()))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => return Err(not_dino("the graph has no input".into())),
            many => {
                return Err(not_dino(format!(
                    "expected one image input, found {}: {}",
                    many.len(),
                    many.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        if let Some(rank) = declared_rank(input)
            && rank != 4
        {
            return Err(not_dino(format!(
                "the input `{}` has rank {rank}; a vision transformer takes [batch, 3, height, width]",
                input.name
            )));
        }

        let mut op_histogram = BTreeMap::new();
        for n in &graph.node {
            *op_histogram.entry(n.op_type.clone()).or_insert(0usize) += 1;
        }

        // Patch embedding: the first convolution whose kernel equals its stride.
        let conv = graph
            .node
            .iter()
            .find(|n| matches!(n.op_type.as_str(), "Conv" | "ConvInteger" | "QLinearConv"))
            .ok_or_else(|| not_dino("no patch-embedding convolution (Conv) in the graph".into()))?;
        // `kernel_shape` is optional in ONNX (torch's dynamo exporter leaves it out): the
        // weight's own shape has it.
        let kernel = attr_ints(conv, "kernel_shape")
            .or_else(|| conv_weight_kernel(conv, &initializers, &producers));
        let strides = attr_ints(conv, "strides");
        let patch_size = match (kernel.as_deref(), strides.as_deref()) {
            (Some([kh, kw]), Some([sh, sw])) if kh == kw && kh == sh && kh == sw && *kh > 1 => {
                *kh as usize
            }
            _ => {
                return Err(not_dino(format!(
                    "the first convolution ({}) is not a patch embedding (kernel {}, strides {})",
                    conv.name,
                    dims_text(kernel.as_deref()),
                    dims_text(strides.as_deref()),
                )));
            }
        };

        let softmaxes: Vec<&pb::NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Softmax")
            .collect();
        let norms: Vec<&pb::NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "LayerNormalization")
            .collect();
        if softmaxes.is_empty() {
            return Err(not_dino(
                "no attention (Softmax) in the graph: not a vision transformer (a ConvNeXt \
                 or other convolutional network?); dinoedge runs the ViTs of DINOv2, DINOv3 and \
                 Depth Anything V2"
                    .into(),
            ));
        }
        let num_blocks = softmaxes.len();
        let found = find_blocks(graph, &norms, num_blocks).map_err(not_dino)?;
        let attention_probs: Vec<String> = softmaxes.iter().map(|n| n.output[0].clone()).collect();
        let block_outputs = found.block_outputs;
        let final_ln = found.final_norm;
        let tokens_output = final_ln.output[0].clone();
        let eps = attr_f(final_ln, "epsilon").unwrap_or(1e-5);
        let dir = path.parent().and_then(|p| p.to_str());
        let load = |name: Option<&String>, what: &str| -> Result<Vec<f32>> {
            let t = name
                .and_then(|n| initializers.get(n.as_str()))
                .ok_or_else(|| {
                    not_dino(format!("the final LayerNorm's {what} is not a constant"))
                })?;
            let tensor = tract_onnx::tensor::load_tensor(
                &tract_onnx::data_resolver::MmapDataResolver,
                t,
                dir,
            )
            .map_err(|e| ModelError::InvalidOnnx {
                path: path.to_owned(),
                reason: format!("tensor {}: {e:#}", t.name),
            })?;
            let tensor = tensor
                .cast_to::<f32>()
                .map_err(|e| ModelError::InvalidOnnx {
                    path: path.to_owned(),
                    reason: format!("tensor {}: {e:#}", t.name),
                })?
                .into_owned();
            Ok(tensor
                .to_plain_array_view::<f32>()
                .map(|a| a.iter().copied().collect())
                .unwrap_or_default())
        };
        let weight = load(final_ln.input.get(1), "scale")?;
        let bias = match final_ln.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => load(Some(b), "bias")?,
            None => vec![0.0; weight.len()],
        };
        let embed_dim = weight.len();
        if embed_dim == 0 || bias.len() != embed_dim {
            return Err(not_dino(format!(
                "the final LayerNorm has {} scales and {} biases",
                weight.len(),
                bias.len()
            )));
        }

        let precision = detect_precision(graph, &initializers, &producers, &op_histogram);
        let parameters = graph
            .initializer
            .iter()
            .map(|t| {
                t.dims
                    .iter()
                    .map(|d| (*d).max(0) as usize)
                    .product::<usize>()
            })
            .sum();
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0);
        let producer = format!("{} {}", proto.producer_name, proto.producer_version)
            .trim()
            .to_string();
        Ok(GraphInfo {
            depth_head: found.depth_head,
            input_name: input.name.clone(),
            input_dims: declared_dims(input),
            output_names: graph.output.iter().map(|o| o.name.clone()).collect(),
            patch_size,
            embed_dim,
            num_blocks,
            block_outputs,
            attention_probs,
            tokens_output,
            final_norm: FinalNorm { weight, bias, eps },
            precision,
            parameters,
            resizes_position_embedding: op_histogram.contains_key("Resize"),
            rope: op_histogram.contains_key("Sin") && op_histogram.contains_key("Cos"),
            op_histogram,
            opset,
            producer,
        })
    }

    /// Decode and analyse an ONNX file.
    pub fn read(path: &Path) -> Result<(pb::ModelProto, Self)> {
        let proto = read_proto(path)?;
        let info = Self::from_proto(&proto, path)?;
        Ok((proto, info))
    }
}

/// Decode an ONNX file into its protobuf, with typed errors for a missing, unreadable or
/// corrupt file.
pub fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    use tract_onnx::prelude::Framework;
    if !path.exists() {
        return Err(ModelError::NotFound {
            path: path.to_owned(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|error| ModelError::Io {
        path: path.to_owned(),
        error,
    })?;
    if meta.is_dir() {
        return Err(ModelError::Io {
            path: path.to_owned(),
            error: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory; give the .onnx file inside it",
            ),
        });
    }
    if meta.len() == 0 {
        return Err(ModelError::InvalidOnnx {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    let proto = tract_onnx::onnx().proto_model_for_path(path).map_err(|e| {
        // tract reports I/O problems through the same channel as decoding errors.
        match e.downcast_ref::<std::io::Error>() {
            Some(io) => ModelError::Io {
                path: path.to_owned(),
                error: std::io::Error::new(io.kind(), io.to_string()),
            },
            None => ModelError::InvalidOnnx {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            },
        }
    })?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(ModelError::InvalidOnnx {
            path: path.to_owned(),
            reason: "the protobuf decoded but holds no graph nodes".into(),
        });
    }
    Ok(proto)
}

fn declared_dims(input: &pb::ValueInfoProto) -> Vec<Option<usize>> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    t.shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                Some(v as usize)
            }
            _ => None,
        })
        .collect()
}

fn declared_rank(input: &pb::ValueInfoProto) -> Option<usize> {
    match input.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.len()),
    }
}

fn attr<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_ints(node: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// The spatial size of a convolution's weight, `[out, in, kh, kw]` → `[kh, kw]`, from the
/// initializer it reads, through a `DequantizeLinear` (QDQ files) if there is one.
fn conv_weight_kernel(
    conv: &pb::NodeProto,
    initializers: &HashMap<&str, &pb::TensorProto>,
    producers: &HashMap<&str, &pb::NodeProto>,
) -> Option<Vec<i64>> {
    let slot = if conv.op_type == "QLinearConv" { 3 } else { 1 };
    let mut name = conv.input.get(slot)?.as_str();
    for _ in 0..4 {
        if let Some(t) = initializers.get(name) {
            return (t.dims.len() == 4).then(|| t.dims[2..].to_vec());
        }
        let p = producers.get(name)?;
        if !matches!(p.op_type.as_str(), "DequantizeLinear" | "Identity" | "Cast") {
            return None;
        }
        name = p.input.first()?.as_str();
    }
    None
}

/// `[14, 14]`, or "not given", for messages.
fn dims_text(dims: Option<&[i64]>) -> String {
    match dims {
        Some(d) => format!(
            "[{}]",
            d.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ),
        None => "not given".into(),
    }
}

fn attr_f(node: &pb::NodeProto, name: &str) -> Option<f32> {
    attr(node, name).map(|a| a.f)
}

const ONNX_UINT8: i32 = 2;
const ONNX_INT8: i32 = 3;
const ONNX_FLOAT16: i32 = 10;

fn detect_precision(
    graph: &pb::GraphProto,
    initializers: &HashMap<&str, &pb::TensorProto>,
    producers: &HashMap<&str, &pb::NodeProto>,
    ops: &BTreeMap<String, usize>,
) -> Precision {
    let has = |op: &str| ops.contains_key(op);
    if has("MatMulInteger") || has("ConvInteger") {
        // The weight is the B input of MatMulInteger (after an optional Transpose).
        let signed = graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMulInteger")
            .filter_map(|n| n.input.get(1))
            .filter_map(|name| {
                initializers
                    .get(name.as_str())
                    .map(|t| t.data_type)
                    .or_else(|| {
                        producers
                            .get(name.as_str())
                            .and_then(|p| p.input.first())
                            .and_then(|i| initializers.get(i.as_str()))
                            .map(|t| t.data_type)
                    })
            })
            .any(|dt| dt == ONNX_INT8);
        let unsigned = !signed && graph.initializer.iter().any(|t| t.data_type == ONNX_UINT8);
        return Precision::DynamicInt8 {
            signed_weights: signed || !unsigned,
        };
    }
    if has("QLinearMatMul") || has("QLinearConv") {
        return Precision::QOperatorInt8;
    }
    if has("QuantizeLinear") && has("DequantizeLinear") {
        return Precision::QdqInt8;
    }
    if graph
        .initializer
        .iter()
        .any(|t| t.data_type == ONNX_FLOAT16)
    {
        return Precision::Fp16;
    }
    Precision::Fp32
}
