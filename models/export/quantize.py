#!/usr/bin/env python3
"""Quantize a DINOv2 ONNX export to int8 for dinoedge.

Modes:
  dynamic     int8 weights, activations quantized at run time (DynamicQuantizeLinear):
              no calibration images needed; ~4x smaller; the Hugging Face "int8" variant.
  dynamic-u8  the same with uint8 weights (transformers.js "q8", `model_quantized.onnx`).
  static      QDQ: int8 weights per output channel and int8 activations whose ranges are
              calibrated on YOUR images (a folder of JPEG/PNG), at the size you will run.

--reduce-range quantizes the weights to 7 bits (onnxruntime's `reduce_range`: int8 in -64..64,
uint8 in 0..127). On x86 CPUs with AVX2 but no AVX-512 VNNI (most mini-PCs) dinoedge multiplies
such weights as bytes, exactly (about 1.3x on the matrix products against weights it must widen);
the weights keep half the levels, so check the result on your images (`dinoedge compare`).
8-bit weights of a trained model, one scale per matrix (the dynamic modes' default), mostly run
as bytes anyway; per-channel ones (static mode, --per-channel) do not, so there it matters most.

--per-channel (dynamic modes) gives each output column of a weight matrix its own scale (and,
for uint8, zero point) instead of one per matrix: closer to fp32, the same speed in dinoedge.

Examples:
  python3 quantize.py model.onnx model_int8.onnx --mode dynamic
  python3 quantize.py model.onnx model_int8_7bit.onnx --mode dynamic --reduce-range --per-channel
  python3 quantize.py model.onnx model_qdq.onnx --mode static --images ~/frames --size 224x224
  python3 quantize.py model.onnx model_qdq_7bit.onnx --mode static --images ~/frames --reduce-range

  # and then: how far is it from the original, on your images?
  dinoedge compare model.onnx model_qdq.onnx ~/frames/*.jpg --head vits14-nyu-linear

--check IN.npy OUT.npy runs the quantized model in onnxruntime on a [1,3,H,W] float32 tensor and
saves its last_hidden_state (dinoedge's tests compare tract against it). The last line printed
is a JSON summary (sizes, operator counts).
"""

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def parse_size(s):
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected HxW, e.g. 224x224")
    if h % 14 or w % 14 or h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"{s}: both sides must be positive multiples of 14")
    return h, w


