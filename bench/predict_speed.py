"""POST /predict throughput and latency: trainyard against FastAPI + PyTorch, side by side.

One command, one run, the same load against each server in turn:
  1. starts `trainyard serve` (API and one worker) on a free port over PostgreSQL
     (DATABASE_URL, database `trainyard_bench`), trains the preset for one epoch on a small
     slice through the API, and downloads its best checkpoint;
  2. starts bench/predict_reference.py (FastAPI + PyTorch, 2 threads) on that checkpoint;
  3. checks both give the same classes for the same images;
  4. runs wrk (many connections, fixed duration, real MNIST test images as PNG bodies)
     against trainyard, then against the reference, after a warm-up each;
  5. prints req/s, p50, p99, errors, the CPU each server used, and the ratios.
It exits non-zero on any error response, and stops every process it started.

Needs: a release build (cargo build --release), PostgreSQL, wrk (apt-get install wrk), and
torch, fastapi, uvicorn, safetensors, pillow, numpy in the Python that runs this script.
Client and servers share this machine's cores; the table says how many.

Usage: python bench/predict_speed.py [--preset keras-cnn|torch-cnn|both] [--duration 10]
       [--connections 64] [--exe PATH] [--data-dir ../shared/data]
"""
import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, log, env=None):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    PROCS.clear()


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_up(url, proc, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: the server exited with {proc.returncode} (see its log)")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not come up in {secs}s")


