"""Used by scripts/ci/bolt.sh and scripts/ci/pgo.sh: a per-scenario count
of an optimized build against the plain build's, each at most LIMIT times
the plain one.

    python3 scripts/lib/ratio.py TAG WHAT LIMIT BEFORE AFTER

BEFORE and AFTER are "scenario count" lines (benches/instructions/
compare.sh --steer-only, one field picked); TAG starts each printed line
("bolt, under load"), WHAT names the count. Exits 1 if any scenario is
above its limit.
"""

import sys

tag, what, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
before = dict(line.split() for line in sys.argv[4].splitlines())
after = dict(line.split() for line in sys.argv[5].splitlines())
failed = False
for scenario in ("http1", "h2-tls", "h2-tls-h2c"):
    b, a = float(before[scenario]), float(after[scenario])
    ok = a <= b * limit
    failed |= not ok
    print(
        f"{tag}: {scenario} {b:,.0f} -> {a:,.0f} {what} per request"
        f" ({a / b:.2f}x, limit {limit:.2f}x){'' if ok else '  FAILED'}"
    )
sys.exit(1 if failed else 0)
