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

`--rounds R` (for shared or throttling machines, whose speed drifts by more than the change
being measured): each file and thread count is timed in R rounds, each round every runtime in
turn (`--runs` runs each), and the ratios are taken round by round, so that a slow minute slows
both sides of the same ratio. The table then gives each runtime's median over the rounds, the
median of the per-round ratios and their range (lowest-highest), and with `--before` the median
per-round ratio of the two dinoedge builds (`new/before`): below 1.0, the new build is faster.
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


class OrtTimer:
    """One onnxruntime session on `path`, timed again at each call (the session is made once)."""

    def __init__(self, path, size, threads):
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        h, w = size
        self.x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
        self.name = self.sess.get_inputs()[0].name

    def __call__(self, runs, warmup):
        """The median of `runs` timed runs after `warmup` untimed ones, in ms."""
        for _ in range(warmup):
            self.sess.run(None, {self.name: self.x})
        ms = []
        for _ in range(runs):
            t = time.perf_counter()
            self.sess.run(None, {self.name: self.x})
            ms.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ms)


def rounds_of(timers, rounds, runs, warmup):
    """Each timer's median, `rounds` times, the timers in turn within a round: a list of
    per-round lists, one value per timer."""
    return [[t(runs, warmup) for t in timers] for _ in range(rounds)]


def spread(values):
    """`median` or, over several values, `median (lowest-highest)`."""
    m = statistics.median(values)
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ({min(values):.2f}-{max(values):.2f})"


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
    ap.add_argument("--rounds", type=int, default=1,
                    help="time each file in this many rounds, the runtimes in turn in each, and "
                         "take the ratios round by round (for machines whose speed drifts)")
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
    if a.rounds < 1:
        sys.exit("--rounds: at least 1")
    rounds_note = f"; {a.rounds} rounds, ratios per round (median, lowest-highest)" if a.rounds > 1 else ""
    print(f"# {cpu_line()}; size {a.size}; median of {a.runs} runs after {a.warmup}{rounds_note}")
    before = Path(a.before) if a.before else None
    w = 18 if a.rounds > 1 else 10  # a ratio column: room for its range
    head = f"{'model':28} {'threads':>7} {'onnxruntime ms':>15} {'dinoedge ms':>12} {'tract/ort':>{w}}"
    if before:
        head += f" {'before ms':>10} {'before/ort':>{w}} {'new/before':>{w}}"
    if a.saturating:
        head += f" {'sat. ms':>8} {'sat./ort':>{w}}"
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
            def dinoedge(bin_, sums="exact"):
                return lambda runs, warmup: time_tract(bin_, path, size, t, runs, warmup, sums)

            timers = [OrtTimer(path, size, t), dinoedge(binary)]
            if before:
                timers.append(dinoedge(before))
            if a.saturating:
                timers.append(dinoedge(binary, "saturating"))
            per_round = rounds_of(timers, a.rounds, a.runs, a.warmup)
            med = [statistics.median(r[i] for r in per_round) for i in range(len(timers))]
            ratios = [r[1] / r[0] for r in per_round]
            ort_ms, tract_ms = med[0], med[1]
            ratio = statistics.median(ratios)
            row = dict(model=label, file=rel, threads=t, size=a.size, ort_ms=ort_ms, tract_ms=tract_ms,
                       ratio=ratio, rounds=a.rounds, ratios=ratios)
            line = f"{label:28} {t:>7} {ort_ms:>15.1f} {tract_ms:>12.1f} {spread(ratios):>{w}}"
            if before:
                before_ms = med[2]
                before_ratios = [r[2] / r[0] for r in per_round]
                new_over_before = [r[1] / r[2] for r in per_round]
                row.update(before_ms=before_ms, before_ratio=statistics.median(before_ratios),
                           new_over_before=statistics.median(new_over_before))
                line += (f" {before_ms:>10.1f} {spread(before_ratios):>{w}}"
                         f" {spread(new_over_before):>{w}}")
            if a.saturating:
                sat_ms = med[-1]
                sat_ratios = [r[-1] / r[0] for r in per_round]
                row.update(saturating_ms=sat_ms, saturating_ratio=statistics.median(sat_ratios))
                line += f" {sat_ms:>8.1f} {spread(sat_ratios):>{w}}"
            rows.append(row)
            print(line, flush=True)
    if a.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
