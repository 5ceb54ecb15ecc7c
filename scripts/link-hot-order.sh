#!/usr/bin/env bash
# The linker of berth's target (.cargo/config.toml): cc, and for a binary linked with its
# hot.order (lld's --symbol-ordering-file, from crates/hot_order.rs) a second link when the
# order names functions the build numbered differently. Fat LTO merges every crate into one
# module and numbers the local copies of a function that share a name (`format.1008`); any
# change to the code renumbers them, and a hot function the order no longer names is placed
# among cold code, where each one keeps a 64 KiB fault-around window of the binary resident
# (1.3 MB more of berthd's code at start after one small change). The second link orders
# every numbered copy of such a function where the order had the one it named.
set -euo pipefail
cc "$@"
order= out= prev=
for a in "$@"; do
  case $a in
    -Wl,--symbol-ordering-file=*) order=${a#-Wl,--symbol-ordering-file=} ;;
    @*) exit 0 ;; # arguments in a response file: left as linked
  esac
  [[ $prev == -o ]] && out=$a
  prev=$a
done
[[ -n $order && -n $out ]] || exit 0
fixed=$out.hot-order
trap 'rm -f "$fixed"' EXIT
nm --defined-only --format=just-symbols "$out" | awk -v order="$order" '
  { have[$0] = 1; if (match($0, /\.[0-9]+$/)) copies[substr($0, 1, RSTART - 1)] = copies[substr($0, 1, RSTART - 1)] " " $0 }
  END {
    while ((getline line < order) > 0) {
      if (line in have || !match(line, /\.[0-9]+$/) || !((base = substr(line, 1, RSTART - 1)) in copies)) {
        if (!(line in done)) { print line; done[line] = 1 }
        continue
      }
      moved = 1
      n = split(copies[base], names, " ")
      for (i = 1; i <= n; i++) if (!(names[i] in done)) { print names[i]; done[names[i]] = 1 }
    }
    exit !moved
  }' >"$fixed" || exit 0
args=()
for a in "$@"; do
  case $a in -Wl,--symbol-ordering-file=*) a=-Wl,--symbol-ordering-file=$fixed ;; esac
  args+=("$a")
done
cc "${args[@]}"
