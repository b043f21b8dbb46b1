#!/usr/bin/env python3
"""Where a dinoedge binary's bytes go: its sections, and its code and data by crate.

    python3 packaging/size.py target/aarch64/aarch64-unknown-linux-gnu/ci-arm/dinoedge [--top 15]

The crates need the binary's symbol table (`release` and `ci-arm` strip it: link it again
with `cargo rustc --release --bin dinoedge -- -C strip=none`); a stripped one gets its sections. A function is counted under the crate its demangled path starts with: a generic function
is counted where it was written (`rayon_core::job::StackJob<…>` is rayon-core's, though tract
instantiated it); `core`, `alloc` and `std` are the standard library's generics, instantiated for
the other crates' types. Uses the binutils of the binary's architecture (`nm`, `readelf`, or
their `aarch64-linux-gnu-` / `arm-linux-gnueabihf-` versions).
"""

import argparse
import collections
import re
import shutil
import subprocess
import sys

PREFIXES = {"AArch64": "aarch64-linux-gnu-", "ARM": "arm-linux-gnueabihf-"}
IDENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def tool(name, machine):
    """The binutils tool for this machine: the host's, or the cross one."""
    cross = PREFIXES.get(machine, "") + name
    return cross if shutil.which(cross) else name


def machine_of(path):
    out = subprocess.run(["readelf", "-h", path], capture_output=True, text=True, check=True)
    m = re.search(r"Machine:\s+(.*)", out.stdout)
    return m.group(1).strip() if m else ""


def sections(path, readelf):
    """Allocated sections' sizes, largest first."""
    out = subprocess.run([readelf, "-W", "-S", path], capture_output=True, text=True, check=True)
    sizes = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if m and "A" in m.group(3):
            sizes[m.group(1)] = int(m.group(2), 16)
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def crate_of(symbol):
    """The crate a demangled symbol's path starts with."""
    s = symbol
    for junk in ("<", "&", "*const ", "*mut ", "mut ", "dyn ", "[", "("):
        s = s.replace(junk, "")
    m = IDENT.match(s)
    return m.group(1) if m else "(C, assembly and unnamed)"


def by_crate(path, nm):
    out = subprocess.run([nm, "-S", "-C", "--size-sort", path], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    sizes = collections.Counter()
    for line in out.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTrRdDbB":
            sizes[crate_of(parts[3])] += int(parts[1], 16)
    return sizes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--top", type=int, default=15, help="crates to list (default 15)")
    args = ap.parse_args()
    machine = machine_of(args.binary)
    secs = sections(args.binary, tool("readelf", machine))
    total = sum(size for _, size in secs)
    print(f"   sections ({machine}): " + ", ".join(f"{n} {s / 1e6:.1f} MB" for n, s in secs[:5]))
    sizes = by_crate(args.binary, tool("nm", machine))
    if sizes is None:
        print("   no symbol table (stripped): for the crates, link it again with `-C strip=none`, e.g.")
        print("   cargo rustc --release --bin dinoedge -- -C strip=none")
        return
    named = sum(sizes.values())
    print(f"   symbols {named / 1e6:.1f} MB of {total / 1e6:.1f} MB loaded; by crate:")
    for crate, size in sizes.most_common(args.top):
        print(f"   {size / 1e6:7.2f} MB  {crate}")
    rest = named - sum(size for _, size in sizes.most_common(args.top))
    print(f"   {rest / 1e6:7.2f} MB  the other {max(len(sizes) - args.top, 0)} crates")


if __name__ == "__main__":
    main()
