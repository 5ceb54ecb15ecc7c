#!/usr/bin/env python3
"""Carries a hot.order over to a build whose symbol names changed only in their hashes.

A function's mangled name carries hashes that change when its crate's dependencies change
(the legacy `17h<hash>E` suffix, the `Cs<hash>_` crate ids of v0 names) and numbers that
change with any code change (`.1234` copies under LTO). A hot.order naming the old names
leaves those functions among cold code. This rewrites ORDER in place: every name the binary
lacks becomes the binary's symbols that are the same name but for hashes and numbers (all of
them, in order, when several are). Names with no such symbol are kept, for a later build.
Usage: python3 scripts/hot-order-rename.py BINARY ORDER   (after a release build; then
build again to link with the rewritten order)
"""
import re
import subprocess
import sys

LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E$")
CRATE_ID = re.compile(r"Cs[0-9A-Za-z]+_")
COPY_NUMBER = re.compile(r"\.[0-9]+$")


def key(name):
    name = COPY_NUMBER.sub("", name)
    name = LEGACY_HASH.sub("E", name)
    return CRATE_ID.sub("Cs_", name)


def main():
    binary, order = sys.argv[1], sys.argv[2]
    out = subprocess.run(
        ["nm", "--defined-only", "--format=just-symbols", binary],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    have = set(out)
    by_key = {}
    for sym in out:
        by_key.setdefault(key(sym), []).append(sym)
    names = open(order).read().split()
    result, seen, renamed = [], set(), 0
    for name in names:
        found = [name] if name in have else by_key.get(key(name), [name])
        renamed += found != [name]
        for sym in found:
            if sym not in seen:
                seen.add(sym)
                result.append(sym)
    with open(order, "w") as f:
        f.write("\n".join(result) + "\n")
    missing = sum(1 for n in result if n not in have)
    print(f"{order}: {renamed} names carried over, {missing} still unknown, {len(result)} in all")


main()
