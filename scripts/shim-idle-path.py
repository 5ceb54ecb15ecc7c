# gdb script (run by scripts/shim-idle-path.sh): in an attached shim, stops where the quiet
# release (crates/berth-shim/src/residency.rs) drops its first mapping, then single-steps
# until the shim blocks in epoll_wait again, and writes the addresses it executed on the way
# (one per line, hex) to the file named by $IDLE_PCS. Those are all the code an idle shim
# runs after letting go of its binary's pages.
import os
import re

import gdb

gdb.execute("set pagination off")
pid = gdb.selected_inferior().pid
exe = os.readlink(f"/proc/{pid}/exe")
first = next(
    int(line.split("-")[0], 16)
    for line in open(f"/proc/{pid}/maps")
    if line.split()[-1] == exe
)
where = gdb.execute("info address epoll_wait", to_string=True)
stop_at = int(re.search(r"0x[0-9a-f]+", where).group(0), 16)


class Release(gdb.Breakpoint):
    """madvise on the binary's first mapping: the release is under way."""

    def stop(self):
        return int(gdb.parse_and_eval("$rdi")) == first


bp = Release("madvise")
gdb.execute("continue")
bp.delete()
seen, order = set(), []
for _ in range(200000):
    gdb.execute("stepi", to_string=True)
    pc = int(gdb.parse_and_eval("$pc"))
    if pc >= 0x700000000000:
        # The vDSO's clock reads retry forever under single-stepping: run them out.
        gdb.execute("finish", to_string=True)
        continue
    if pc not in seen:
        seen.add(pc)
        order.append(pc)
    if pc == stop_at:
        break
with open(os.environ["IDLE_PCS"], "w") as f:
    f.write("\n".join(hex(p) for p in order) + "\n")
gdb.execute("detach")
