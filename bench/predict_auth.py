"""POST /predict with API keys against without: what checking a key costs, side by side.

One command, one run, the same binary and the same trained model behind both servers:
  1. starts `trainyard serve --auth off` on a free port over PostgreSQL (DATABASE_URL,
     database `trainyard_bench`) and trains the preset for one epoch on a small slice; the
     experiment belongs to the `default` account;
  2. makes a key for that account with `trainyard keys create --account default`;
  3. runs two API-only servers (`--workers 0`) side by side: one `--auth off`, one with keys
     and a predict rate limit far above what this machine can serve, so that the limiter
     runs on every request but never refuses;
  4. checks that the keyed server refuses a request without the key (401) and answers
     with it exactly as the open one does;
  5. runs wrk against each in turn, alternating which goes first each round (ABBA), so that
     drift of the machine falls on both; each wrk request of the keyed run carries
     `Authorization: Bearer KEY`;
  6. prints every round, the medians, and keyed/open as a ratio (the goal: within 5%).
It exits non-zero on any error response, and stops every process it started.

Needs what bench/predict_speed.py needs, less torch and FastAPI: a release build, PostgreSQL,
wrk, numpy and pillow.

Usage: python bench/predict_auth.py [--rounds 6] [--duration 10] [--connections 64]
       [--preset keras-cnn] [--exe PATH] [--data-dir ../shared/data]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.parse

import predict_speed as ps


def serve(args, env, port, log, extra):
    proc = ps.start([args.exe, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir",
                     args.data_dir, "--no-download", *extra], log, env)
    ps.wait_up(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def run(args, tmp, log):
    db = urllib.parse.urlsplit(args.database_url)._replace(path="/trainyard_bench").geturl()
    env = dict(os.environ, DATABASE_URL=db, RUST_LOG=os.environ.get("RUST_LOG", "warn"))

    port = ps.free_port()
    trainer = serve(args, env, port, log, ["--workers", "1", "--auth", "off"])
    exp_id = ps.train(f"http://127.0.0.1:{port}", args.preset, args.train_images, log)
    ps.stop_all()

    key = subprocess.run([args.exe, "keys", "create", "--account", "default"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not key.startswith("ty_"):
        sys.exit(f"keys create printed {key[:20]!r}, not a key")

    open_port, keyed_port = ps.free_port(), ps.free_port()
    open_srv = serve(args, env, open_port, log, ["--workers", "0", "--auth", "off"])
    keyed_srv = serve(args, env, keyed_port, log, [
        "--workers", "0", "--auth", "on", "--rate-limit-predict", str(args.rate_limit)])
    query = f"/predict?experiment={exp_id}&top_k=3"
    servers = {
        "open": (f"http://127.0.0.1:{open_port}{query}", open_srv.pid, None),
        "keyed": (f"http://127.0.0.1:{keyed_port}{query}", keyed_srv.pid, key),
    }

    image_dir = os.path.join(tmp, "images")
    with open(os.path.join(image_dir, "0.png"), "rb") as f:
        body = f.read()
    png = {"content-type": "image/png"}
    status, _ = ps.http("POST", servers["keyed"][0], body, png)
    if status != 401:
        sys.exit(f"the keyed server answered {status} to a request without a key")
    answers = [ps.http("POST", servers["open"][0], body, png),
               ps.http("POST", servers["keyed"][0], body,
                       dict(png, authorization=f"Bearer {key}"))]
    if any(s != 200 for s, _ in answers):
        sys.exit(f"predict answered {[s for s, _ in answers]}")
    if json.loads(answers[0][1])["predictions"] != json.loads(answers[1][1])["predictions"]:
        sys.exit("the two servers answered the same image differently")

    for name, (url, pid, k) in servers.items():  # warm both before the first round
        ps.wrk(url, image_dir, args.images, args.connections, args.warmup, args.threads, k)
    rounds = []
    for i in range(args.rounds):
        order = ["open", "keyed"] if i % 2 == 0 else ["keyed", "open"]
        row = {}
        for name in order:
            url, pid, k = servers[name]
            row[name] = ps.measure(name, url, pid, args, image_dir, args.images, k,
                                   warmup=False)
        rounds.append(row)
        print(f"round {i + 1}: open {row['open']['rps']:.0f} req/s, keyed "
              f"{row['keyed']['rps']:.0f} req/s ({order[0]} first)", flush=True)
    ps.stop_all()
    return rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="keras-cnn", choices=["keras-cnn", "torch-cnn"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=int, default=10, help="seconds measured per run")
    ap.add_argument("--warmup", type=int, default=5, help="seconds of load before round 1")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--images", type=int, default=1000, help="distinct MNIST test images sent")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--rate-limit", type=int, default=1_000_000,
                    help="the keyed server's --rate-limit-predict (per key per second)")
    ap.add_argument("--database-url", default=os.environ.get(
        "DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ps.ROOT, "target"))
    ap.add_argument("--exe", default=os.path.join(target, "release", "trainyard"))
    ap.add_argument("--data-dir", default=os.path.join(ps.ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    if not os.path.exists(args.exe):
        sys.exit(f"{args.exe} is missing: run cargo build --release")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "servers.log")
        try:
            os.makedirs(os.path.join(tmp, "images"))
            ps.mnist_pngs(args.data_dir, args.images, os.path.join(tmp, "images"))
            with open(log_path, "w") as log:
                rounds = run(args, tmp, log)
        except BaseException:
            ps.stop_all()
            if os.path.exists(log_path):
                sys.stderr.write("--- server logs (last 40 lines) ---\n")
                with open(log_path) as f:
                    sys.stderr.writelines(f.readlines()[-40:])
            raise
        finally:
            ps.stop_all()

    print(f"\nPOST /predict ({args.preset}), one PNG per request; wrk {args.connections} "
          f"connections x {args.duration}s per run, {args.rounds} rounds alternating order, "
          f"{args.images} distinct MNIST test images.")
    print(f"Client and servers share this machine's {os.cpu_count()} cores; load average "
          f"before the run: {load_before}. 'keyed': --auth on, a Bearer key on every request, "
          f"rate limit {args.rate_limit}/s.\n")
    print(f"{'server':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cpu':>5} "
          f"{'cpu us/req':>10}   (medians over rounds)")
    med = {}
    failed = False
    for name in ("open", "keyed"):
        rows = [r[name] for r in rounds]
        for r in rows:  # server CPU per answered request: steadier than req/s on a shared machine
            r["cpu_us"] = r["cpu"] / r["rps"] * 1e6
        med[name] = {m: statistics.median(r[m] for r in rows)
                     for m in ("rps", "p50", "p99", "cpu", "cpu_us")}
        errors = sum(r["errors"] for r in rows)
        failed |= errors > 0
        m = med[name]
        print(f"{name:8} {m['rps']:9.0f} {m['p50']:8.2f} {m['p99']:8.2f} {errors:7d} "
              f"{m['cpu']:5.2f} {m['cpu_us']:10.1f}")
    ratio = med["keyed"]["rps"] / med["open"]["rps"]
    per_round = [r["keyed"]["rps"] / r["open"]["rps"] for r in rounds]
    print(f"keyed/open throughput: {ratio:.3f} (per round: "
          f"{', '.join(f'{x:.3f}' for x in per_round)}); p50 "
          f"{med['keyed']['p50'] / med['open']['p50']:.3f}, p99 "
          f"{med['keyed']['p99'] / med['open']['p99']:.3f}, CPU per request "
          f"{med['keyed']['cpu_us'] / med['open']['cpu_us']:.3f}")
    if failed:
        print("\nFAILED: error responses (see above)", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
