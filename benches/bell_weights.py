#!/usr/bin/env python3
"""Redraw an fp32 ONNX model's matrix-product weights from an untruncated normal distribution.

The fixtures' random weights are drawn from a normal truncated at two deviations, so their
per-tensor int8 quantisation spreads them evenly over the whole byte: about a quarter of them
beyond +-64. Trained weights are bell-shaped with long tails (the largest several deviations
out), and that is what decides the speed of an 8-bit int8 file on AVX2: dinoedge multiplies its
weights as bytes (VPMADDUBSW) once the few pairs beyond that instruction's range are split off,
and the fixtures have too many such pairs for that to pay. This script makes a stand-in with
normal weights (same standard deviation as the original matrix, the same seed every time), to be
quantised with `models/export/quantize.py` and measured with `benches/ort_compare.py`:

    python3 benches/bell_weights.py dinov2-small/onnx/model.onnx /tmp/bell/model.onnx
    python3 models/export/quantize.py /tmp/bell/model.onnx /tmp/bell/int8.onnx --mode dynamic

Only speed is measured on such a file (its outputs mean nothing); `dinoedge info` says how many
of its products run as bytes and how many weights were split.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="fp32 ONNX model")
    parser.add_argument("out", type=Path, help="where to write the redrawn model")
    parser.add_argument("--seed", type=int, default=20261206)
    args = parser.parse_args()

    if not args.model.is_file():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    model = onnx.load(str(args.model))
    products = {
        name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm")
        for name in node.input
    }
    rng = np.random.default_rng(args.seed)
    redrawn = 0
    for init in model.graph.initializer:
        if init.name not in products or init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        if w.ndim != 2 or min(w.shape) < 16:
            continue
        std = float(w.std()) or 0.02
        new = rng.normal(0.0, std, size=w.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(new, init.name))
        redrawn += 1
    if redrawn == 0:
        print(f"error: {args.model} has no matrix-product weights to redraw", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    print(f"{args.out}: {redrawn} weight matrices redrawn from a normal distribution")
    return 0


if __name__ == "__main__":
    sys.exit(main())
