#!/usr/bin/env bash
# Build dinoedge_<version>_<arch>.deb from a built `dinoedge` binary with dpkg-deb, Debian's
# own packaging tool (no cargo plugin to build first):
#
#   packaging/deb/build.sh target/release/dinoedge amd64 [OUT_DIR]
#   packaging/deb/build.sh target/aarch64-unknown-linux-gnu/release/dinoedge arm64
#
# The package holds the binary (/usr/bin/dinoedge), a systemd unit (disabled until
# `systemctl enable dinoedge`; it runs `dinoedge run --board auto`), the board folders of
# firmware-configs/ (profiles, units, boot lines, READMEs) under /usr/share/dinoedge, bash/zsh/fish
# completions and man pages generated from the binary's own command line (`dinoedge generate`),
# and maintainer scripts that create the service user `dinoedge` and its model and cache
# directories. Its Depends come from the binary's dynamic section: libc6 at least the newest
# GLIBC_ version the binary asks for, so dpkg refuses it where the C library is older.
#
# An arm64 binary built on x86 is run under qemu-aarch64 to generate its pages. An unstripped
# binary is stripped (strip, or aarch64-linux-gnu-strip for arm64). DEB_COMPRESS picks
# dpkg-deb's compressor (xz by default; CI uses gzip to save minutes).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BINARY amd64|arm64|armhf [OUT_DIR]" >&2
  exit 2
fi
BIN="$1"
ARCH="$2"
OUT="${3:-target/deb}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
[ -f "$BIN" ] || { echo "error: no binary at $BIN (build it first)" >&2; exit 1; }

# the ELF machine must be the package's architecture
machine=$(readelf -h "$BIN" | sed -n 's/^ *Machine: *//p')
case "$ARCH" in
  amd64) want="Advanced Micro Devices X86-64"; host=x86_64; strip_tool=strip ;;
  arm64) want="AArch64"; host=aarch64; strip_tool=aarch64-linux-gnu-strip ;;
  armhf) want="ARM"; host=armv7l; strip_tool=arm-linux-gnueabihf-strip ;;
  *) echo "error: architecture $ARCH: amd64, arm64 or armhf" >&2; exit 2 ;;
esac
if [ "$machine" != "$want" ]; then
  echo "error: $BIN is a $machine binary, not $ARCH ($want)" >&2
  exit 1
fi
runner=()
if [ "$(uname -m)" != "$host" ]; then
  case "$ARCH" in
    arm64) runner=(qemu-aarch64) ;;
    armhf) runner=(qemu-arm) ;;
    amd64) runner=(qemu-x86_64) ;;
  esac
  command -v "${runner[0]}" >/dev/null ||
    { echo "error: ${runner[0]} is needed to run the $ARCH binary here (its man pages)" >&2; exit 1; }
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[ -n "$version" ] || { echo "error: no version in $ROOT/Cargo.toml" >&2; exit 1; }

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
install -D -m 755 "$BIN" "$STAGE/usr/bin/dinoedge"
if readelf -S "$STAGE/usr/bin/dinoedge" | grep -q '\.symtab'; then
  if command -v "$strip_tool" >/dev/null; then
    "$strip_tool" "$STAGE/usr/bin/dinoedge"
  else
    echo "note: $strip_tool not found: the binary is packaged unstripped" >&2
  fi
fi
BIN_IN="$STAGE/usr/bin/dinoedge"

# man pages and completions, from the binary's own command line
man="$STAGE/usr/share/man/man1"
mkdir -p "$man"
"${runner[@]}" "$BIN_IN" generate man --out "$man"
gzip -9n "$man"/*.1
comp() { "${runner[@]}" "$BIN_IN" generate "complete-$1"; }
install -d "$STAGE/usr/share/bash-completion/completions" "$STAGE/usr/share/zsh/vendor-completions" \
  "$STAGE/usr/share/fish/vendor_completions.d"
comp bash >"$STAGE/usr/share/bash-completion/completions/dinoedge"
comp zsh >"$STAGE/usr/share/zsh/vendor-completions/_dinoedge"
comp fish >"$STAGE/usr/share/fish/vendor_completions.d/dinoedge.fish"

# the unit (disabled until enabled) and the boards' folders
install -D -m 644 "$ROOT/packaging/deb/dinoedge.service" "$STAGE/lib/systemd/system/dinoedge.service"
mkdir -p "$STAGE/usr/share/dinoedge"
cp -r "$ROOT/firmware-configs" "$STAGE/usr/share/dinoedge/firmware-configs"
install -D -m 644 "$ROOT/README.md" "$STAGE/usr/share/doc/dinoedge/README.md"
cat >"$STAGE/usr/share/doc/dinoedge/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dinoedge
Source: https://github.com/dinoedge/dinoedge

Files: *
License: MIT or Apache-2.0
COPYRIGHT

# Depends, from the libraries the binary links and the newest GLIBC_ symbol version it asks for
needed=$(readelf -d "$BIN_IN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
glibc=$(readelf -W --dyn-syms "$BIN_IN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
depends="libc6 (>= ${glibc:-2.17})"
for lib in $needed; do
  case "$lib" in
    libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | librt.so.1 | ld-linux*.so.*) ;;
    libgcc_s.so.1) depends="$depends, libgcc-s1" ;;
    *) echo "error: the binary links $lib, which this script does not know the package of" >&2; exit 1 ;;
  esac
done

install -d "$STAGE/DEBIAN"
for s in postinst prerm postrm; do
  install -m 755 "$ROOT/packaging/deb/$s" "$STAGE/DEBIAN/$s"
done
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: dinoedge
Version: $version
Architecture: $ARCH
Maintainer: dinoedge developers <dinoedge@users.noreply.github.com>
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Depends: $depends, adduser
Suggests: ffmpeg, rpicam-apps
Section: video
Priority: optional
Homepage: https://github.com/dinoedge/dinoedge
Description: live DINOv2 and Depth Anything V2 perception on edge boards
 dinoedge runs DINOv2, DINOv3 and Depth Anything V2 ONNX models (fp32 and int8) on the CPU of
 a Raspberry Pi, a Jetson or an x86 mini-PC: dense features, depth, segmentation and point
 clouds from cameras, files, streams and MCAP recordings, to files, JSON lines, MCAP and a live
 view in the browser. "dinoedge run --board auto" takes the board's profile; the systemd unit
 runs it from boot once enabled.
CONTROL

mkdir -p "$OUT"
deb="$OUT/dinoedge_${version}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$STAGE" "$deb" >/dev/null
echo "$deb: $(stat -c %s "$deb") bytes; binary $(stat -c %s "$BIN_IN") bytes; Depends: $depends"
