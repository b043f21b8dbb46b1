#!/usr/bin/env bash
# What building every feature and running every test needs, on Debian, Ubuntu or Raspberry Pi
# OS, in one command: `bash scripts/setup.sh` (apt through sudo; run from the checkout).
#   ffmpeg                the ffmpeg sources (any video file or stream) and their tests
#   chromium, -driver     the live view's browser test (skipped without them)
#   target/ci-venv        onnxruntime and friends (models/export/requirements.txt) for the
#                         quantize script's test and benches/ort_compare.py; `--no-python` skips it
# Rust itself comes from https://rustup.rs (the workspace needs 1.91 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

python=1
for arg in "$@"; do
  case "$arg" in
    --no-python) python=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

as_root=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  as_root=(sudo)
fi
command -v apt-get >/dev/null || {
  echo "error: no apt-get: install ffmpeg and chromium with this system's package manager" >&2
  exit 1
}
packages=(ffmpeg python3-venv)
# chromium's package name differs between Debian and Ubuntu; the browser test is optional
if apt-cache show chromium-driver >/dev/null 2>&1; then
  packages+=(chromium chromium-driver)
else
  echo "note: no chromium-driver package here: the live view's browser test will be skipped"
fi
echo "installing ${packages[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"

if [ "$python" = 1 ]; then
  echo "installing models/export/requirements.txt into target/ci-venv"
  python3 -m venv target/ci-venv
  target/ci-venv/bin/pip install -q --disable-pip-version-check -r models/export/requirements.txt
  echo "for the quantize test: export DINOEDGE_PYTHON=$PWD/target/ci-venv/bin/python"
fi
echo "done: cargo test --workspace --features camera,rpi,cuda"
