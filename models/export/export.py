#!/usr/bin/env python3
"""Export DINOv2 from Hugging Face (or torch.hub) to ONNX for dinoedge, with dynamic height and
width, so one file runs at any multiple of 14.

    pip install --index-url https://download.pytorch.org/whl/cpu torch==2.11.0
    pip install -r models/export/requirements-export.txt
    python3 models/export/export.py facebook/dinov2-small dinov2-small.onnx --verify
    python3 models/export/export.py facebook/dinov2-with-registers-small dinov2-reg-small.onnx --verify
    python3 models/export/quantize.py dinov2-small.onnx dinov2-small-int8.onnx --mode dynamic

The output has one input `pixel_values` [batch, 3, height, width] (ImageNet-normalised RGB) and
the outputs of the Hugging Face ONNX exports: `last_hidden_state` [batch, 1 + registers +
h*w, C] (after the final LayerNorm) and `pooler_output` [batch, C].

Position embeddings are interpolated to the input's patch grid inside the graph, bicubic, as in
transformers:
  * models without registers: bicubic without antialias -> ONNX Resize (cubic, a=-0.75); the
    TorchScript exporter at opset 17, like optimum and transformers.js;
  * models with registers: bicubic WITH antialias (transformers' Dinov2WithRegisters) -> ONNX
    Resize(antialias=1, cubic_coeff_a=-0.5, exclude_outside=1). The TorchScript exporter cannot
    export that operator at any opset, so these use the dynamo exporter at opset 18, with
    transformers' torch_int() kept symbolic so the grid size is not baked in at the trace size.
  * --source hub:dinov2_vits14 exports Meta's torch.hub model instead; its non-register models
    interpolate with an offset of 0.1 (scale (h+0.1)/37), so at sizes other than 518 their
    features differ from the Hugging Face export's by up to ~0.1 (both are "DINOv2").

--verify runs the export in onnxruntime at two sizes against PyTorch (max |difference| must
stay under 1e-4) and with a batch of 2.

Not run in dinoedge's CI: torch and transformers are ~1 GB to install on a 2-core runner. The
quantize script next to this one is tested there on the fixture export.
"""

import argparse
import sys
from pathlib import Path




def load(source):
    import torch

    if source.startswith("hub:"):
        name = source[4:]
        model = torch.hub.load("facebookresearch/dinov2", name)

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, pixel_values):
                out = self.m.forward_features(pixel_values)
                tokens = [out["x_norm_clstoken"][:, None]]
                if out.get("x_norm_regtokens") is not None and out["x_norm_regtokens"].shape[1] > 0:
                    tokens.append(out["x_norm_regtokens"])
                tokens.append(out["x_norm_patchtokens"])
                last = torch.cat(tokens, dim=1)
                return last, last[:, 0]

        registers = getattr(model, "num_register_tokens", 0) > 0
        return Wrap(model).eval(), registers, None

    from transformers import AutoModel

    model = AutoModel.from_pretrained(source).eval()
    registers = getattr(model.config, "num_register_tokens", 0) > 0

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            out = self.m(pixel_values=pixel_values)
            return out.last_hidden_state, out.pooler_output

    module = None
    if registers:
        import transformers.models.dinov2_with_registers.modeling_dinov2_with_registers as module
    return Wrap(model).eval(), registers, module


def export(wrap, registers, module, out, size, opset):
    import torch

    h, w = size
    x = torch.randn(1, 3, h, w)
    names = dict(input_names=["pixel_values"], output_names=["last_hidden_state", "pooler_output"])
    if not registers:
        torch.onnx.export(
            wrap, (x,), str(out), opset_version=opset or 17, dynamo=False, do_constant_folding=True,
            dynamic_axes={"pixel_values": {0: "batch_size", 2: "height", 3: "width"},
                          "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
                          "pooler_output": {0: "batch_size"}},
            **names,
        )
        return
    from torch.export import Dim

    old = getattr(module, "torch_int", None) if module else None
    if module is not None:
        # keep symbolic sizes symbolic (transformers would int() them and bake in h and w)
        module.torch_int = lambda v: int(v) if isinstance(v, (int, float)) else v
    try:
        torch.onnx.export(
            wrap, (x,), str(out), opset_version=opset or 18, dynamo=True, external_data=False,
            dynamic_shapes={"pixel_values": {0: Dim("batch_size"), 2: Dim("height"), 3: Dim("width")}},
            **names,
        )
    finally:
        if module is not None:
            module.torch_int = old


def verify(wrap, out):
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    onnx.checker.check_model(str(out))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in [(1, 3, 224, 224), (1, 3, 308, 448), (2, 3, 224, 224)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = wrap(x)[0].numpy()
        got = sess.run(["last_hidden_state"], {"pixel_values": x.numpy()})[0]
        diff = float(np.abs(ref - got).max())
        worst = max(worst, diff)
        print(f"  {shape}: max |onnxruntime - torch| = {diff:.2e}", file=sys.stderr)
    if worst > 1e-4:
        sys.exit(f"error: the export differs from PyTorch by {worst:.2e} (> 1e-4)")


def parse_size(s):
    h, w = (int(v) for v in s.lower().split("x"))
    if h % 14 or w % 14:
        raise argparse.ArgumentTypeError("both sides must be multiples of 14")
    return h, w


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a Hugging Face model id (facebook/dinov2-small, facebook/dinov2-with-registers-base) "
                                   "or hub:NAME for torch.hub (hub:dinov2_vits14, hub:dinov2_vits14_reg)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--trace-size", type=parse_size, default=(224, 224), help="size of the example input (default 224x224)")
    ap.add_argument("--opset", type=int, help="ONNX opset (default 17, or 18 for register models)")
    ap.add_argument("--verify", action="store_true", help="check against PyTorch in onnxruntime")
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("error: torch is not installed; see the top of this file for the two pip commands")
    wrap, registers, module = load(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting {args.source} ({'with' if registers else 'without'} registers) -> {args.out}", file=sys.stderr)
    export(wrap, registers, module, args.out, args.trace_size, args.opset)
    if args.verify:
        verify(wrap, args.out)
    print(f"done: {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
