#!/usr/bin/env python3
"""Atomic read-modify-write instructions and hot code per request, from a
callgrind dump.

  atomics.py REQUESTS DUMP... [--top N]

Of the dumps given, reads the one with the most instructions (the load
after the zeroing, as compare.sh picks it). It must have been written
with --dump-instr=yes --compress-strings=no. Prints two numbers:

- locked instructions per request. Each object the dump names (the
  proxy's binary and its shared libraries) is disassembled with objdump;
  an instruction counts when it carries the lock prefix or is an xchg
  with memory (locked without the prefix). With --top N, then the N
  functions with the most.
- the hot code, in KiB: the 64-byte lines of code that run in at least
  every other request (a line runs as often as its most run
  instruction). It is the instruction cache a request's code needs: when
  it is larger than the first-level cache, every request misses on part
  of its own code.

Why count them: a locked instruction costs tens of cycles (it waits for
the store buffer to drain and holds the cache line), and an instruction
fetched from the second-level cache costs several; callgrind counts each
as one instruction like any other. So two proxies with the same
instruction count can differ in CPU time by these.
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
    """Locked instructions executed per function, and how often each
    instruction ran, by (object, address)."""
    per_fn = collections.Counter()
    runs = collections.Counter()
    ob, locks, fn, addr, call = None, frozenset(), None, 0, False
    ir = None  # the column of Ir: after the positions (instr line)
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if line.startswith("positions:"):
                positions = line.split()[1:]
                if positions[:1] == ["instr"]:
                    ir = len(positions)
            elif line.startswith("ob="):
                ob = line[3:].strip()
                locks = locked_addresses(ob)
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
                elif len(parts) > ir:
                    n = int(parts[ir])
                    runs[(ob, addr)] += n
                    if addr in locks:
                        per_fn[fn] += n
    return per_fn, runs


def hot_kib(runs, requests):
    """The 64-byte code lines run in at least every other request, in KiB."""
    line_runs = collections.Counter()
    for (ob, addr), n in runs.items():
        key = (ob, addr >> 6)
        line_runs[key] = max(line_runs[key], n)
    return sum(n * 2 >= requests for n in line_runs.values()) * 64 / 1024


def main(argv):
    top = 0
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i : i + 2]
    requests, dumps = int(argv[1]), argv[2:]
    per_fn, runs = count(max(dumps, key=summary))
    print(f"{sum(per_fn.values()) / requests:.1f} {hot_kib(runs, requests):.1f}")
    for fn, n in per_fn.most_common(top):
        print(f"{n / requests:8.2f}  {fn}")


if __name__ == "__main__":
    main(sys.argv)
