# Source this file to build binaries that run on glibc 2.31 (Pi OS bullseye, JetPack 5 /
# Ubuntu 20.04) from any newer Linux, with cargo-zigbuild: zig links against the glibc 2.31
# symbol versions instead of the build machine's C library.
#
#   . packaging/zig/env.sh
#   cargo zigbuild --release --target aarch64-unknown-linux-gnu.2.31 --features camera,rpi
#
# (CI builds aarch64 this way; for x86_64 it relinks the host's build with `packaging/zig/cc`,
# below: `--target x86_64-unknown-linux-gnu.2.31` should work too but has not been run here.)
#
# It installs the two pinned tools from the Python package index (`ziglang`, the zig compiler as
# a wheel, and `cargo-zigbuild`) into a virtual environment, once, and puts it first on the PATH.
# DINOEDGE_ZIG_VENV picks the environment's folder (default target/zig-venv).
#
# `packaging/zig/cc` is the linker alone, for relinking a binary without `--target` (CI's amd64
# package: `cargo rustc --bin dinoedge -- -C linker=packaging/zig/cc`).

DINOEDGE_ZIG_VENV="${DINOEDGE_ZIG_VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/zig-venv}"
export DINOEDGE_ZIG_VENV
# pinned: a newer zig may change which glibc versions and linker flags it accepts
DINOEDGE_ZIG_TOOLS=(ziglang==0.17.1 cargo-zigbuild==0.24.1)

if ! "$DINOEDGE_ZIG_VENV/bin/python" -m pip show -q ziglang cargo-zigbuild >/dev/null 2>&1; then
  echo "== installing ${DINOEDGE_ZIG_TOOLS[*]} into $DINOEDGE_ZIG_VENV" >&2
  python3 -m venv "$DINOEDGE_ZIG_VENV" &&
    "$DINOEDGE_ZIG_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "${DINOEDGE_ZIG_TOOLS[@]}" ||
    { echo "error: could not install ${DINOEDGE_ZIG_TOOLS[*]} (pip; needs the network once)" >&2; return 1; }
fi
# cargo-zigbuild finds zig as `python -m ziglang` through the environment's python
export PATH="$DINOEDGE_ZIG_VENV/bin:$PATH"
export CARGO_ZIGBUILD_ZIG_COMMAND="$DINOEDGE_ZIG_VENV/bin/python"
export CARGO_ZIGBUILD_ZIG_COMMAND_ARGS="-m ziglang"
# the glibc the binaries are linked against (`.2.31` in the target names above)
export DINOEDGE_GLIBC="${DINOEDGE_GLIBC:-2.31}"
