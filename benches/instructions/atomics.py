#!/usr/bin/env python3
"""Atomic read-modify-write instructions per request, from a callgrind dump.

  atomics.py REQUESTS DUMP... [--top N]

Of the dumps given, reads the one with the most instructions (the load
after the zeroing, as compare.sh picks it). It must have been written
with --dump-instr=yes --compress-strings=no. Each object the dump names
(the proxy's binary and its shared libraries) is disassembled with
objdump; an instruction counts when it carries the lock prefix or is an
xchg with memory (locked without the prefix). Prints the count per
request, then with --top N the N functions with the most.

Why count them: a locked instruction costs tens of cycles (it waits for
the store buffer to drain and holds the cache line), while callgrind
counts it as one instruction like any other. So two proxies with the same
instruction count can differ in CPU time by their atomics.
"""

import collections
import functools
import re
import subprocess
import sys

LOCKED = re.compile(r"\t(lock\s|xchg\s.*\()")


@functools.cache
def locked_addresses(path):
    """Virtual addresses of the locked instructions of one ELF object
    (none for what objdump cannot read, such as valgrind's "???")."""
    try:
        out = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", path],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return frozenset()
    addrs = set()
    for line in out.splitlines():
        if LOCKED.search(line):
            head = line.split(":", 1)[0].strip()
            try:
                addrs.add(int(head, 16))
            except ValueError:
                pass
    return frozenset(addrs)


def summary(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    return -1


def count(path):
    """Locked instructions executed, in all and per function."""
    per_fn = collections.Counter()
    locks, fn, addr, call = frozenset(), None, 0, False
    ir = None  # the column of Ir: after the positions (instr line)
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if line.startswith("positions:"):
                positions = line.split()[1:]
                if positions[:1] == ["instr"]:
                    ir = len(positions)
            elif line.startswith("ob="):
                locks = locked_addresses(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                call = True  # the next cost line is the call's, not the address's own
            elif c.isdigit() or c in "+-*":
                if ir is None:
                    sys.exit(f"{path}: written without --dump-instr=yes")
                parts = line.split()
                a = parts[0]
                if a.startswith("0x"):
                    addr = int(a, 16)
                elif a[0] in "+-":
                    addr += int(a)
                if call:
                    call = False
                elif addr in locks and len(parts) > ir:
                    per_fn[fn] += int(parts[ir])
    return per_fn


def main(argv):
    top = 0
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i : i + 2]
    requests, dumps = int(argv[1]), argv[2:]
    per_fn = count(max(dumps, key=summary))
    print(f"{sum(per_fn.values()) / requests:.1f}")
    for fn, n in per_fn.most_common(top):
        print(f"{n / requests:8.2f}  {fn}")


if __name__ == "__main__":
    main(sys.argv)
