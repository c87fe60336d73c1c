"""SSE under load: hundreds of curve followers, of one experiment and of many, while training runs.

Starts a real `trainyard serve` (API only) and one `trainyard worker` process, submits
--experiments tiny experiments, and opens --followers followers of the first experiment
and --spread followers spread over the others, all before training starts. One more
client opens a curve and never reads it (a stalled client: its socket buffers fill).
Meanwhile the server's resident memory is sampled.

Checks, per follower:
  - it received every durable event (`status`, `epoch`) of its experiment, in order, with
    no gap and no repeat: the same ids as a fresh replay after the end;
  - its `progress` ids never go backwards;
  - it ended with `end`.
Reports the delivery delay of `epoch` events (the event's `recorded_at` to the moment the
follower read it), across all followers, and the server's memory before, at peak and after.
Exits 1 when any follower missed, repeated or reordered an event.

    python3 bench/sse_load.py [--followers 300] [--spread 200] [--experiments 5]

Uses target/release/trainyard (`cargo build --release` first), the database
`trainyard_sse_load` on the server of $DATABASE_URL (created if missing) and the MNIST
files in ../shared/data. Only the Python standard library.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import (  # noqa: E402
    ROOT, Processes, cancel_leftovers, database_urls, default_trainyard, free_port, parse_time,
    start_api, summary)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def read_stream(port, exp_id, last_event_id=None, timeout=600):
    """Yields (event, id, data, received_at) from a curve until `end` or the stream closes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    conn.request("GET", f"/experiments/{exp_id}/curve", headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"curve: {r.status} {r.read()!r}")
    event, eid, data = "message", None, []
    try:
        while True:
            line = r.fp.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data:
                    yield event, eid, json.loads("\n".join(data)), time.time()
                    if event == "end":
                        return
                event, eid, data = "message", None, []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                eid = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
    finally:
        conn.close()


class Follower(threading.Thread):
    def __init__(self, port, exp_id):
        super().__init__(daemon=True)
        self.port, self.exp_id = port, exp_id
        self.events, self.error = [], None

    def run(self):
        try:
            self.events = list(read_stream(self.port, self.exp_id))
        except Exception as e:  # reported, not raised: one failure must not hide others
            self.error = repr(e)


def check(f, canonical):
    """Problems with one follower's events, given the canonical durable ids."""
    if f.error:
        return [f.error]
    problems = []
    durable = [int(eid) for ev, eid, _, _ in f.events if ev in ("status", "epoch")]
    if durable != canonical:
        problems.append(f"durable ids {durable} != {canonical}")
    progress = [tuple(map(int, eid.split("."))) for ev, eid, _, _ in f.events if ev == "progress"]
    if progress != sorted(progress) or len(set(progress)) != len(progress):
        problems.append("progress ids out of order or repeated")
    if not f.events or f.events[-1][0] != "end":
        problems.append("no `end` event")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--followers", type=int, default=300, help="followers of the first experiment")
    ap.add_argument("--spread", type=int, default=200, help="followers spread over the others")
    ap.add_argument("--experiments", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-limit", type=int, default=3000)
    ap.add_argument("--trainyard")
    ap.add_argument("--database", default="trainyard_sse_load")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    if args.trainyard is None:
        args.trainyard = default_trainyard()
    _, url = database_urls(args.database)
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    spec = {
        "preset": "torch-cnn",
        "dataset": {"train_limit": args.train_limit, "test_limit": 500},
        "batch_size": 50,
        "epochs": args.epochs,
        "device": "cpu",
    }
    logdir = tempfile.mkdtemp(prefix="trainyard-sse-load-")
    procs = Processes(logdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stalled = None
    try:
        server, api = start_api(procs, args.trainyard, port, env)
        cancel_leftovers(api)
        # Submitted before any worker runs, so every follower sees the whole run live.
        ids = [api.submit(spec)[1] for _ in range(args.experiments)]
        time.sleep(0.5)
        rss_before = rss_mib(server.pid)

        # The stalled client: asks for the busiest curve and never reads.
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /experiments/{ids[0]}/curve HTTP/1.1\r\nHost: x\r\n"
                        "Accept: text/event-stream\r\n\r\n".encode())
        followers = [Follower(port, ids[0]) for _ in range(args.followers)]
        others = ids[1:] or ids
        followers += [Follower(port, others[i % len(others)]) for i in range(args.spread)]
        opened = time.time()
        for f in followers:
            f.start()
        time.sleep(1.0)  # every follower connected and replaying before training starts
        rss_open = rss_mib(server.pid)

        peak = [rss_open]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], rss_mib(server.pid))
                except OSError:
                    return
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        worker, log = procs.start(
            "worker", [args.trainyard, "worker", "--workers", "1", "--device", "cpu",
                       "--data-dir", args.data_dir, "--no-download"], env)
        for f in followers:
            f.join(900)
        done.set()
        elapsed = time.time() - opened
        rss_after = rss_mib(server.pid)

        canonical = {}
        for exp_id in set(ids):
            events = list(read_stream(port, exp_id))
            canonical[exp_id] = [int(eid) for ev, eid, _, _ in events if ev in ("status", "epoch")]
        per_follower = [check(f, canonical[f.exp_id]) for f in followers]
        bad = [(f.exp_id, p) for f, ps in zip(followers, per_follower) for p in ps]
        n_bad = sum(1 for ps in per_follower if ps)
        delays = [
            (received - parse_time(data["recorded_at"])) * 1e3
            for f in followers
            for ev, _, data, received in f.events
            if ev == "epoch"
        ]
        n_events = sum(len(f.events) for f in followers)
        # The stalled client's connection: still open (the server kept it, bounded) or closed.
        stalled.setblocking(False)
        try:
            stalled_state = "open, unread" if stalled.recv(1) else "closed"
        except BlockingIOError:
            stalled_state = "open, unread"
    finally:
        if stalled is not None:
            stalled.close()
        procs.stop_all()

    s = summary(delays)
    print(f"\nSSE load: {len(followers)} followers ({args.followers} of one experiment, "
          f"{args.spread} over {len(others)} others), {args.experiments} experiments of "
          f"{json.dumps(spec, separators=(',', ':'))}, one stalled client ({stalled_state})")
    print(f"events delivered: {n_events} in {elapsed:.1f} s; followers with a problem: "
          f"{n_bad} ({len(bad)} problems)")
    print(f"epoch event delay, recorded -> read (ms): n {s['n']}, p50 {s['p50']:.1f}, "
          f"p95 {s['p95']:.1f}, max {s['max']:.1f}")
    print(f"server RSS (MiB): before followers {rss_before:.1f}, followers open {rss_open:.1f}, "
          f"peak {peak[0]:.1f}, after {rss_after:.1f}")
    for exp_id, p in bad[:10]:
        print(f"  {exp_id}: {p}")
    print(f"logs: {logdir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
