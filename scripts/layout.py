"""The symbol work of scripts/layout.sh, over the kernel's uprobes (tracefs).

register EXE GROUP MAP   a uprobe on every function of EXE, as events GROUP/GROUP_<N>; MAP
                         keeps which function each event is
hits GROUP MAP           the functions whose uprobe fired, one per line
touched EXE PID ORDER    the functions not in ORDER on pages of EXE's code that PID has mapped
                         (run with readahead off and EXE out of the page cache, these pages
                         are the ones it touched: what uprobes missed, such as glibc's
                         AVX-512 string functions, which uprobes cannot probe)
order FIRST... -- ALL    the names in the FIRST files, then those of ALL not yet named
"""

import os
import struct
import subprocess
import sys

TRACING = "/sys/kernel/tracing"


def functions(exe):
    """(file offset, name) of each function in EXE, one name per address."""
    segments = []
    for line in subprocess.run(
        ["readelf", "-lW", exe], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        p = line.split()
        if p and p[0] == "LOAD" and "E" in p[6:-1]:
            segments.append((int(p[1], 16), int(p[2], 16), int(p[4], 16)))
    by_addr = {}
    for line in subprocess.run(
        ["nm", "--defined-only", exe], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "tTwW":
            by_addr.setdefault(int(p[0], 16), p[2])
    for addr, name in sorted(by_addr.items()):
        for offset, vaddr, size in segments:
            if vaddr <= addr < vaddr + size:
                yield addr - vaddr + offset, name


def register(exe, group, map_file):
    exe = os.path.realpath(exe)
    fd = os.open(f"{TRACING}/uprobe_events", os.O_WRONLY | os.O_APPEND)
    with open(map_file, "w") as out:
        for n, (offset, name) in enumerate(functions(exe)):
            os.write(fd, f"p:{group}/{group}_{n} {exe}:{offset:#x}\n".encode())
            out.write(f"{group}_{n} {name}\n")
    os.close(fd)


def hits(group, map_file):
    with open(map_file) as f:
        names = dict(line.split() for line in f)
    # uprobe_profile: "  PATH  EVENT  HITS" (some kernels write GROUP/EVENT)
    with open(f"{TRACING}/uprobe_profile") as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and p[2] != "0":
                event = p[1].rpartition("/")[2]
                if event in names:
                    print(names[event])


def touched(exe, pid, order_file):
    real = os.path.realpath(exe)
    with open(order_file) as f:
        known = {line.strip() for line in f}
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            p = line.split()
            if len(p) >= 6 and p[1].startswith("r-x") and os.path.realpath(p[5]) == real:
                ranges.append(tuple(int(x, 16) for x in p[0].split("-")))
    present = set()
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi in ranges:
            for va in range(lo, hi, 4096):
                pm.seek(va // 4096 * 8)
                if struct.unpack("Q", pm.read(8))[0] >> 63:
                    present.add(va)
    for line in subprocess.run(
        ["nm", "-S", "--defined-only", exe], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        p = line.split()
        if len(p) != 4 or p[2] not in "tTwW" or p[3] in known:
            continue
        addr, size = int(p[0], 16), max(int(p[1], 16), 1)
        if any(pg in present for pg in range(addr & ~4095, addr + size, 4096)):
            print(p[3])


def order(args):
    split = args.index("--")
    seen = set()
    for path in args[:split] + args[split + 1 :]:
        with open(path) as f:
            for name in (line.strip() for line in f):
                if name and name not in seen:
                    seen.add(name)
                    print(name)


if __name__ == "__main__":
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb == "register":
        register(sys.argv[2], sys.argv[3], sys.argv[4])
    elif verb == "hits":
        hits(sys.argv[2], sys.argv[3])
    elif verb == "touched":
        touched(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif verb == "order":
        order(sys.argv[2:])
    else:
        sys.exit(__doc__)
