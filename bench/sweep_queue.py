"""Time from `POST /sweeps` to every child queued, against submitting the same children one
`POST /experiments` at a time, in the same run on the same server.

A sweep of N children (a grid over N learning rates) is answered 201 only once every child
is validated and inserted, queued, in one transaction; the figure is that request's wall
time, checked afterwards by reading the sweep (every child `queued`). The reference sends
the N specs as N sequential `POST /experiments` on one kept-alive connection. Nothing
trains: the server runs without workers, and each run's experiments are cancelled and
deleted before the next.

    python3 bench/sweep_queue.py [--n 100] [--rounds 5] [--json]

Uses target/release/trainyard (`cargo build --release`), the database `trainyard_sweeps`
on the server of $DATABASE_URL. Only the Python standard library.
"""
import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import Processes, database_urls, default_trainyard, free_port, start_api  # noqa: E402


def base(lr=None):
    spec = {"preset": "torch-cnn", "epochs": 1, "dataset": {"train_limit": 500, "test_limit": 200},
            "device": "cpu"}
    if lr is not None:
        spec["optimizer"] = {"learning_rate": lr}
    return spec


def clean(api):
    """Cancels and deletes every experiment and sweep left in the database."""
    _, sweeps = api.request("GET", "/sweeps?limit=100")
    for s in sweeps["items"]:
        api.request("POST", f"/sweeps/{s['id']}/cancel")
        api.request("DELETE", f"/sweeps/{s['id']}")
    while True:
        _, page = api.request("GET", "/experiments?limit=100")
        if not page["items"]:
            return
        for e in page["items"]:
            api.request("POST", f"/experiments/{e['id']}/cancel")
            api.request("DELETE", f"/experiments/{e['id']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="children per sweep (default 100)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trainyard")
    ap.add_argument("--database", default="trainyard_sweeps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = args.trainyard or default_trainyard()
    if not os.access(exe, os.X_OK):
        sys.exit(f"{exe} not found: build it with `cargo build --release`")
    _, url = database_urls(args.database)
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    rates = [round(0.001 * (i + 1), 6) for i in range(args.n)]
    procs = Processes(tempfile.mkdtemp(prefix="trainyard-sweeps-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sweep_s, one_by_one_s = [], []
    try:
        _, api = start_api(procs, exe, free_port(), env)
        clean(api)
        # One untimed round of each warms the server's caches and connections.
        for r in range(args.rounds + 1):
            t = time.perf_counter()
            status, s = api.request("POST", "/sweeps", {
                "base": base(), "grid": {"optimizer.learning_rate": rates}})
            elapsed = time.perf_counter() - t
            if status != 201:
                raise RuntimeError(f"POST /sweeps: {status} {s}")
            _, check = api.request("GET", f"/sweeps/{s['id']}")
            if check["counts"] != {"queued": args.n}:
                raise RuntimeError(f"not all queued: {check['counts']}")
            clean(api)
            t = time.perf_counter()
            for lr in rates:
                status, e = api.request("POST", "/experiments", base(lr))
                if status != 201:
                    raise RuntimeError(f"POST /experiments: {status} {e}")
            elapsed_one = time.perf_counter() - t
            clean(api)
            if r > 0:
                sweep_s.append(elapsed)
                one_by_one_s.append(elapsed_one)
    finally:
        procs.stop_all()
    figures = {
        "children": args.n,
        "rounds": args.rounds,
        "sweep_ms_median": 1000 * statistics.median(sweep_s),
        "sweep_ms_max": 1000 * max(sweep_s),
        "one_by_one_ms_median": 1000 * statistics.median(one_by_one_s),
        "one_by_one_ms_max": 1000 * max(one_by_one_s),
    }
    print(f"POST /sweeps of {args.n} children, to all queued: median "
          f"{figures['sweep_ms_median']:.0f} ms, max {figures['sweep_ms_max']:.0f} ms "
          f"({args.rounds} rounds)")
    print(f"the same {args.n} specs as sequential POST /experiments: median "
          f"{figures['one_by_one_ms_median']:.0f} ms, max {figures['one_by_one_ms_max']:.0f} ms")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
