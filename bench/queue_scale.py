"""Thousands of queued experiments: listing, claiming and the status counts stay fast; housekeeping.

Starts a real `trainyard serve` (API only) on a fresh database, submits --n experiments
(tiny ones) from several client threads, then times, with all of them queued:
  - `GET /experiments?limit=50` (first page), `?status=queued&limit=50`, and walking every
    page with the cursor;
  - `GET /stats` (counts per state);
  - the claim statement itself (`EXPLAIN ANALYZE` of the worker's claim, rolled back);
then starts --workers worker processes and lets them drain --drain experiments, reporting
experiments finished per second, and finally runs `trainyard housekeep` on them and
reports the checkpoint bytes before and after, and the tables' size.

    python3 bench/queue_scale.py [--n 5000] [--drain 200] [--workers 2]

Uses target/release/trainyard (`cargo build --release` first), psql, the database
`trainyard_queue_scale` (dropped and created anew) on the server of $DATABASE_URL, and the
MNIST files in ../shared/data. Only the Python standard library.
"""
import argparse
import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import (  # noqa: E402
    ROOT, Api, Processes, database_urls, default_trainyard, free_port, start_api, summary, wait_for)

CLAIM_SQL = """
BEGIN;
EXPLAIN (ANALYZE, FORMAT JSON)
WITH next AS (
    SELECT id FROM experiments WHERE status = 'queued'
    ORDER BY priority DESC, created_at, id
    FOR UPDATE SKIP LOCKED LIMIT 1
)
UPDATE experiments e SET status = 'running', attempt = e.attempt + 1,
    lease_owner = 'bench', lease_expires_at = now() + make_interval(secs => 30),
    started_at = coalesce(e.started_at, now()), training_started_at = NULL, updated_at = now()
FROM next WHERE e.id = next.id RETURNING e.id;
ROLLBACK;
"""


def timed(api, path, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        status, body = api.request("GET", path)
        out.append((time.perf_counter() - t) * 1e3)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
    return summary(out), body


def psql(url, sql):
    return subprocess.run(["psql", url, "-X", "-q", "-t", "-A", "-c", sql], check=True,
                          capture_output=True, text=True).stdout


def line(label, s):
    print(f"  {label:<44} n {s['n']:>4}  p50 {s['p50']:>7.2f}  p95 {s['p95']:>7.2f}  "
          f"max {s['max']:>7.2f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--drain", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trainyard")
    ap.add_argument("--database", default="trainyard_queue_scale")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    if args.trainyard is None:
        args.trainyard = default_trainyard()
    base, url = database_urls(args.database)
    psql(base, f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)")
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    spec = {
        "preset": "torch-cnn",
        "dataset": {"train_limit": 200, "test_limit": 50},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 50,
        "epochs": 2,
        "device": "cpu",
    }
    logdir = tempfile.mkdtemp(prefix="trainyard-queue-scale-")
    procs = Processes(logdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server, api = start_api(procs, args.trainyard, port, env)

        # Submissions from 8 client threads, each on its own kept-alive connection.
        def submit_many(k):
            client, times = Api(port), []
            for _ in range(k):
                t = time.perf_counter()
                client.submit(spec)
                times.append((time.perf_counter() - t) * 1e3)
            return times

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as ex:
            parts = [args.n // 8 + (1 if i < args.n % 8 else 0) for i in range(8)]
            posts = [t for ts in ex.map(submit_many, parts) for t in ts]
        elapsed = time.perf_counter() - t0
        print(f"\n{args.n} experiments submitted in {elapsed:.1f} s "
              f"({args.n / elapsed:.0f}/s from 8 connections)")
        line("POST /experiments", summary(posts))

        print(f"with {args.n} queued:")
        s, _ = timed(api, "/experiments?limit=50", 50)
        line("GET /experiments?limit=50", s)
        s, _ = timed(api, "/experiments?status=queued&limit=50", 50)
        line("GET /experiments?status=queued&limit=50", s)
        pages, cursor, page_times = 0, None, []
        while True:
            path = "/experiments?limit=100" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            t = time.perf_counter()
            status, page = api.request("GET", path)
            page_times.append((time.perf_counter() - t) * 1e3)
            pages += 1
            cursor = page.get("next_cursor")
            if not cursor:
                break
        line(f"every page of 100 by cursor ({pages} pages)", summary(page_times))
        s, stats = timed(api, "/stats", 50)
        line("GET /stats", s)
        assert stats["experiments"]["queued"] == args.n, stats
        claims = []
        for _ in range(20):
            plan = json.loads(psql(url, CLAIM_SQL).strip())
            claims.append(plan[0]["Execution Time"])
        line("claim statement (EXPLAIN ANALYZE, rolled back)", summary(claims))

        # Drain: worker processes claim and train; the rest stay queued.
        t0 = time.perf_counter()
        for i in range(args.workers):
            procs.start(f"worker-{i}", [args.trainyard, "worker", "--workers", "1", "--device",
                                        "cpu", "--data-dir", args.data_dir, "--no-download",
                                        "--poll-secs", "1"], env)

        def drained():
            _, st = api.request("GET", "/stats")
            return st["experiments"]["succeeded"] >= args.drain

        wait_for(f"{args.drain} experiments to finish", drained, 1800)
        elapsed = time.perf_counter() - t0
        _, st = api.request("GET", "/stats")
        print(f"{args.workers} worker processes finished {st['experiments']['succeeded']} "
              f"experiments in {elapsed:.1f} s ({st['experiments']['succeeded'] / elapsed:.1f}/s, "
              f"process start-up and data loading included); failed {st['experiments']['failed']}")
        s, _ = timed(api, "/stats", 20)
        line("GET /stats while workers drain", s)
        s, _ = timed(api, "/experiments?limit=50", 20)
        line("GET /experiments?limit=50 while workers drain", s)
    finally:
        procs.stop_all()
    out = subprocess.run([args.trainyard, "housekeep"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    print(f"trainyard housekeep: {out}")
    psql(url, "VACUUM ANALYZE")
    print("after VACUUM: " + psql(url, """
        SELECT string_agg(relname || ' ' || pg_size_pretty(pg_total_relation_size(relid))
                          || ' (' || n_dead_tup || ' dead rows)', ', ' ORDER BY relname)
        FROM pg_stat_user_tables WHERE relname <> '_sqlx_migrations'""").strip())
    print(f"logs: {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
