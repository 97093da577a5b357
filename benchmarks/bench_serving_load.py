"""Serving under load: requests/s of ``mlflow models serve`` with 1 and 2 workers at concurrency 1, 4 and 8.

Run from the repository root::

    python benchmarks/bench_serving_load.py                  # upstream model, 48 requests a setting (~4 min)
    python benchmarks/bench_serving_load.py --experiment baseline --requests 96

A model with the train command's default architecture is trained for one epoch on the demo
atmosphere (its weights do not matter for speed) and registered in a temporary SQLite MLflow store,
as in ``bench_serving.py``. The registered version is served on 127.0.0.1 by the real scoring server
(``--env-manager local``), once with ``--workers 1`` and once with ``--workers 2``. For each encoding
(Parquet, ``request_parquet``; compact JSON, ``request_body``) and concurrency ``c`` a thread pool of
``c`` clients sends the same one-window request until ``--requests`` are answered (after ``c`` warm-up
requests). Requests/s are printed as a ratio to concurrency 1 with 1 worker of the same encoding,
measured in the same run; p50 and p99 are each request's latency, queueing in the server included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_serving import registered_demo_model
from harness import finish, fmt_table, percentile, print_header

from convlstm.scoring_client import JSON_CONTENT_TYPE, PARQUET_CONTENT_TYPE, ScoringServer, request_body, request_parquet

WORKERS = (1, 2)
CONCURRENCY = (1, 4, 8)


def load(server: ScoringServer, body: bytes, content_type: str, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Seconds for ``requests`` answers from ``concurrency`` clients at once, and each request's latency."""

    def one(_: int) -> float:
        began = time.perf_counter()
        status, answer = server.post(body, timeout_s=300.0, content_type=content_type)
        if status != 200:
            raise SystemExit(f"HTTP {status} under load: {str(answer)[:300]}")
        return time.perf_counter() - began

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: every client's connection, every worker's first request
        began = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        return time.perf_counter() - began, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["baseline", "upstream"], default="upstream")
    parser.add_argument("--requests", type=int, default=48, help="answered requests a setting (after the warm-up)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    out: dict[str, object] = print_header(f"Serving under load ({args.experiment} model, one-window requests)")

    rows: dict[tuple[str, int, int], tuple[float, list[float]]] = {}
    with registered_demo_model(args.experiment, "bench-serving-load") as (root, env, uri, window):
        bodies = {"parquet": (request_parquet(window), PARQUET_CONTENT_TYPE),
                  "compact json": (request_body(window), JSON_CONTENT_TYPE)}
        for workers in WORKERS:
            with ScoringServer(uri, root / f"server-{workers}.log", env=env, cwd=root, workers=workers) as server:
                for name, (body, content_type) in bodies.items():
                    for concurrency in CONCURRENCY:
                        rows[name, workers, concurrency] = load(server, body, content_type, concurrency, args.requests)
                        print(f"  {name}, {workers} worker(s), concurrency {concurrency}: "
                              f"{args.requests / rows[name, workers, concurrency][0]:.1f} req/s", flush=True)
    out["load_after"] = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())

    table = []
    for (name, workers, concurrency), (seconds, latencies) in rows.items():
        rate = args.requests / seconds
        reference = args.requests / rows[name, 1, 1][0]
        table.append([name, str(workers), str(concurrency), f"{rate:.1f}", f"{rate / reference:.2f}x",
                      f"{1e3 * statistics.median(latencies):.0f}", f"{1e3 * percentile(latencies, 99):.0f}"])
    print(f"\nrequest: one window {list(window.shape)} float32; {args.requests} requests a setting; "
          f"{os.cpu_count()} logical CPUs; {out['load_after']} at the end\n")
    print(fmt_table(["encoding", "workers", "concurrency", "req/s", "vs 1 worker, c=1", "p50 ms", "p99 ms"], table))
    out.update({"request_shape": list(window.shape), "requests": args.requests,
                "results": [{"encoding": name, "workers": workers, "concurrency": concurrency, "seconds": seconds,
                             "latencies_s": latencies} for (name, workers, concurrency), (seconds, latencies) in rows.items()]})
    return finish([], out, args.json)  # stated figures, no target


if __name__ == "__main__":
    raise SystemExit(main())
