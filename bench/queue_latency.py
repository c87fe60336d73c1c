"""Queue latency of the service: real `trainyard serve` and `trainyard worker` processes.

Measures, per experiment:
  (a) submit -> training: from the moment the client sends `POST /experiments` to the
      moment the worker begins the experiment's first training batch (the experiment's
      `training_started_at`, stamped by the worker when the first batch starts). It covers
      the request, the queue insert and its NOTIFY, the worker's wake-up, the claim, and the
      set-up: data preparation, model construction.
  (b) epoch -> client: from the moment an epoch is stored (the `recorded_at` of its
      `epoch` event: the database's clock at the last statement of the transaction that
      stores the epoch, so the commit itself is counted) to the moment this client has read
      that `epoch` event from `GET /experiments/{id}/curve`. Only events the stream
      delivered live are counted (an epoch stored before the stream opened is replayed, not
      pushed; those are reported as skipped).
Warm figures are for an idle worker whose process has trained before; the cold figure is
the first experiment after a worker process starts (it loads and verifies the dataset).
Client, server, worker and PostgreSQL share one clock (same machine).

    python3 bench/queue_latency.py [--n 20] [--cold 1] [--epochs 2] [--full] [--json]

Exits 1 when a p95 of (a) warm or (b) is 50 ms or more. `--full` submits the torch-cnn
preset on the whole of MNIST instead and cancels each experiment once it trains: (a) for
a real-sized dataset, whose preparation the worker keeps for the next job.

Uses target/release/trainyard (build it first: `cargo build --release`), the database
`trainyard_latency` on the server of $DATABASE_URL (default
postgres://postgres:postgres@127.0.0.1:5432/postgres; created if missing) and the MNIST
files in ../shared/data. Only the Python standard library. Every process it starts is
stopped when it exits.
"""
import argparse
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MS = 50.0


def parse_time(s):
    """RFC 3339 (any number of fractional digits, `Z` or an offset) -> unix seconds."""
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, tz = rest[:i], rest[i:]
        s = head + "." + (frac + "000000")[:6] + tz
    return dt.datetime.fromisoformat(s).timestamp()


def percentile(sorted_values, q):
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(k) - 1]


def summary(values):
    v = sorted(values)
    return {
        "n": len(v),
        "min": v[0] if v else float("nan"),
        "p50": percentile(v, 50),
        "p95": percentile(v, 95),
        "max": v[-1] if v else float("nan"),
    }


