#!/usr/bin/env python3
"""Idle keep-alive connections: RSS per connection of one proxy process.

  idle_conns.py --port P --pid PID --conns N --hold S --out RAW.jsonl
                [--kind plain|tls|h2|h2c] [--meta k=v ...]

--kind: plain HTTP/1.1 (the default), HTTP/1.1 over TLS (ALPN http/1.1),
HTTP/2 over TLS (ALPN h2) or h2c with prior knowledge; TLS without
certificate checks (the benchmark's self-signed certificate).

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
import ssl
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


# HTTP/2: the client preface with empty SETTINGS, and frames by hand (RFC 9113 §4.1).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_get(stream):
    # HPACK: :method GET, :scheme http, :path / (static 2, 6, 4), then
    # :authority localhost as a literal without indexing (name index 1).
    block = b"\x82\x86\x84\x01\x09localhost"
    return frame(1, 0x5, stream, block)  # HEADERS, END_STREAM | END_HEADERS


class H2:
    """Just enough of an HTTP/2 client for GET / and its answer."""

    def __init__(self, s):
        self.s, self.buf, self.next_stream = s, b"", 1
        s.sendall(PREFACE)

    def read_frame(self):
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        return kind, flags, stream, payload

    def get(self):
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        self.s.sendall(h2_get(stream))
        status = None
        while True:
            kind, flags, sid, payload = self.read_frame()
            if kind == 4 and not flags & 1:  # SETTINGS
                self.s.sendall(SETTINGS_ACK)
            elif kind == 6 and not flags & 1:  # PING
                self.s.sendall(frame(6, 1, 0, payload))
            elif kind == 7:  # GOAWAY
                raise ConnectionError("GOAWAY")
            elif sid == stream and kind == 3:  # RST_STREAM
                raise ConnectionError("stream reset")
            elif sid == stream and kind == 1:  # HEADERS: :status 200 is static index 8
                status = 200 if payload[:1] == b"\x88" else 0
            if sid == stream and kind in (0, 1) and flags & 1:  # END_STREAM
                return status


def connect(kind, port, linger):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    if kind in ("tls", "h2"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"] if kind == "h2" else ["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
        want = "h2" if kind == "h2" else "http/1.1"
        if s.selected_alpn_protocol() not in (want, None if kind == "tls" else want):
            raise ConnectionError(f"ALPN {s.selected_alpn_protocol()}")
    if kind in ("h2", "h2c"):
        return s, H2(s)
    return s, None


def get(s, h2):
    if h2 is not None:
        return h2.get()
    s.sendall(REQ)
    return read_response(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=8000)
    ap.add_argument("--hold", type=float, default=3.0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", choices=["plain", "tls", "h2", "h2c"], default="plain")
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
        s = None
        try:
            s, h2 = connect(a.kind, a.port, linger)
            status = get(s, h2)
            if status != 200:
                raise ConnectionError(f"status {status}")
            socks.append((s, h2))
        except (OSError, ValueError, IndexError) as e:
            failures += 1
            first_error = first_error or repr(e)
            if s is not None:
                s.close()
            if failures > 50:
                break
    open_s = time.monotonic() - start
    time.sleep(a.hold)
    rss_after = vm(a.pid, "VmRSS")
    hwm_after = vm(a.pid, "VmHWM")
    # Are they still held? A second request on every 100th connection.
    checked = ok = 0
    for s, h2 in socks[::100]:
        checked += 1
        try:
            if get(s, h2) == 200:
                ok += 1
        except (OSError, ValueError, IndexError):
            pass
    for s, _ in socks:
        s.close()
    opened = len(socks)
    rec = dict(meta)
    rec.update(
        kind=a.kind,
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
        f"  {meta.get('scenario', 'd')} {a.kind} r{meta.get('round')} {meta.get('proxy'):8s} opened={opened} in {open_s:.1f}s "
        f"rss {rss_before}->{rss_after} KiB = {kpc if kpc is None else round(kpc, 2)} KiB/conn "
        f"alive={ok}/{checked}" + (f" first_error={first_error}" if first_error else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
