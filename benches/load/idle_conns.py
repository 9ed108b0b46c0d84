#!/usr/bin/env python3
"""Idle keep-alive connections: RSS per connection of one proxy process.

  idle_conns.py --port P --pid PID --conns N --hold S --out RAW.jsonl [--meta k=v ...]

Reads VmRSS of PID, opens N TCP connections to 127.0.0.1:P, sends one
HTTP/1.1 keep-alive GET / on each and reads the whole response, keeps them
open and idle, waits S seconds, reads VmRSS again, sends a second request
on every 100th connection to check the proxy still holds them, then closes
everything with RST (SO_LINGER 0, so no TIME_WAIT piles up on the client).
Appends one JSON line. Bounded: gives up after --deadline seconds.
"""

import argparse
import json
import socket
import struct
import sys
import time

REQ = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: idle-conns\r\n\r\n"


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=8000)
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    meta = dict(kv.split("=", 1) for kv in a.meta)

    start = time.monotonic()
    rss_before = vm(a.pid, "VmRSS")
    socks, failures, first_error = [], 0, None
    linger = struct.pack("ii", 1, 0)
    for _ in range(a.conns):
        if time.monotonic() - start > a.deadline:
            first_error = first_error or "deadline"
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", a.port))
            s.sendall(REQ)
            status = read_response(s)
            if status != 200:
                raise ConnectionError(f"status {status}")
            socks.append(s)
        except (OSError, ValueError, IndexError) as e:
            failures += 1
            first_error = first_error or repr(e)
            s.close()
            if failures > 50:
                break
    open_s = time.monotonic() - start
    time.sleep(a.hold)
    rss_after = vm(a.pid, "VmRSS")
    hwm_after = vm(a.pid, "VmHWM")
    # Are they still held? A second request on every 100th connection.
    checked = ok = 0
    for s in socks[::100]:
        checked += 1
        try:
            s.sendall(REQ)
            if read_response(s) == 200:
                ok += 1
        except (OSError, ValueError, IndexError):
            pass
    for s in socks:
        s.close()
    opened = len(socks)
    rec = dict(meta)
    rec.update(
        rc=0 if opened == a.conns else 1,
        opened=opened,
        failures=failures,
        first_error=first_error,
        open_seconds=round(open_s, 2),
        hold_seconds=a.hold,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
        hwm_after_kib=hwm_after,
        kib_per_conn=(rss_after - rss_before) / opened if opened else None,
        alive_checked=checked,
        alive_ok=ok,
    )
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    kpc = rec["kib_per_conn"]
    print(
        f"  d r{meta.get('round')} {meta.get('proxy'):8s} opened={opened} in {open_s:.1f}s "
        f"rss {rss_before}->{rss_after} KiB = {kpc if kpc is None else round(kpc, 2)} KiB/conn "
        f"alive={ok}/{checked}" + (f" first_error={first_error}" if first_error else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