def default_trainyard():
    """The release binary: in $CARGO_TARGET_DIR when set, else in target/."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "trainyard")


def database_urls(name):
    """(the server's URL from DATABASE_URL, the same server's database `name`)."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
    return base, urllib.parse.urlsplit(base)._replace(path="/" + name).geturl()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Starts processes with logs in a folder; stops them all (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, args, env):
        log = open(os.path.join(self.logdir, name + ".log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append((name, p, log))
        return p, log.name

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for _, p, log in reversed(self.procs):
            self.stop(p)
            log.close()


class Api:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method, path, body=None):
        headers = {"content-type": "application/json"} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, json.loads(r.read() or b"null")
            except (ConnectionError, http.client.HTTPException):
                # A kept-alive connection the server closed: reconnect once.
                self.conn.close()
                if attempt:
                    raise

    def submit(self, spec):
        """POSTs a spec on the kept-alive connection; returns (sent_at, id)."""
        data = json.dumps(spec).encode()
        headers = {"content-type": "application/json"}
        # Connect first, so that what is timed is the request, not a TCP handshake.
        if self.conn.sock is None:
            self.conn.connect()
        sent_at = time.time()
        self.conn.request("POST", "/experiments", body=data, headers=headers)
        r = self.conn.getresponse()
        body = json.loads(r.read())
        if r.status != 201:
            raise RuntimeError(f"POST /experiments: {r.status} {body}")
        return sent_at, body["id"]


def follow(port, exp_id, timeout, on_progress=None):
    """Reads the curve until `end`; returns (opened_at, [(event, data, received_at)]).
    Calls `on_progress` once, at the first `progress` event."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", f"/experiments/{exp_id}/curve",
                 headers={"accept": "text/event-stream"})
    r = conn.getresponse()
    opened_at = time.time()
    if r.status != 200:
        raise RuntimeError(f"curve: {r.status} {r.read()!r}")
    events, event, data = [], "message", []
    try:
        while True:
            line = r.fp.readline()
            if not line:
                raise RuntimeError(f"the curve of {exp_id} closed before `end`")
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data:
                    events.append((event, json.loads("\n".join(data)), time.time()))
                    if event == "progress" and on_progress:
                        on_progress()
                        on_progress = None
                    if event == "end":
                        return opened_at, events
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
    finally:
        conn.close()


def start_api(procs, exe, port, env, workers=0, extra=()):
    """Starts `trainyard serve --workers N` (0 by default) on `port`, with `extra` flags;
    returns (process, Api) once ready.

    Without keys (`--auth off`, allowed on loopback): the benchmarks measure the queue, not
    authentication."""
    server, _ = procs.start("serve", [exe, "serve", "--workers", str(workers), "--bind",
                                      f"127.0.0.1:{port}", "--auth", "off", *extra], env)
    api = Api(port)

    def ready():
        if server.poll() is not None:
            raise RuntimeError(f"serve exited; see {procs.logdir}/serve.log")
        try:
            return api.request("GET", "/readyz")[0] == 200
        except OSError:
            api.conn.close()
            return False

    wait_for("the server", ready, 60)
    return server, api


def cancel_leftovers(api):
    """Cancels what an interrupted earlier run left queued or running in the database."""
    for status in ("queued", "running"):
        _, page = api.request("GET", f"/experiments?status={status}&limit=100")
        for e in page["items"]:
            api.request("POST", f"/experiments/{e['id']}/cancel")


def wait_for(what, check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def log_has(path, text):
    with open(path) as f:
        return text in f.read()


def measure(api, port, spec, timeout, cancel_once_started=False):
    """One experiment: submit, follow to the end; returns its measurements."""
    sent_at, exp_id = api.submit(spec)
    on_progress = None
    if cancel_once_started:
        on_progress = lambda: api.request("POST", f"/experiments/{exp_id}/cancel")
    opened_at, events = follow(port, exp_id, timeout, on_progress)
    end = events[-1][1]
    if end["status"] != ("cancelled" if cancel_once_started else "succeeded"):
        raise RuntimeError(f"experiment {exp_id} ended {end['status']}: {end.get('error')}")
    started = parse_time(end["training_started_at"])
    claimed = parse_time(end["started_at"])
    out = {
        "id": exp_id,
        "a_ms": (started - sent_at) * 1e3,
        "claim_ms": (claimed - sent_at) * 1e3,
        "setup_ms": (started - claimed) * 1e3,
        "b_ms": [],
        "b_busy_ms": [],
        "b_last_ms": [],
        "skipped": 0,
        "store_ms": [],
    }
    last_batch = {}
    for event, data, received_at in events:
        if event == "progress" and data["batch"] == data["batches"]:
            last_batch[data["epoch"]] = parse_time(data["at"])
        elif event == "epoch":
            recorded = parse_time(data["recorded_at"])
            if recorded < opened_at:
                out["skipped"] += 1
                continue
            out["b_ms"].append((received_at - recorded) * 1e3)
            # After an epoch other than the last the worker goes straight on training.
            last = data["epoch"] == spec.get("epochs")
            out["b_last_ms" if last else "b_busy_ms"].append(out["b_ms"][-1])
            if data["epoch"] in last_batch:
                out["store_ms"].append((recorded - last_batch[data["epoch"]]) * 1e3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="warm experiments (default 20)")
    ap.add_argument("--cold", type=int, default=1,
                    help="cold experiments, each on a freshly started worker (default 1)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=500)
    ap.add_argument("--full", action="store_true",
                    help="the whole dataset (the torch-cnn preset as it is), each experiment "
                         "cancelled once it trains: measures (a) only")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--idle", type=float, default=0.3,
                    help="seconds the worker sits idle before each submission")
    ap.add_argument("--trainyard",
                    help="the binary (default: release/trainyard in $CARGO_TARGET_DIR, "
                         "else in target/)")
    ap.add_argument("--database", default="trainyard_latency")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    if args.trainyard is None:
        args.trainyard = default_trainyard()
    if not os.access(args.trainyard, os.X_OK):
        sys.exit(f"{args.trainyard} not found: build it with `cargo build --release`")

    _, url = database_urls(args.database)
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    spec = {
        "preset": "torch-cnn",
        "dataset": {"train_limit": args.train_limit, "test_limit": 200},
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "device": "cpu",
    }
    if args.full:
        spec = {"preset": "torch-cnn", "device": "cpu"}
    timeout = 120

    logdir = tempfile.mkdtemp(prefix="trainyard-latency-")
    procs = Processes(logdir)
    # SIGTERM (and SIGINT, as KeyboardInterrupt) unwind through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server, api = start_api(procs, args.trainyard, port, env)
        # A previous run that was interrupted may have left work behind: cancel it, so the
        # worker is idle when the measurements begin.
        cancel_leftovers(api)

        def start_worker(i):
            worker, log = procs.start(
                f"worker-{i}",
                [args.trainyard, "worker", "--workers", "1", "--device", "cpu",
                 "--data-dir", args.data_dir, "--no-download"], env)
            wait_for("the worker", lambda: log_has(log, "working") or worker.poll() is not None,
                     60)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited; see {log}")
            time.sleep(args.idle)  # its first claim finds nothing; it waits for a NOTIFY
            return worker

        cold, warm = [], []
        worker = None
        for i in range(max(args.cold, 1)):
            if worker is not None:
                procs.stop(worker)
            worker = start_worker(i)
            m = measure(api, port, spec, timeout, args.full)
            if args.cold:
                cold.append(m)
            # With --cold 0 this first experiment only warms the worker up.
            print(f"{'cold' if args.cold else 'warm-up'} {i + 1}: (a) {m['a_ms']:.1f} ms",
                  file=sys.stderr)
        for i in range(args.n):
            time.sleep(args.idle)
            m = measure(api, port, spec, timeout, args.full)
            warm.append(m)
            print(f"warm {i + 1}/{args.n}: (a) {m['a_ms']:.1f} ms, (b) "
                  + ", ".join(f"{b:.1f}" for b in m["b_ms"]) + " ms", file=sys.stderr)
    finally:
        procs.stop_all()

    figures = {
        "a_warm": summary([m["a_ms"] for m in warm]),
        "a_cold": summary([m["a_ms"] for m in cold]),
        "b": summary([b for m in warm + cold for b in m["b_ms"]]),
        "b_busy": summary([b for m in warm + cold for b in m["b_busy_ms"]]),
        "b_last": summary([b for m in warm + cold for b in m["b_last_ms"]]),
        "a_warm_claim": summary([m["claim_ms"] for m in warm]),
        "a_warm_setup": summary([m["setup_ms"] for m in warm]),
        "epoch_end_to_stored": summary([s for m in warm + cold for s in m["store_ms"]]),
        "b_skipped_replayed": sum(m["skipped"] for m in warm + cold),
    }
    spec_text = json.dumps(spec, separators=(",", ":"))
    print(f"\nqueue latency: {len(warm)} warm + {len(cold)} cold experiments of {spec_text}"
          + (", cancelled once training" if args.full else ""))
    print(f"{'milliseconds':<52}{'n':>4}{'min':>8}{'p50':>8}{'p95':>8}{'max':>8}  < 50 ms?")
    rows = [
        ("(a) POST sent -> first batch begins, warm worker", "a_warm", True),
        ("      POST sent -> claimed (`started_at`)", "a_warm_claim", False),
        ("      claimed -> first batch (set-up)", "a_warm_setup", False),
        ("(a) POST sent -> first batch begins, cold worker", "a_cold", False),
        ("(b) epoch stored -> its SSE event read by client", "b", True),
        ("      while the worker trains the next epoch", "b_busy", False),
        ("      after the last epoch (the worker ends the run)", "b_last", False),
        ("not in (b): last batch -> epoch stored (eval, store)", "epoch_end_to_stored", False),
    ]
    for label, key, judged in rows:
        s = figures[key]
        if s["n"] == 0:
            continue
        verdict = ""
        if judged:
            verdict = ("yes" if s["max"] < TARGET_MS else
                       "p95 yes, max no" if s["p95"] < TARGET_MS else "NO")
        print(f"{label:<52}{s['n']:>4}{s['min']:>8.1f}{s['p50']:>8.1f}{s['p95']:>8.1f}"
              f"{s['max']:>8.1f}  {verdict}")
    if figures["b_skipped_replayed"]:
        print(f"(b) left out {figures['b_skipped_replayed']} epoch(s) stored before the "
              "stream opened (replayed, not pushed live)")
    print(f"logs: {logdir}")
    if args.json:
        print(json.dumps(figures))
    ok = figures["a_warm"]["p95"] < TARGET_MS
    if figures["b"]["n"]:
        ok = ok and figures["b"]["p95"] < TARGET_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