def preprocess(path, size):
    """An image as dinoedge feeds it to the backbone: RGB, stretched to HxW with a bicubic
    filter, scaled to 0..1 and normalised with ImageNet's mean and std, NCHW float32."""
    import numpy as np
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    h, w = size
    img = img.resize((w, h), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def op_counts(path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return dict(sorted(collections.Counter(n.op_type for n in m.graph.node).items()))


def input_name(path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    if len(names) != 1:
        sys.exit(f"error: {path}: expected one image input, found {names}")
    return names[0]


def calibration_images(folder, pattern, limit):
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    if not Path(folder).is_dir():
        sys.exit(f"error: {folder}: not a folder")
    files = sorted(p for p in Path(folder).glob(pattern) if p.suffix.lower() in exts)
    if not files:
        sys.exit(f"error: no JPEG/PNG images matching {pattern!r} in {folder} to calibrate on")
    return files[:limit] if limit else files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="fp32 ONNX export (dinov2 with dynamic height/width)")
    ap.add_argument("out", type=Path, help="where the int8 model goes")
    ap.add_argument("--mode", choices=["dynamic", "dynamic-u8", "static"], default="dynamic")
    ap.add_argument("--images", type=Path, help="static: folder of calibration images (yours)")
    ap.add_argument("--pattern", default="*", help="static: which files of the folder (default *; e.g. '*_image.png')")
    ap.add_argument("--size", type=parse_size, default=(224, 224), help="static: HxW to calibrate at (default 224x224)")
    ap.add_argument("--calibration", type=int, default=32, help="static: at most this many images (default 32; 0 = all)")
    ap.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                    help="static: how activation ranges are chosen (default minmax)")
    ap.add_argument("--check", nargs=2, type=Path, metavar=("IN.npy", "OUT.npy"),
                    help="run the result in onnxruntime on IN and save last_hidden_state to OUT")
    ap.add_argument("--reduce-range", action="store_true",
                    help="7-bit weights (a faster exact kernel on AVX2-only x86; half the levels)")
    ap.add_argument("--per-channel", action="store_true",
                    help="dynamic: one weight scale per output column (closer to fp32)")
    ap.add_argument("--force", action="store_true", help="overwrite OUT")
    args = ap.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_dynamic, quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        sys.exit(f"error: {e}; install the pinned tools: pip install -r {Path(__file__).with_name('requirements.txt')}")

    if not args.model.is_file():
        sys.exit(f"error: {args.model}: no such file")
    if args.out.exists() and not args.force:
        sys.exit(f"error: {args.out} exists (pass --force to overwrite)")
    if args.mode == "static" and args.per_channel:
        sys.exit("error: --per-channel is for the dynamic modes (static weights are per channel already)")
    if args.mode == "static" and not args.images:
        sys.exit("error: --mode static calibrates on your images: pass --images FOLDER")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"quantizing {args.model} ({args.model.stat().st_size / 1e6:.1f} MB) -> {args.out} [{args.mode}]", file=sys.stderr)

    if args.mode in ("dynamic", "dynamic-u8"):
        # every Linear (MatMul with constant weights) and the patch embedding (Conv); the
        # attention products QK^T and AV stay fp32 (both inputs are activations)
        quantize_dynamic(
            str(args.model), str(args.out),
            weight_type=QuantType.QInt8 if args.mode == "dynamic" else QuantType.QUInt8,
            per_channel=args.per_channel, reduce_range=args.reduce_range,
            extra_options={"MatMulConstBOnly": True},
        )
        recipe = f"quantize_dynamic(weight_type={'QInt8' if args.mode == 'dynamic' else 'QUInt8'}, per_channel={args.per_channel}, reduce_range={args.reduce_range}, MatMulConstBOnly)"
    else:
        files = calibration_images(args.images, args.pattern, args.calibration)
        name = input_name(args.model)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.todo = list(files)

            def get_next(self):
                if not self.todo:
                    return None
                p = self.todo.pop(0)
                print(f"  calibrating on {p.name}", file=sys.stderr)
                return {name: preprocess(p, args.size)}

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[args.method]
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(tmp) / "pre.onnx"
            # shape inference only: the graph stays as exported (dynamic height/width kept)
            quant_pre_process(str(args.model), str(pre), skip_optimization=True, skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(args.out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Conv"], calibrate_method=method,
                reduce_range=args.reduce_range,
            )
        recipe = (f"quant_pre_process + quantize_static(QDQ, per_channel=True, S8S8, MatMul+Conv, {args.method}, "
                  f"reduce_range={args.reduce_range}) "
                  f"on {len(files)} images at {args.size[0]}x{args.size[1]}")

    summary = {
        "model": str(args.model), "out": str(args.out), "mode": args.mode, "recipe": recipe,
        "bytes_in": args.model.stat().st_size, "bytes_out": args.out.stat().st_size,
        "ops": op_counts(args.out), "onnxruntime": ort.__version__,
    }
    if args.check:
        src, dst = args.check
        x = np.load(src).astype(np.float32)
        so = ort.SessionOptions()
        sess = ort.InferenceSession(str(args.out), so, providers=["CPUExecutionProvider"])
        y = sess.run(["last_hidden_state"], {sess.get_inputs()[0].name: x})[0]
        np.save(dst, y)
        summary["check"] = {"input": str(src), "output": str(dst), "shape": list(y.shape)}
    print(f"done: {summary['bytes_out'] / 1e6:.1f} MB ({summary['bytes_out'] / summary['bytes_in']:.0%} of the original)", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
