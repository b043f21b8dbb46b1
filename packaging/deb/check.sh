#!/usr/bin/env bash
# Check a dinoedge .deb: its control fields, that every part is where Debian and systemd look
# for it, that the binary inside runs (`--version`, under qemu for arm64 on x86), and its size
# and newest GLIBC_ symbol version (printed, and no newer than DINOEDGE_MAX_GLIBC, 2.31 by
# default: the C library of Pi OS bullseye and JetPack 5; `DINOEDGE_MAX_GLIBC=` skips it). With --install (root, amd64 on amd64): `dpkg -i`,
# `dinoedge --version` from /usr/bin, the service user and directories, the unit as systemd
# would read it, then `dpkg --purge`.
#
#   packaging/deb/check.sh target/deb/dinoedge_0.1.0_arm64.deb
#   packaging/deb/check.sh target/deb/dinoedge_0.1.0_amd64.deb --install
set -euo pipefail
DEB="$1"
INSTALL="${2:-}"
fail() { echo "error: $DEB: $*" >&2; exit 1; }

arch=$(dpkg-deb -f "$DEB" Architecture)
echo "== $DEB ($(stat -c %s "$DEB") bytes)"
dpkg-deb -f "$DEB" Package Version Architecture Depends Installed-Size
contents=$(dpkg-deb -c "$DEB")
list=$(awk '{print $NF}' <<<"$contents")
for p in ./usr/bin/dinoedge ./lib/systemd/system/dinoedge.service \
  ./usr/share/man/man1/dinoedge.1.gz ./usr/share/man/man1/dinoedge-run.1.gz \
  ./usr/share/bash-completion/completions/dinoedge ./usr/share/zsh/vendor-completions/_dinoedge \
  ./usr/share/fish/vendor_completions.d/dinoedge.fish ./usr/share/doc/dinoedge/copyright \
  ./usr/share/dinoedge/firmware-configs/rpi5/profile.toml \
  ./usr/share/dinoedge/firmware-configs/rpi5/profile-da2.toml \
  ./usr/share/dinoedge/firmware-configs/rpi4/profile.toml \
  ./usr/share/dinoedge/firmware-configs/jetson-orin-nano/profile.toml \
  ./usr/share/dinoedge/firmware-configs/x86/profile.toml; do
  grep -qxF "$p" <<<"$list" || fail "$p is missing"
done
grep -q '^-rwxr-xr-x root/root .* ./usr/bin/dinoedge$' <<<"$contents" ||
  fail "/usr/bin/dinoedge is not an executable owned by root"
echo "   $(grep -c . <<<"$list") entries; binary, unit, man pages, completions and board profiles in place"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$DEB" "$tmp"
dpkg-deb -e "$DEB" "$tmp/DEBIAN"
for s in postinst prerm postrm; do
  sh -n "$tmp/DEBIAN/$s" || fail "$s is not valid shell"
done
bin="$tmp/usr/bin/dinoedge"
runner=()
case "$arch" in
  arm64) [ "$(uname -m)" = aarch64 ] || runner=(qemu-aarch64) ;;
  amd64) [ "$(uname -m)" = x86_64 ] || runner=(qemu-x86_64) ;;
esac
"${runner[@]}" "$bin" --version
grep -q '^ExecStart=/usr/bin/dinoedge run --board auto' "$tmp/lib/systemd/system/dinoedge.service" ||
  fail "the unit does not start /usr/bin/dinoedge"
glibc=$(readelf -W --dyn-syms "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "   binary $(stat -c %s "$bin") bytes ($(( $(stat -c %s "$bin") / 1048576 )) MiB, stripped); newest GLIBC_ symbol version: $glibc"
max_glibc="${DINOEDGE_MAX_GLIBC-2.31}"
if [ -n "$max_glibc" ] && [ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -1)" != "$max_glibc" ]; then
  fail "the binary needs glibc $glibc, newer than $max_glibc (Pi OS bullseye, JetPack 5): link it with zig (packaging/zig/env.sh)"
fi

if [ "$INSTALL" = --install ]; then
  [ "$(id -u)" = 0 ] || fail "--install needs root"
  echo "== dpkg -i $DEB"
  dpkg -i "$DEB" >/dev/null
  trap 'dpkg --purge dinoedge >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
  [ "$(command -v dinoedge)" = /usr/bin/dinoedge ] || fail "dinoedge is not /usr/bin/dinoedge on the PATH"
  dinoedge --version
  getent passwd dinoedge >/dev/null || fail "postinst made no user dinoedge"
  for d in /var/lib/dinoedge/models /var/cache/dinoedge; do
    [ "$(stat -c %U "$d")" = dinoedge ] || fail "$d is not the service user's"
  done
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/dinoedge.service 2>&1 | grep -v '^$' || true
  fi
  man -w dinoedge-run >/dev/null 2>&1 || [ -f /usr/share/man/man1/dinoedge-run.1.gz ] || fail "no man page"
  dpkg --purge dinoedge >/dev/null
  [ ! -e /usr/bin/dinoedge ] || fail "dpkg --purge left /usr/bin/dinoedge"
  ! getent passwd dinoedge >/dev/null || fail "dpkg --purge left the user dinoedge"
  echo "   installed, ran from /usr/bin, made the user and its directories, purged cleanly"
fi