def cpu_seconds(pid):
    """User + system CPU of a process and its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mnist_pngs(data_dir, n, out_dir):
    with gzip.open(os.path.join(data_dir, "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    count, rows, cols = struct.unpack(">III", raw[4:16])
    imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)[:n]
    paths = []
    for i, img in enumerate(imgs):
        p = os.path.join(out_dir, f"{i}.png")
        Image.fromarray(img, mode="L").save(p)
        paths.append(p)
    return paths


def train(base, preset, train_images, log):
    spec = {"preset": preset, "epochs": 1, "device": "cpu",
            "dataset": {"train_limit": train_images, "test_limit": 500}}
    status, body = http("POST", f"{base}/experiments", json.dumps(spec).encode(),
                        {"content-type": "application/json"})
    if status != 201:
        sys.exit(f"submitting {preset}: {status} {body[:300]!r}")
    exp = json.loads(body)
    print(f"[{preset}] training experiment {exp['id']} (1 epoch, {train_images} images)...",
          file=log, flush=True)
    t0 = time.time()
    while True:
        exp = json.loads(http("GET", f"{base}/experiments/{exp['id']}")[1])
        if exp["status"] == "succeeded":
            break
        if exp["status"] in ("failed", "cancelled"):
            sys.exit(f"training {preset} ended {exp['status']}: {exp.get('error')}")
        if time.time() - t0 > 900:
            sys.exit(f"training {preset} took over 15 minutes")
        time.sleep(0.5)
    print(f"[{preset}] trained in {time.time() - t0:.0f}s", file=log, flush=True)
    return exp["id"]


def wrk(url, image_dir, count, connections, duration, threads, key=None):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
           "-s", os.path.join(HERE, "predict_wrk.lua"), url, "--", image_dir, str(count)]
    if key:
        cmd.append(key)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    return json.loads(line[len("WRK_JSON "):])


def measure(name, url, pid, args, image_dir, count, key=None, warmup=True):
    if warmup:
        wrk(url, image_dir, count, args.connections, args.warmup, args.threads, key)
    c0 = cpu_seconds(pid)
    r = wrk(url, image_dir, count, args.connections, args.duration, args.threads, key)
    cpu = cpu_seconds(pid) - c0
    secs = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"name": name, "rps": r["requests"] / secs, "p50": r["p50_us"] / 1e3,
            "p99": r["p99_us"] / 1e3, "errors": errors, "requests": r["requests"],
            "cpu": cpu / secs, "raw": r}


def check_same(ours, ref, image_dir, count):
    """Both servers give the same class for the same image (and near-equal probabilities)."""
    worst, differ = 0.0, 0
    for i in range(count):
        with open(os.path.join(image_dir, f"{i}.png"), "rb") as f:
            body = f.read()
        answers = []
        for url in (ours, ref):
            status, out = http("POST", url, body, {"content-type": "image/png"})
            if status != 200:
                sys.exit(f"{url}: {status} {out[:300]!r}")
            answers.append(json.loads(out)["predictions"][0])
        a, b = answers
        differ += a["label"] != b["label"]
        worst = max(worst, max(abs(x - y) for x, y in zip(a["probabilities"], b["probabilities"])))
    return differ, worst


def bench_preset(preset, args, tmp, log):
    db = urllib.parse.urlsplit(args.database_url)._replace(path="/trainyard_bench").geturl()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DATABASE_URL=db, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    # Without keys (loopback only), as the reference has none.
    serve = start([args.exe, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                   "--data-dir", args.data_dir, "--no-download", "--auth", "off"], log, env)
    wait_up(f"{base}/readyz", serve)
    exp_id = train(base, preset, args.train_images, log)
    status, weights = http("GET", f"{base}/experiments/{exp_id}/checkpoints/best")
    if status != 200:
        sys.exit(f"downloading the checkpoint: {status}")
    ckpt = os.path.join(tmp, f"{preset}.safetensors")
    with open(ckpt, "wb") as f:
        f.write(weights)

    ref_port = free_port()
    ref = start([sys.executable, os.path.join(HERE, "predict_reference.py"), "--checkpoint",
                 ckpt, "--port", str(ref_port), "--threads", str(args.torch_threads)], log)
    ref_base = f"http://127.0.0.1:{ref_port}"
    wait_up(f"{ref_base}/healthz", ref, 120)

    ours_url = f"{base}/predict?experiment={exp_id}&top_k=3"
    ref_url = f"{ref_base}/predict?experiment={exp_id}&top_k=3"
    image_dir = os.path.join(tmp, "images")
    differ, worst = check_same(ours_url, ref_url, image_dir, 100)
    print(f"[{preset}] 100 images: {differ} classes differ, max |p_trainyard - p_torch| = "
          f"{worst:.2e}", flush=True)

    # One server at a time: the other idles, so each gets the whole machine but wrk's share.
    rows = [measure("trainyard", ours_url, serve.pid, args, image_dir, args.images),
            measure("fastapi+torch", ref_url, ref.pid, args, image_dir, args.images)]
    stop_all()
    return rows, differ


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="keras-cnn", choices=["keras-cnn", "torch-cnn", "both"])
    ap.add_argument("--duration", type=int, default=10, help="seconds measured per server")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of load before measuring")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--images", type=int, default=1000, help="distinct MNIST test images sent")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--torch-threads", type=int, default=2, help="the reference's torch threads")
    ap.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--exe", default=os.path.join(target, "release", "trainyard"))
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    if not os.path.exists(args.exe):
        sys.exit(f"{args.exe} is missing: run cargo build --release")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    presets = ["keras-cnn", "torch-cnn"] if args.preset == "both" else [args.preset]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "servers.log")
        try:
            os.makedirs(os.path.join(tmp, "images"))
            mnist_pngs(args.data_dir, max(args.images, 100), os.path.join(tmp, "images"))
            results = []
            with open(log_path, "w") as log:
                for preset in presets:
                    rows, differ = bench_preset(preset, args, tmp, log)
                    results.append((preset, rows))
                    failed |= differ > 0
        except BaseException:
            stop_all()
            if os.path.exists(log_path):
                sys.stderr.write("--- server logs (last 40 lines) ---\n")
                with open(log_path) as f:
                    sys.stderr.writelines(f.readlines()[-40:])
            raise
        finally:
            stop_all()

    print(f"\nPOST /predict, one PNG image per request; wrk {args.connections} "
          f"connections x {args.duration}s per server after {args.warmup}s warm-up, "
          f"{args.images} distinct MNIST test images.")
    print(f"Client and server share this machine's {os.cpu_count()} cores "
          f"(wrk uses {args.threads} thread); 'cpu' is the server's cores busy on average.")
    print(f"Load average before the run: {load_before}; the reference uses "
          f"torch.set_num_threads({args.torch_threads}).\n")
    print(f"{'preset':10} {'server':14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>7} {'cpu':>5}")
    for preset, rows in results:
        for r in rows:
            print(f"{preset:10} {r['name']:14} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} "
                  f"{r['errors']:7d} {r['cpu']:5.2f}")
            failed |= r["errors"] > 0
        ours, ref = rows
        print(f"{preset:10} {'ratio':14} {ours['rps'] / ref['rps']:8.1f}x "
              f"{ours['p50'] / ref['p50']:7.2f}x {ours['p99'] / ref['p99']:7.2f}x")
    if failed:
        print("\nFAILED: error responses or differing classes (see above)", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
