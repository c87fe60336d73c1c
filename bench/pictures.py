#!/usr/bin/env python3
"""Curve pictures: how long `trainyard serve` takes to answer curve.svg/png and compare.svg/png
for long runs, beside matplotlib drawing the same curves in the same run.

The goal (issue 11): `GET /experiments/{id}/curve.svg` with 1,000 epochs under 20 ms and
`GET /compare.svg` with 8 x 1,000 epochs under 50 ms. Each time is a whole request on a
kept-alive loopback connection, so it includes reading the epochs from PostgreSQL.

The reference is matplotlib (the article's figures), drawing the same series (train,
validation and test of each run, markers off) with its default backend to SVG and to PNG
at the same pixel size, in this process; it does no database read and no HTTP, so it is
the cheaper side of the comparison.

Usage: python3 bench/pictures.py [--reps 30] [--trainyard PATH]
(a release build first; matplotlib in this Python: `pip install matplotlib`). The
database `trainyard_pictures` on the server of DATABASE_URL is dropped and filled with 8
experiments of 1,000 epochs each (inserted directly, not trained).
"""

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import (  # noqa: E402
    Processes, database_urls, default_trainyard, free_port, start_api, summary)

EPOCHS = 1000
RUNS = 8


def psql(url, sql):
    return subprocess.run(["psql", url, "-X", "-q", "-t", "-A", "-c", sql], check=True,
                          capture_output=True, text=True).stdout


def fill(url, exe):
    """8 succeeded experiments (torch-cnn's resolved spec) with 1,000 epochs each."""
    spec = json.loads(subprocess.run([exe, "presets"], check=True, capture_output=True,
                                     text=True).stdout)["torch-cnn"]
    spec["epochs"] = EPOCHS
    ids = []
    for r in range(RUNS):
        out = psql(url, f"""
            INSERT INTO experiments (id, spec, status, finished_at, epochs_done, name)
            VALUES (gen_random_uuid(), '{json.dumps(spec)}'::jsonb, 'succeeded', now(), {EPOCHS},
                    'run {r}')
            RETURNING id""")
        ids.append(out.strip().splitlines()[0])
        psql(url, f"""
            INSERT INTO epoch_metrics (experiment_id, epoch, train_loss, train_accuracy,
                val_loss, val_accuracy, test_loss, test_accuracy, train_seconds,
                images_per_second)
            SELECT '{ids[-1]}', g, 2.3 * exp(-g / {100 + 30 * r}.0) + 0.05 * random(),
                   1 - exp(-g / {80 + 20 * r}.0), 2.3 * exp(-g / {120 + 30 * r}.0) + 0.1,
                   0.97 - exp(-g / {90 + 20 * r}.0), 2.3 * exp(-g / {125 + 30 * r}.0) + 0.11,
                   0.96 - exp(-g / {95 + 20 * r}.0), 0.4, 150000
            FROM generate_series(1, {EPOCHS}) g""")
    return ids


def timed_get(conn, path, reps):
    out, size = [], 0
    for _ in range(reps + 2):
        t = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        out.append((time.perf_counter() - t) * 1e3)
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:300]}")
        size = len(body)
    return summary(out[2:]), size


def matplotlib_times(url, ids, reps):
    """matplotlib drawing the same series: {(runs, fmt): summary}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for i in ids:
        text = psql(url, f"SELECT epoch, train_loss, val_loss, test_loss FROM epoch_metrics "
                         f"WHERE experiment_id = '{i}' ORDER BY epoch")
        rows[i] = [tuple(float(x) for x in line.split("|")) for line in text.strip().splitlines()]
    out = {}
    for runs in (1, RUNS):
        for fmt in ("svg", "png"):
            times = []
            for _ in range(reps + 2):
                t = time.perf_counter()
                fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
                for k, i in enumerate(ids[:runs]):
                    e = [r[0] for r in rows[i]]
                    for col, style in ((1, "-"), (2, "--"), (3, ":")):
                        ax.plot(e, [r[col] for r in rows[i]], style, color=f"C{k}",
                                label=f"run {k} {col}")
                ax.set_xlabel("epoch")
                ax.set_ylabel("loss")
                ax.set_title("loss")
                ax.grid(True, alpha=0.3)
                ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7)
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt)
                plt.close(fig)
                times.append((time.perf_counter() - t) * 1e3)
            out[(runs, fmt)] = summary(times[2:])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--trainyard")
    ap.add_argument("--database", default="trainyard_pictures")
    args = ap.parse_args()
    exe = args.trainyard or default_trainyard()
    base, url = database_urls(args.database)
    psql(base, f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    with tempfile.TemporaryDirectory() as logs:
        procs = Processes(logs)
        try:
            start_api(procs, exe, port, env)
            ids = fill(url, exe)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            cases = [
                ("curve.svg, 1 x 1,000 epochs", f"/experiments/{ids[0]}/curve.svg", 20),
                ("curve.png, 1 x 1,000 epochs", f"/experiments/{ids[0]}/curve.png", None),
                ("compare.svg, 8 x 1,000 epochs", f"/compare.svg?ids={','.join(ids)}", 50),
                ("compare.png, 8 x 1,000 epochs", f"/compare.png?ids={','.join(ids)}", None),
            ]
            print(f"trainyard serve ({exe}), {args.reps} requests each, ms:")
            met = True
            for label, path, goal in cases:
                s, size = timed_get(conn, path, args.reps)
                verdict = "" if goal is None else (
                    f"  goal < {goal} ms: {'met' if s['p95'] < goal else 'NOT met'} (p95)")
                met &= goal is None or s["p95"] < goal
                print(f"  {label:<32} p50 {s['p50']:7.2f}  p95 {s['p95']:7.2f}  "
                      f"max {s['max']:7.2f}  {size / 1024:7.1f} KiB{verdict}")
        finally:
            procs.stop_all()
    try:
        ref = matplotlib_times(url, ids, max(5, args.reps // 3))
    except ImportError:
        print("matplotlib is not installed in this Python: no reference figures")
        return 0 if met else 1
    print(f"matplotlib {__import__('matplotlib').__version__} (Agg), same series, in process, ms:")
    for (runs, fmt), s in ref.items():
        print(f"  {runs} x 1,000 epochs to {fmt:<4}            p50 {s['p50']:7.2f}  "
              f"p95 {s['p95']:7.2f}  max {s['max']:7.2f}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
