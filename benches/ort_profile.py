#!/usr/bin/env python3
"""onnxruntime's own time per operator for one ONNX file (its profiler), to set beside
`dinoedge bench FILE --profile` (docs/PERFORMANCE.md, "where each runtime's time goes").

    python3 benches/ort_profile.py ../shared/fixtures/dinov2-small/onnx/model.onnx --size 308x448 --threads 1

Needs models/export/requirements.txt (onnxruntime, numpy). Prints the median run and, per
operator type, the kernel time per run summed over its nodes, largest first.
"""
import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an ONNX file taking one NCHW float image")
    ap.add_argument("--size", default="224x224", help="HxW (default 224x224)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    try:
        h, w = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {a.size!r}: expected HxW, e.g. 308x448")
    if not os.path.isfile(a.model):
        ap.error(f"{a.model}: no such file")

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        for _ in range(a.warmup + a.runs):
            s.run(None, {name: x})
        with open(s.end_profiling()) as f:
            events = json.load(f)

    runs = [e["dur"] for e in events if e.get("name") == "model_run"][-a.runs :]
    per_op, nodes = collections.Counter(), collections.Counter()
    total = len([e for e in events if e.get("name") == "model_run"])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            per_op[op] += e["dur"]
            nodes[op] += 1
    print(f"# onnxruntime {ort.__version__}, {a.model}, {h}x{w}, {a.threads} thread(s)")
    print(f"median run {np.median(runs) / 1000:.1f} ms ({a.runs} runs after {a.warmup})")
    print(f"{'operator':28} {'ms/run':>9} {'nodes':>6}")
    for op, us in per_op.most_common(a.top):
        print(f"{op:28} {us / 1000 / total:9.2f} {nodes[op] // total:6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
