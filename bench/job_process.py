"""The cost of a process per job, and the memory estimate against the measured peak.

For each spec below, the same run twice on `trainyard serve --workers 1` (a job process per
run; the first prepares the data, the second reads it from the file cache), then once
in-process with `trainyard train` (the engine in the calling process, as every job ran
before job processes), all in the same run on the same machine:
- start: from the slot's `claimed experiment` line to its `training started` line (the
  process started, its data read or prepared, its model built), from the JSON log;
- epoch: each epoch's `train_seconds`, job process against `trainyard train`;
- peak: the job process's peak resident memory (`peak_rss_mib` of `job process ended`,
  from wait4) against the admission estimate (`footprint.peak_bytes` of the experiment).

    python3 bench/job_process.py [--exe target/release/trainyard] [--json]

Uses the database `trainyard_jobbench` on the server of $DATABASE_URL, and the data folder
of $TRAINYARD_DATA_DIR. Only the Python standard library.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import (Processes, database_urls, default_trainyard, free_port,  # noqa: E402
                           parse_time, start_api, wait_for)

SPECS = {
    "keras-cnn": {"preset": "keras-cnn", "epochs": 1},
    "torch-cnn": {"preset": "torch-cnn", "epochs": 2},
    "28x28 torch-cnn, Adam": {"preset": "torch-cnn", "epochs": 1, "batch_size": 128,
                              "dataset": {"resize": [28, 28], "train_limit": 10000},
                              "optimizer": {"type": "adam", "learning_rate": 0.001}},
    "64x64, strided conv": {"preset": "torch-cnn", "epochs": 1, "batch_size": 64,
                            "dataset": {"resize": [64, 64], "validation": "none"},
                            "model": {"layers": [
                                {"type": "conv2d", "filters": 8, "kernel": 8, "stride": 8,
                                 "activation": "relu"},
                                {"type": "flatten"},
                                {"type": "dense", "units": 10, "activation": "log_softmax"}]}},
    "wide dense, batch 4096": {"preset": "keras-cnn", "epochs": 1, "batch_size": 4096,
                               "dataset": {"train_limit": 20000},
                               "model": {"layers": [
                                   {"type": "flatten"},
                                   {"type": "dense", "units": 4096, "activation": "relu"},
                                   {"type": "dense", "units": 10, "activation": "softmax"}]}},
}


def log_lines(path):
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                pass


def job_lines(path, exp_id):
    """The log lines of one experiment's job span, by message."""
    out = {}
    for l in log_lines(path):
        span = l.get("span") or {}
        if span.get("experiment_id") == exp_id:
            out.setdefault(l["fields"].get("message"), []).append(l)
    return out


def in_process(exe, spec, data_dir, env):
    """`trainyard train` on the spec: each epoch's train_seconds and the peak RSS."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "spec.json")
        with open(path, "w") as f:
            json.dump(spec, f)
        p = subprocess.Popen([exe, "train", path, "--out", os.path.join(d, "out"), "--data-dir",
                              data_dir, "--no-download", "--device", "cpu"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            raise RuntimeError(f"trainyard train failed ({status}) on {spec}")
        with open(os.path.join(d, "out", "metrics.jsonl")) as f:
            epochs = [json.loads(l)["train_seconds"] for l in f if l.strip()]
        return epochs, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe", default=default_trainyard())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    data_dir = os.environ.get("TRAINYARD_DATA_DIR", "data")
    admin, url = database_urls("trainyard_jobbench")
    subprocess.run(["psql", admin, "-qc", "DROP DATABASE IF EXISTS trainyard_jobbench WITH (FORCE)"], check=True)
    subprocess.run(["psql", admin, "-qc", "CREATE DATABASE trainyard_jobbench"], check=True)
    logdir = tempfile.mkdtemp(prefix="jobbench-")
    cache = os.path.join(logdir, "prepared")
    env = dict(os.environ, DATABASE_URL=url, TRAINYARD_LOG_JSON="true", RUST_LOG="info,sqlx=warn")
    procs = Processes(logdir)
    log = os.path.join(logdir, "serve.log")
    rows = []
    try:
        _, api = start_api(procs, a.exe, free_port(), env, workers=1, extra=[
            "--device", "cpu", "--data-dir", data_dir, "--no-download", "--prepared-cache-dir",
            cache, "--prepared-cache-mib", "4096", "--job-memory-mib", "16384"])
        for name, spec in SPECS.items():
            spec = dict(spec, device="cpu")
            runs = []
            for _ in range(2):
                # A fresh connection: the last may have idled past the server's timeout.
                api.conn.close()
                _, exp_id = api.submit(spec)
                wait_for(name, lambda: api.request("GET", f"/experiments/{exp_id}")[1]["status"]
                         in ("succeeded", "failed"), 1800)
                _, e = api.request("GET", f"/experiments/{exp_id}")
                if e["status"] != "succeeded":
                    raise RuntimeError(f"{name}: {e.get('error')}")
                _, m = api.request("GET", f"/experiments/{exp_id}/metrics")
                time.sleep(0.2)
                lines = job_lines(log, exp_id)
                t_claim = parse_time(lines["claimed experiment"][0]["timestamp"])
                t_train = parse_time(lines["training started"][0]["timestamp"])
                ended = lines["job process ended"][0]["fields"]
                runs.append({
                    "start_s": t_train - t_claim,
                    "data_cached": lines["training started"][0]["fields"]["data_cached"],
                    "epoch_s": [r["train_seconds"] for r in m],
                    "peak_bytes": ended["peak_rss_mib"] * 2**20,
                    "estimate_bytes": e["footprint"]["peak_bytes"],
                })
            ref_epochs, ref_peak = in_process(a.exe, spec, data_dir, env)
            rows.append({"spec": name, "runs": runs, "in_process_epoch_s": ref_epochs,
                         "in_process_peak_bytes": ref_peak})
    finally:
        procs.stop_all()
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    mib = lambda b: b / 2**20  # noqa: E731
    print("| spec | start, data prepared (s) | start, data cached (s) | epoch, job process (s) "
          "| epoch, in-process (s) | Δ epoch | estimate (MiB) | peak, cold (MiB) | peak, cached (MiB) "
          "| estimate / cold peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cold, warm = r["runs"]
        job = statistics.median(cold["epoch_s"] + warm["epoch_s"])
        ref = statistics.median(r["in_process_epoch_s"])
        print(f"| {r['spec']} | {cold['start_s']:.2f} | {warm['start_s']:.2f} | {job:.2f} | {ref:.2f} "
              f"| {100 * (job / ref - 1):+.1f}% | {mib(cold['estimate_bytes']):.0f} "
              f"| {mib(cold['peak_bytes']):.0f} | {mib(warm['peak_bytes']):.0f} "
              f"| {cold['estimate_bytes'] / cold['peak_bytes']:.2f} |")


if __name__ == "__main__":
    main()
