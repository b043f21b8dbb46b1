#!/usr/bin/env python3
"""Time onnxruntime and dinoedge (tract) on the same ONNX files in the same run.

Usage:
    pip install onnxruntime numpy            # the registry's onnxruntime, CPU provider
    cargo build --release
    python3 benches/ort_compare.py [--fixtures ../shared/fixtures] [--threads 1 2] [--runs 20]
    python3 benches/ort_compare.py --set depth      # Depth Anything V2 small int8 at 308x308
    python3 benches/ort_compare.py --set dinov3     # DINOv3 ViT-S/16 int8 at 224 (--size 320x448)

For each file and thread count it prints the median latency of both runtimes and the
ratio tract / onnxruntime (below 1.0: dinoedge is faster). The two runtimes alternate
file by file, so a busy neighbour on a shared machine slows both alike. Use --json to
get the table as JSON as well.

`--before OTHER_BINARY` times a second dinoedge build (the one before a change) in the same
run, so a before/after table has one machine state. `--saturating` times dinoedge once more with
DINOEDGE_INT8_SUMS=saturating (on AVX2, int8 weights multiplied with saturating pair sums, as
onnxruntime's own AVX2 kernel does: its arithmetic, not the exact one); the other dinoedge
columns are exact whatever the environment says. The first line says which CPU this is
(the int8 kernels differ between AVX2, AVX-512 VNNI and AMX machines).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    ("fp32", "dinov2-small/onnx/model.onnx"),
    ("int8 dynamic (S8 weights)", "dinov2-small/onnx/model_int8.onnx"),
    ("int8 dynamic (U8 weights)", "dinov2-small/onnx/model_quantized.onnx"),
    ("int8 QDQ", "dinov2-small/onnx/model_qdq.onnx"),
]
# `--set dinov3`: DINOv3 ViT-S/16 (RoPE, 4 registers; 196 patches at 224 against DINOv2's 256)
DINOV3_FILES = [
    ("DINOv3 S/16 int8 dynamic", "dinov3-small/onnx/model_int8.onnx"),
]
# `--set depth`: Depth Anything V2 (DINOv2 encoder + DPT depth head), at 308x308 unless --size
DEPTH_FILES = [
    ("DA-V2 small int8 dynamic", "depth-anything-v2-small/onnx/model_int8.onnx"),
]


def time_ort(path, size, threads, runs, warmup):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    h, w = size
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        ms.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ms)


def time_tract(binary, path, size, threads, runs, warmup, sums="exact"):
    out = subprocess.run(
        [str(binary), "bench", str(path), "--size", f"{size[0]}x{size[1]}", "--threads", str(threads),
         "--runs", str(runs), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True,
        env={**os.environ, "DINOEDGE_INT8_SUMS": sums},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def cpu_line():
    """The CPU's model name and the instruction sets the int8 kernels care about."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"]
    isa = [f for f in wanted if f in flags]
    return f"{name} x{os.cpu_count()} ({' '.join(isa) or 'baseline'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=os.environ.get("DINOEDGE_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    ap.add_argument("--binary", default=ROOT / "target" / "release" / "dinoedge")
    ap.add_argument("--set", choices=["dinov2", "dinov3", "depth"], default="dinov2",
                    help="which fixtures: the DINOv2 ViT-S files, DINOv3 ViT-S/16 (int8), "
                         "or Depth Anything V2 small (int8)")
    ap.add_argument("--size", help="HxW (default 224x224; 308x308 with --set depth)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", help="substring of the file names to keep")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                    help="time this file instead of the fixtures (repeat for more; benches/board.sh uses it)")
    ap.add_argument("--before", help="another dinoedge binary, timed in the same run")
    ap.add_argument("--saturating", action="store_true",
                    help="also time dinoedge with DINOEDGE_INT8_SUMS=saturating (onnxruntime's AVX2 "
                         "int8 arithmetic, not exact), in the same run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.exit("onnxruntime is not installed: pip install onnxruntime numpy")
    binary = Path(a.binary)
    if not binary.is_file():
        sys.exit(f"{binary} not found: run `cargo build --release` first (or pass --binary)")
    if a.size is None:
        a.size = "308x308" if a.set == "depth" else "224x224"
    size = tuple(int(v) for v in a.size.lower().split("x"))
    fixtures = Path(a.fixtures)
    rows = []
    print(f"# {cpu_line()}; size {a.size}; median of {a.runs} runs after {a.warmup}")
    before = Path(a.before) if a.before else None
    head = f"{'model':28} {'threads':>7} {'onnxruntime ms':>15} {'dinoedge ms':>12} {'tract/ort':>10}"
    if before:
        head += f" {'before ms':>10} {'before/ort':>10}"
    if a.saturating:
        head += f" {'sat. ms':>8} {'sat./ort':>8}"
    print(head)
    files = {"depth": DEPTH_FILES, "dinov3": DINOV3_FILES}.get(a.set, FILES)
    if a.model:
        files = []
        for m in a.model:
            label, sep, path = m.partition("=")
            if not sep or not label or not path:
                sys.exit(f"--model {m!r}: give LABEL=PATH, e.g. --model 'int8=vits14-int8.onnx'")
            files.append((label, path))
    for label, rel in files:
        if a.only and a.only not in rel:
            continue
        path = fixtures / rel
        if not path.is_file():
            print(f"{label:28} missing: {path}")
            continue
        for t in sorted(set(a.threads)):
            ort_ms = time_ort(path, size, t, a.runs, a.warmup)
            tract_ms = time_tract(binary, path, size, t, a.runs, a.warmup)
            ratio = tract_ms / ort_ms
            row = dict(model=label, file=rel, threads=t, size=a.size, ort_ms=ort_ms, tract_ms=tract_ms, ratio=ratio)
            line = f"{label:28} {t:>7} {ort_ms:>15.1f} {tract_ms:>12.1f} {ratio:>10.2f}"
            if before:
                before_ms = time_tract(before, path, size, t, a.runs, a.warmup)
                row.update(before_ms=before_ms, before_ratio=before_ms / ort_ms)
                line += f" {before_ms:>10.1f} {before_ms / ort_ms:>10.2f}"
            if a.saturating:
                sat_ms = time_tract(binary, path, size, t, a.runs, a.warmup, sums="saturating")
                row.update(saturating_ms=sat_ms, saturating_ratio=sat_ms / ort_ms)
                line += f" {sat_ms:>8.1f} {sat_ms / ort_ms:>8.2f}"
            rows.append(row)
            print(line, flush=True)
    if a.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
