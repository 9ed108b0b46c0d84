#!/usr/bin/env python3
"""Helper for benches/load/run.sh (standard library only).

  bench.py measure --out RAW.jsonl --pids P1,P2 --rss-pid P --kind wrk|h2load
                   [--h2log FILE] [--timeout S] [--meta k=v ...] -- CMD ...
      Reads utime+stime of every PID in --pids and the per-CPU counters of
      /proc/stat, runs CMD (the load generator), reads them again, parses
      CMD's output, reads VmHWM of --rss-pid, and appends one JSON line.
      With no --pids (the "direct" baseline) no proxy CPU is recorded.

  bench.py report RAW.jsonl META.json
      Prints the Markdown tables: medians over rounds, and for every metric
      the median of the per-round ratios other/steer.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- /proc


def proc_cpu_ticks(pid):
    """(utime, stime) in clock ticks, for the whole process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # comm (field 2) may hold spaces or ')': split after the last ')'.
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]), int(rest[12])


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def cpu_lines():
    """{'cpu0': {'user':..,'sys':..,'irq':..,'busy':..,'total':..}} in ticks."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                # user nice system idle iowait irq softirq steal
                out[name] = {
                    "user": v[0] + v[1],
                    "sys": v[2],
                    "irq": v[5] + v[6],
                    "busy": sum(v) - v[3] - v[4],
                    "total": sum(v),
                }
    return out


class RssSampler:
    """The RSS's parts at its highest sample during the load.

    VmHWM gives the peak but not what it is made of. Polled every 100 ms:
    the heap (RssAnon) apart from the binary's and libraries' pages
    (RssFile) and shared memory (RssShmem), which compare differently
    between a 9 MB static binary and one linked to shared libraries.
    """

    PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self, pid):
        self.pid, self.best, self.done = pid, None, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.1):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    lines = f.read().splitlines()
            except OSError:
                return
            # One read: the parts and the total of the same instant.
            now = {}
            for line in lines:
                key, _, rest = line.partition(":")
                if key in self.PARTS:
                    now[key] = int(rest.split()[0])
            if now.get("VmRSS") is not None and (self.best is None or now["VmRSS"] > self.best["VmRSS"]):
                self.best = now

    def stop(self):
        self.done.set()
        self.thread.join(timeout=5)
        return self.best or {}


def reset_hwm(pid):
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs root or owner)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------- parsers

UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_wrk(text):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        r["requests"] = int(m.group(1))
        r["seconds"] = float(m.group(2)) * UNIT_US[m.group(3)] / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            r[key] = to_us(m.group(1))
    errors = 0
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    r["errors"] = errors
    return r


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return float(sorted_vals[k])


def parse_h2load(text, log_path):
    r = {}
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", text)
    if m:
        r["seconds"] = float(m.group(1)) * UNIT_US[m.group(2)] / 1e6
        r["rps"] = float(m.group(3))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    if m:
        done, ok = int(m.group(3)), int(m.group(4))
        r["requests"] = done
        r["errors"] = (done - ok) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        r["errors"] = r.get("errors", 0) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"Cipher: (\S+)", text)
    if m:
        r["cipher"] = m.group(1)
    m = re.search(r"Application protocol: (\S+)", text)
    if m:
        r["alpn"] = m.group(1)
    lat = []
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    try:
                        lat.append(int(parts[2]))
                    except ValueError:
                        pass
        lat.sort()
    r["p50_us"] = percentile(lat, 50)
    r["p99_us"] = percentile(lat, 99)
    r["latency_samples"] = len(lat)
    return r


# ----------------------------------------------------------------- measure


def cmd_measure(args):
    pids = [int(p) for p in args.pids.split(",") if p] if args.pids else []
    up_pids = [int(p) for p in args.up_pids.split(",") if p] if args.up_pids else []
    meta = dict(kv.split("=", 1) for kv in args.meta)
    cmd = args.cmd
    sampler = None
    if args.rss_pid:
        reset_hwm(args.rss_pid)
        sampler = RssSampler(args.rss_pid)
    if args.h2log and os.path.exists(args.h2log):
        os.unlink(args.h2log)
    c0 = [proc_cpu_ticks(p) for p in pids]
    u0 = [proc_cpu_ticks(p) for p in up_pids]
    s0 = cpu_lines()
    w0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.timeout
        )
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    wall = time.monotonic() - w0
    c1 = [proc_cpu_ticks(p) for p in pids]
    u1 = [proc_cpu_ticks(p) for p in up_pids]
    s1 = cpu_lines()
    rec = dict(meta)
    rec["rc"] = rc
    rec["wall_s"] = round(wall, 3)
    if args.kind == "wrk":
        rec.update(parse_wrk(out))
    else:
        rec.update(parse_h2load(out, args.h2log))
    req = rec.get("requests") or 0
    if pids:
        rec["user_ticks"] = sum(b[0] - a[0] for a, b in zip(c0, c1))
        rec["sys_ticks"] = sum(b[1] - a[1] for a, b in zip(c0, c1))
        if req:
            rec["user_us"] = rec["user_ticks"] * 1e6 / CLK_TCK / req
            rec["sys_us"] = rec["sys_ticks"] * 1e6 / CLK_TCK / req
            rec["total_us"] = rec["user_us"] + rec["sys_us"]
        rec["proxy_cpu_pct"] = round(
            (rec["user_ticks"] + rec["sys_ticks"]) / CLK_TCK / wall * 100, 1
        )
    if up_pids and req:
        ticks = sum(sum(b) - sum(a) for a, b in zip(u0, u1))
        rec["upstream_us"] = ticks * 1e6 / CLK_TCK / req
    if req and "cpu0" in s1:
        # One request at a time with every process on CPU 0 (scenario c):
        # CPU 0's busy time per request is the latency's CPU part, its
        # idle time per request the part spent waiting for nothing.
        busy = s1["cpu0"]["busy"] - s0["cpu0"]["busy"]
        idle = s1["cpu0"]["total"] - s0["cpu0"]["total"] - busy
        rec["cpu0_busy_us"] = busy * 1e6 / CLK_TCK / req
        rec["cpu0_idle_us"] = idle * 1e6 / CLK_TCK / req
    if args.rss_pid:
        rec["hwm_kib"] = proc_status_kib(args.rss_pid, "VmHWM")
        rec["rss_kib"] = proc_status_kib(args.rss_pid, "VmRSS")
        top = sampler.stop()
        for part in ("RssAnon", "RssFile", "RssShmem"):
            rec[f"peak_{part[3:].lower()}_kib"] = top.get(part)
    for cpu in sorted(s1):
        tot = s1[cpu]["total"] - s0[cpu]["total"]
        for k in ("busy", "user", "sys", "irq"):
            d = s1[cpu][k] - s0[cpu][k]
            rec[f"{cpu}_{k}_pct"] = round(100.0 * d / tot, 1) if tot else None
    if rc != 0 or not rec.get("requests"):
        rec["output_tail"] = out[-600:]
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    # One short line for the console.
    def fmt(v, nd=1):
        return "-" if v is None else f"{v:.{nd}f}"
    print(
        f"  {meta.get('scenario')} r{meta.get('round')} {meta.get('proxy'):8s} "
        f"req/s={fmt(rec.get('rps'), 0):>9s} cpu/req={fmt(rec.get('total_us'), 2):>7s}us "
        f"p50={fmt(rec.get('p50_us'), 0)}us p99={fmt(rec.get('p99_us'), 0)}us "
        f"hwm={rec.get('hwm_kib', '-')}KiB err={rec.get('errors', '?')} "
        f"cpu0={rec.get('cpu0_busy_pct')}% cpu1={rec.get('cpu1_busy_pct')}%"
        + (" rustc-running" if meta.get("rustc") == "yes" else "")
        + (f" rc={rc}" if rc != 0 else ""),
        flush=True,
    )
    return 0


# ----------------------------------------------------------------- report

PROXIES = ["nginx", "haproxy", "steer"]


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def num(v, nd=0, unit=""):
    if v is None:
        return "n/a"
    if nd == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{nd}f}{unit}"


def lat(v):
    if v is None:
        return "n/a"
    if v >= 10_000:
        return f"{v / 1000:.1f} ms"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{v:.0f} µs"


def mib(kib):
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def ratio_cell(value_text, ratio, proxy):
    if proxy == "steer":
        return value_text
    if ratio is None:
        return f"{value_text} (n/a)"
    return f"{value_text} ({ratio:.2f}×)"


def per_round_ratio(rows, proxy, key, fn=None):
    """Median over rounds of metric(proxy)/metric(steer), same round."""
    get = fn or (lambda r: r.get(key))
    by_round = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["proxy"]] = r
    ratios = []
    for rnd in by_round.values():
        if proxy in rnd and "steer" in rnd:
            a, b = get(rnd[proxy]), get(rnd["steer"])
            # a ratio of a negative "added latency" means nothing: skip it
            if a is not None and b is not None and a > 0 and b > 0:
                ratios.append(a / b)
    return med(ratios)


def table_load(rows, title, note):
    lines = [f"### {title}", "", note, ""]
    lines.append(
        "| proxy | req/s | user µs/req | sys µs/req | total µs/req | p50 | p99 | peak RSS | its anon / file / shmem | errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cols = [
        ("rps", lambda v: num(v)),
        ("user_us", lambda v: num(v, 2)),
        ("sys_us", lambda v: num(v, 2)),
        ("total_us", lambda v: num(v, 2)),
        ("p50_us", lat),
        ("p99_us", lat),
        ("hwm_kib", mib),
    ]
    for proxy in PROXIES:
        pr = [r for r in rows if r["proxy"] == proxy]
        if not pr:
            continue
        cells = [proxy]
        for key, f in cols:
            v = med([r.get(key) for r in pr])
            cells.append(ratio_cell(f(v), per_round_ratio(rows, proxy, key), proxy))
        parts = [med([r.get(f"peak_{k}_kib") for r in pr]) for k in ("anon", "file", "shmem")]
        cells.append(" / ".join("n/a" if v is None else f"{v / 1024:.1f}" for v in parts) + " MiB")
        cells.append(str(sum(r.get("errors") or 0 for r in pr)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table_latency(rows, title, note):
    lines = [f"### {title}", "", note, ""]
    lines.append(
        "| target | req/s | total µs/req | upstream µs/req | CPU 0 busy / idle µs/req | p50 | p99 | added p50 | added p99 | errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    direct = {r["round"]: r for r in rows if r["proxy"] == "direct"}

    def added(key):
        def f(r):
            d = direct.get(r["round"])
            if d is None or r.get(key) is None or d.get(key) is None:
                return None
            return r[key] - d[key]
        return f

    for proxy in ["direct"] + PROXIES:
        pr = [r for r in rows if r["proxy"] == proxy]
        if not pr:
            continue
        cells = [proxy if proxy != "direct" else "direct (upstream, no proxy)"]
        for key, f in (("rps", num), ("total_us", lambda v: num(v, 2))):
            v = med([r.get(key) for r in pr])
            if proxy == "direct":
                cells.append(f(v) if key != "total_us" else "–")
            else:
                cells.append(ratio_cell(f(v), per_round_ratio(rows, proxy, key), proxy))
        cells.append(num(med([r.get("upstream_us") for r in pr]), 2))
        busy, idle = (med([r.get(k) for r in pr]) for k in ("cpu0_busy_us", "cpu0_idle_us"))
        cells.append(f"{num(busy, 1)} / {num(idle, 1)}")
        for key in ("p50_us", "p99_us"):
            v = med([r.get(key) for r in pr])
            if proxy == "direct":
                cells.append(lat(v))
            else:
                cells.append(ratio_cell(lat(v), per_round_ratio(rows, proxy, key), proxy))
        for key in ("p50_us", "p99_us"):
            if proxy == "direct":
                cells.append("–")
                continue
            fn = added(key)
            v = med([fn(r) for r in pr])
            cells.append(
                ratio_cell(lat(v), per_round_ratio(rows, proxy, None, fn), proxy)
            )
        cells.append(str(sum(r.get("errors") or 0 for r in pr)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


IDLE_KINDS = ["plain", "tls", "h2", "h2c"]
IDLE_KINDS_TITLE = {
    "plain": "plain HTTP/1.1",
    "tls": "HTTP/1.1 over TLS",
    "h2": "HTTP/2 over TLS",
    "h2c": "h2c",
}


def table_idle(rows, title, note):
    lines = [f"### {title}", "", note, ""]
    lines.append(
        "| proxy | connections held | RSS before | RSS with connections | KiB per connection | still answering after hold |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|")
    for proxy in PROXIES:
        pr = [r for r in rows if r["proxy"] == proxy]
        if not pr:
            continue
        per = med([r.get("kib_per_conn") for r in pr])
        ratio = per_round_ratio(rows, proxy, "kib_per_conn")
        cells = [
            proxy,
            num(med([r.get("opened") for r in pr])),
            mib(med([r.get("rss_before_kib") for r in pr])),
            mib(med([r.get("rss_after_kib") for r in pr])),
            ratio_cell(num(per, 2), ratio, proxy),
            ", ".join(f"{r.get('alive_ok')}/{r.get('alive_checked')}" for r in pr),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def noise_note(rows, scenario):
    """How much of the run's CPU time went to processes that are not ours."""
    notes = []
    if scenario in ("a", "b", "e"):
        # CPU 0 holds only the proxy: user time on CPU 0 beyond the proxy's
        # own user time is another process (a compiler, say).
        extra = [
            r["cpu0_user_pct"] - r["user_ticks"] / CLK_TCK / r["wall_s"] * 100
            for r in rows
            if r.get("cpu0_user_pct") is not None and r.get("user_ticks") is not None
        ]
        if extra:
            notes.append(
                f"Foreign user time on CPU 0 (user time not the proxy's): "
                f"median {max(0.0, med(extra)):.1f} %, max {max(0.0, max(extra)):.1f} % of the run."
            )
    if scenario == "c":
        cpu1 = [r["cpu1_busy_pct"] for r in rows if r.get("cpu1_busy_pct") is not None]
        if cpu1:
            notes.append(
                f"CPU 1 (none of the benchmark's processes) was busy: median {med(cpu1):.1f} %, "
                f"max {max(cpu1):.1f} % — other processes, which may also have taken CPU 0."
            )
    flagged = [r for r in rows if r.get("rustc") == "yes"]
    if flagged:
        notes.append(
            f"A Rust compiler was running at the start of {len(flagged)} of {len(rows)} runs."
        )
    return " ".join(notes)


