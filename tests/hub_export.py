#!/usr/bin/env python3
"""Rewrite a Hugging Face DINOv2 ONNX export into the shape of a torch.hub one, for tests.

`torch.onnx.export(torch.hub.load('facebookresearch/dinov2', 'dinov2_vits14'), ..., dynamo=True)`
gives a file that differs from the Hugging Face exports in ways a loader has to cope with, and
CI has no torch (nor the network) to make one. This script makes the same differences from an
existing file with the `onnx` package alone:

  * opset 18 (the dynamo exporter's), converted with onnx's version converter;
  * the patch embedding's `Conv` without `kernel_shape` (optional in ONNX: the weight has it);
  * the input named `input` with a fixed shape [1, 3, 224, 224] (or --size HxW);
  * one output, `embedding`: the normed CLS token only (what the hub model's forward returns);
    the normed tokens it is taken from are no longer a graph output;
  * node names in the dynamo exporter's style (`node_conv2d`, `node_Add_12`, ...);
  * every weight in an external `model.onnx.data` file beside `model.onnx`.

It then runs onnxruntime on the rewritten file with --input (a [1, 3, H, W] .npy) and writes
its `embedding` to OUT/embedding.npy, the value a loader's CLS token must equal.

    python3 tests/hub_export.py SRC.onnx OUT_DIR --input pixel_values_224x224.npy
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import helper, version_converter


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it is produced or read."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def to_hub_style(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    model = version_converter.convert_version(model, 18)
    graph = model.graph
    if len(graph.input) != 1:
        sys.exit(f"expected one graph input, found {len(graph.input)}")

    # Input: `input`, [1, 3, H, W].
    rename_value(graph, graph.input[0].name, "input")
    dims = graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, height, width)):
        dim.Clear()
        dim.dim_value = value

    # The patch embedding's Conv loses its optional kernel_shape.
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        sys.exit("no Conv in the graph")
    kept = [a for a in convs[0].attribute if a.name != "kernel_shape"]
    del convs[0].attribute[:]
    convs[0].attribute.extend(kept)

    # One output: the CLS token of the normed tokens, named `embedding`.
    outputs = {o.name: o for o in graph.output}
    if "pooler_output" not in outputs or "last_hidden_state" not in outputs:
        sys.exit("expected the outputs last_hidden_state and pooler_output")
    rename_value(graph, "pooler_output", "embedding")
    rename_value(graph, "last_hidden_state", "norm_output")
    embedding = [o for o in graph.output if o.name == "embedding"][0]
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info("embedding", embedding.type.tensor_type.elem_type, [1, None])
    )
    graph.output[0].type.tensor_type.shape.dim[1].Clear()

    # The torch.hub module's parameter names (the dynamo exporter keeps them).
    renames = [
        ("m.embeddings.cls_token", "cls_token"),
        ("m.embeddings.register_tokens", "register_tokens"),
        ("m.embeddings.mask_token", "mask_token"),
        ("m.embeddings.position_embeddings", "pos_embed"),
        ("m.embeddings.patch_embeddings.projection.", "patch_embed.proj."),
        ("m.encoder.layer.", "blocks."),
        ("m.layernorm.", "norm."),
    ]
    for init in list(graph.initializer):
        for old, new in renames:
            if init.name.startswith(old):
                rename_value(graph, init.name, new + init.name[len(old):])
                init.name = new + init.name[len(old):]
                break

    # Dynamo-style node names.
    for i, node in enumerate(graph.node):
        node.name = "node_conv2d" if node is convs[0] else f"node_{node.op_type}_{i}"
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a Hugging Face DINOv2 export (pixel_values -> last_hidden_state, pooler_output)")
    ap.add_argument("out", help="directory for model.onnx, model.onnx.data and embedding.npy")
    ap.add_argument("--input", required=True, help="a [1, 3, H, W] float32 .npy to run onnxruntime on")
    args = ap.parse_args()

    pixels = np.load(args.input).astype(np.float32)
    if pixels.ndim != 4 or pixels.shape[0] != 1 or pixels.shape[1] != 3:
        sys.exit(f"--input must be [1, 3, H, W], got {list(pixels.shape)}")
    height, width = pixels.shape[2:]

    model = to_hub_style(onnx.load(args.src), height, width)
    onnx.checker.check_model(model)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    data = "model.onnx.data"
    if os.path.exists(os.path.join(args.out, data)):
        os.remove(os.path.join(args.out, data))
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )

    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (embedding,) = session.run(["embedding"], {"input": pixels})
    np.save(os.path.join(args.out, "embedding.npy"), embedding)
    print(f"wrote {path} (+ {data}) and embedding.npy {list(embedding.shape)}")


if __name__ == "__main__":
    main()
