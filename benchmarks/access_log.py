"""The cost of the request metrics (issue 12): CPU time of one `AccessLog.refresh` over
the access lines Caddy writes in one collector interval, for N apps behind the proxy and
a total request rate R: the tail read, the parse, the host -> app mapping and the
percentiles. The lines are Caddy 2.6's, as Diplo's logging config shapes them (compact
JSON, URIs and headers deleted), in a temporary folder; nothing else is touched.

Usage: .venv/bin/python benchmarks/access_log.py [--apps 100] [--rate 1000]
       [--interval 10] [--cycles 5]"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from diplo.metrics.requests import AccessLog


def line(host: str, status: int, seconds: float) -> str:
    return json.dumps(
        {
            "level": "info" if status < 500 else "error",
            "ts": time.time(),
            "logger": "http.log.access",
            "msg": "handled request",
            "request": {"proto": "HTTP/1.1", "method": "GET", "host": host},
            "duration": seconds,
            "size": 1234,
            "status": status,
        },
        separators=(",", ":"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="requests/s over all apps")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(12)
    routes = {f"app{i}": ("bench", [f"app{i}.example.com"]) for i in range(args.apps)}
    per_cycle = int(args.rate * args.interval)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        path.write_text("")
        clock = [0.0]
        stats = AccessLog(path, lambda: routes, mono=lambda: clock[0])
        stats.refresh()
        costs = []
        for _ in range(args.cycles):
            with path.open("a") as f:
                for _ in range(per_cycle):
                    app = rng.randrange(args.apps)
                    status = 503 if rng.random() < 0.01 else 200
                    f.write(line(f"app{app}.example.com", status, rng.expovariate(50)) + "\n")
            clock[0] += args.interval
            began = time.process_time()
            stats.refresh()
            costs.append(time.process_time() - began)
        size = path.stat().st_size
    cost = statistics.median(costs)
    print(
        f"{args.apps} apps, {args.rate} req/s, every {args.interval:g} s: "
        f"{per_cycle} lines ({size / args.cycles / per_cycle:.0f} bytes each) per cycle"
    )
    print(
        f"refresh: median {cost * 1000:.0f} ms of CPU per cycle "
        f"({cost / per_cycle * 1e6:.1f} us per request), "
        f"{100 * cost / args.interval:.2f} % of one core"
    )


if __name__ == "__main__":
    main()
