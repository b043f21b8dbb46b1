#!/bin/sh
# The dinoedge / onnxruntime table on this board (Raspberry Pi, Jetson, mini-PC): the same ONNX
# files, both runtimes in the same run, 1 thread and every core, at 224x224 and 308x448.
#
#   benches/board.sh                      # fetches vits14, vits14-int8, vits14-uint8, times them
#   benches/board.sh a.onnx b.onnx        # your own files instead
#
# DINOEDGE   the binary (default: `dinoedge` on PATH, else target/release/dinoedge)
# ORT_VENV   where onnxruntime and numpy are installed (default ~/.cache/dinoedge/ort-venv;
#            pip's aarch64 wheel on a Pi or Jetson, the CPU provider)
# SIZES      default "224x224 308x448";  RUNS  default 10
#
# Under qemu the figures mean nothing (an emulated core): there only correctness counts.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${DINOEDGE:-$(command -v dinoedge || echo "$here/../target/release/dinoedge")}
[ -x "$bin" ] || { echo "no dinoedge binary at $bin: install the .deb, or cargo build --release, or set DINOEDGE" >&2; exit 1; }
venv=${ORT_VENV:-$HOME/.cache/dinoedge/ort-venv}
if ! "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
    echo "installing onnxruntime and numpy into $venv (once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet onnxruntime numpy
fi
models=""
if [ $# -eq 0 ]; then
    "$bin" fetch vits14 vits14-int8 vits14-uint8 >&2
    for name in vits14 vits14-int8 vits14-uint8; do
        path=$("$bin" models --json | "$venv/bin/python" -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    e = json.loads(line)
    if e["name"] == name and e["cached"]:
        print(e["cached"])
' "$name")
        [ -n "$path" ] || { echo "$name is not in the model cache after fetching" >&2; exit 1; }
        models="$models --model $name=$path"
    done
else
    for f in "$@"; do
        [ -f "$f" ] || { echo "$f: no such file" >&2; exit 1; }
        models="$models --model $(basename "$f" .onnx)=$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
    done
fi
echo "# $(uname -m), $(nproc) cores, $("$bin" --version)"
[ -r /sys/firmware/devicetree/base/model ] && echo "# board: $(tr -d '\0' < /sys/firmware/devicetree/base/model)"
for size in ${SIZES:-224x224 308x448}; do
    # shellcheck disable=SC2086  # $models is a list of arguments
    "$venv/bin/python" "$here/ort_compare.py" --binary "$bin" --size "$size" --runs "${RUNS:-10}" $models
done