def cmd_report(args):
    rows = []
    with open(args.raw) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    meta = json.load(open(args.meta))
    S = meta.get("seconds")
    N = meta.get("rounds")
    out = []
    out.append(
        "Cells are medians over the rounds; in parentheses, the median of the "
        "per-round ratios other/steer (same round, interleaved). For req/s a "
        "ratio above 1 means faster than steer; for CPU, latency and RSS a "
        "ratio above 1 means more than steer."
    )
    out.append("")
    sc = {
        "a": ("(a) HTTP/1.1 keep-alive — `wrk -t1 -c50`, proxy on CPU 0, wrk + upstream on CPU 1",
              table_load),
        "b": ("(b) HTTP/2 over TLS — `h2load -c50 -m10`, HTTP/1.1 upstream, proxy on CPU 0, h2load + upstream on CPU 1",
              table_load),
        "e": ("(e) HTTP/2 over TLS in, h2c out (ZITADEL's shape) — `h2load -c50 -m10` at `/h2c/`, proxy on CPU 0, h2load + upstream on CPU 1",
              table_load),
        "c": ("(c) 1 connection, everything on CPU 0 — `wrk -t1 -c1`: added latency vs. the upstream directly. "
              "One request is in flight and every process shares CPU 0, so CPU 0's busy time per request is "
              "the round trip's CPU (the proxy's, the upstream's, wrk's and the kernel's) and its idle time "
              "the round trip's waiting with CPU 0 free",
              table_latency),
        "d": (f"(d) Idle keep-alive client connections ({meta.get('idle_conns')} per proxy, fresh proxy process each round)",
              table_idle),
    }
    for key, (title, fn) in sc.items():
        rs = [r for r in rows if r.get("scenario") == key]
        if not rs:
            continue
        notes = [f"{S} s per run, {N} round(s), order per round: "
                 + ", ".join(meta.get("order_" + key, PROXIES)) + "."]
        if key in ("b", "e"):
            ciphers = sorted({f"{r.get('proxy')}: {r.get('alpn')}/{r.get('cipher')}" for r in rs})
            notes.append("Negotiated: " + "; ".join(ciphers) + ".")
        if key == "d":
            notes = []  # each kind's own, below
        n = noise_note(rs, key)
        if n:
            notes.append(n)
        bad = [r for r in rs if r.get("rc") not in (0, None) or r.get("errors")]
        if bad:
            notes.append(f"**{len(bad)} run(s) had errors or a non-zero exit; see the raw data.**")
        if key == "d":
            # One table per kind of connection (plain, tls, h2).
            for kind in sorted({r.get("kind", "plain") for r in rs}, key=IDLE_KINDS.index):
                kr = [r for r in rs if r.get("kind", "plain") == kind]
                # Each kind's own hold (run.sh holds HTTP/2 longer).
                hold = med([r.get("hold_seconds") for r in kr])
                hold = meta.get("idle_hold") if hold is None else f"{hold:g}"
                first = (f"Per round and proxy: a freshly started proxy, one request on each of "
                         f"{meta.get('idle_conns')} connections, held {hold} s; "
                         f"KiB per connection = (VmRSS with them open − VmRSS before) / connections.")
                out.extend(fn(kr, f"{title}: {IDLE_KINDS_TITLE[kind]}", " ".join([first] + notes)))
                out.append("")
            continue
        out.extend(fn(rs, title, " ".join(notes)))
        out.append("")
    print("\n".join(out))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("--pids", default="")
    m.add_argument("--rss-pid", type=int, default=0)
    m.add_argument("--up-pids", default="", help="the upstream's PIDs: its CPU per request")
    m.add_argument("--kind", choices=["wrk", "h2load"], required=True)
    m.add_argument("--h2log", default="")
    m.add_argument("--timeout", type=float, default=120)
    m.add_argument("--meta", action="append", default=[], help="KEY=VALUE (repeatable)")
    r = sub.add_parser("report")
    r.add_argument("raw")
    r.add_argument("meta")
    argv = sys.argv[1:]
    cmd = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1 :]
    a = ap.parse_args(argv)
    a.cmd = cmd
    if a.cmd_name == "measure":
        return cmd_measure(a)
    return cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
