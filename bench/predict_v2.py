"""POST /v2/models/{id}/infer against POST /predict: the same server, checkpoint, images
and load, side by side.

One command, one run:
  1. starts `trainyard serve --auth off` (API and one worker) on a free port over
     PostgreSQL (DATABASE_URL, database `trainyard_bench`) and trains the preset for one
     epoch on a small slice through the API;
  2. writes every request of the run once: /predict's PNG bodies (one image, or several
     as multipart), and the Open Inference Protocol's of the same images in three forms:
     UINT8 raw pixels with the binary tensor data extension in and out (what tritonclient
     sends by default), BYTES PNG files binary in and out (the same decoding /predict
     does), and UINT8 as JSON in and out;
  3. checks that each v2 form answers every checked image with /predict's probabilities
     (to 1e-6);
  4. runs wrk (many connections, fixed duration) against each endpoint in turn, in
     rounds, rotating which goes first each round so that drift of the machine falls on
     all of them; all of them hit the same loaded model and its batcher;
  5. prints every round, the medians of images/s, p50, p99 and server CPU per image, and
     each v2 form's throughput over /predict's (the goal: within 10%).
It exits non-zero on any error response or differing answer, and stops every process it
started.

Needs what bench/predict_speed.py needs, less torch and FastAPI: a release build,
PostgreSQL, wrk, numpy and pillow.

Usage: python bench/predict_v2.py [--preset torch-cnn] [--rounds 4] [--duration 10]
       [--connections 64] [--per-request 1] [--exe PATH] [--data-dir ../shared/data]
"""
import argparse
import gzip
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

import predict_speed as ps

FORMS = ["predict", "v2-uint8-binary", "v2-bytes-binary", "v2-uint8-json"]


def mnist(data_dir, n):
    with gzip.open(os.path.join(data_dir, "mnist", "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    count, rows, cols = struct.unpack(">III", raw[4:16])
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)[:n]


def v2_binary(inputs_json, binary, binary_out=True):
    """The JSON header and its binary tensor data, with the extension's header."""
    req = {"inputs": [inputs_json]}
    if binary_out:
        req["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    head = json.dumps(req, separators=(",", ":")).encode()
    return head + binary, {"Inference-Header-Content-Length": str(len(head)),
                           "Content-Type": "application/octet-stream"}


def requests_of(form, images, pngs):
    """The body and headers of one request of `form` for these images."""
    k = len(images)
    if form == "predict":
        if k == 1:
            return pngs[0], {"Content-Type": "image/png"}
        boundary = "trainyardbench"
        body = b""
        for i, p in enumerate(pngs):
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{i}\"; "
                     f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
            body += p + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if form == "v2-uint8-binary":
        raw = np.ascontiguousarray(images).tobytes()
        return v2_binary({"name": "images", "datatype": "UINT8", "shape": [k, 28, 28],
                          "parameters": {"binary_data_size": len(raw)}}, raw)
    if form == "v2-bytes-binary":
        data = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
        return v2_binary({"name": "images", "datatype": "BYTES", "shape": [k],
                          "parameters": {"binary_data_size": len(data)}}, data)
    if form == "v2-uint8-json":
        req = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [k, 28, 28],
                           "data": images.reshape(-1).tolist()}]}
        return json.dumps(req, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
    raise ValueError(form)


def write_requests(form, imgs, pngs, per_request, out_dir):
    os.makedirs(out_dir)
    count = len(imgs) // per_request
    for r in range(count):
        sl = slice(r * per_request, (r + 1) * per_request)
        body, headers = requests_of(form, imgs[sl], pngs[sl])
        with open(os.path.join(out_dir, f"{r}.body"), "wb") as f:
            f.write(body)
        with open(os.path.join(out_dir, f"{r}.hdr"), "w") as f:
            f.writelines(f"{k}: {v}\n" for k, v in headers.items())
    return count


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def probabilities(form, status, headers, body):
    """The answer's probabilities, one row per image."""
    if status != 200:
        sys.exit(f"{form}: {status} {body[:300]!r}")
    if form == "predict":
        return np.array([p["probabilities"] for p in json.loads(body)["predictions"]],
                        dtype=np.float32)
    n = headers.get("Inference-Header-Content-Length")
    if n is None:
        out = json.loads(body)["outputs"][0]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    out = json.loads(body[:int(n)])["outputs"][0]
    return np.frombuffer(body[int(n):], dtype="<f4").reshape(out["shape"])


def wrk(url, req_dir, count, args, duration):
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--timeout",
           "10s", "-s", os.path.join(ps.HERE, "requests_wrk.lua"), url, "--", req_dir, str(count)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    return json.loads(line[len("WRK_JSON "):])


def measure(url, req_dir, count, pid, args):
    c0 = ps.cpu_seconds(pid)
    r = wrk(url, req_dir, count, args, args.duration)
    cpu = ps.cpu_seconds(pid) - c0
    secs = r["duration_us"] / 1e6
    images = r["requests"] * args.per_request
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"ips": images / secs, "p50": r["p50_us"] / 1e3, "p99": r["p99_us"] / 1e3,
            "errors": errors, "cpu": cpu / secs, "cpu_us": cpu / max(images, 1) * 1e6}


def run(args, tmp, log):
    db = urllib.parse.urlsplit(args.database_url)._replace(path="/trainyard_bench").geturl()
    env = dict(os.environ, DATABASE_URL=db, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    port = ps.free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ps.start([args.exe, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                      "--data-dir", args.data_dir, "--no-download", "--auth", "off"], log, env)
    ps.wait_up(f"{base}/readyz", serve)
    exp_id = ps.train(base, args.preset, args.train_images, log)
    urls = {"predict": f"{base}/predict?experiment={exp_id}&top_k=3"}
    for form in FORMS[1:]:
        urls[form] = f"{base}/v2/models/{exp_id}/infer"

    imgs = mnist(args.data_dir, args.images)
    pngs = []
    for i in range(args.images):
        with open(os.path.join(tmp, "images", f"{i}.png"), "rb") as f:
            pngs.append(f.read())
    dirs, counts = {}, {}
    for form in FORMS:
        dirs[form] = os.path.join(tmp, form)
        counts[form] = write_requests(form, imgs, pngs, args.per_request, dirs[form])

    # Every form answers the checked requests as /predict does.
    worst = 0.0
    for r in range(min(args.check, counts["predict"])):
        answers = {}
        for form in FORMS:
            with open(os.path.join(dirs[form], f"{r}.body"), "rb") as f:
                body = f.read()
            with open(os.path.join(dirs[form], f"{r}.hdr")) as f:
                headers = dict(l.rstrip("\n").split(": ", 1) for l in f)
            answers[form] = probabilities(form, *post(urls[form], body, headers))
        for form in FORMS[1:]:
            diff = float(np.max(np.abs(answers[form] - answers["predict"])))
            worst = max(worst, diff)
            if diff > 1e-6:
                sys.exit(f"{form} differs from /predict by {diff} on request {r}")
    print(f"{min(args.check, counts['predict'])} requests of {args.per_request} image(s): every "
          f"v2 form gives /predict's probabilities (largest difference {worst:.1e})", flush=True)

    for form in FORMS:  # warm each before the first round
        wrk(urls[form], dirs[form], counts[form], args, args.warmup)
    rounds = []
    for i in range(args.rounds):
        order = FORMS[i % len(FORMS):] + FORMS[:i % len(FORMS)]
        row = {form: measure(urls[form], dirs[form], counts[form], serve.pid, args)
               for form in order}
        rounds.append(row)
        print(f"round {i + 1} ({order[0]} first): " + ", ".join(
            f"{form} {row[form]['ips']:.0f}" for form in FORMS) + " images/s", flush=True)
    ps.stop_all()
    return rounds, exp_id


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="torch-cnn", choices=["keras-cnn", "torch-cnn"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=10, help="seconds measured per run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of load per form before round 1")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--images", type=int, default=1000, help="distinct MNIST test images sent")
    ap.add_argument("--per-request", type=int, default=1, help="images in each request")
    ap.add_argument("--check", type=int, default=50, help="requests checked against /predict")
    ap.add_argument("--train-images", type=int, default=2000)
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
    if not 1 <= args.per_request <= 64 or args.images < args.per_request:
        sys.exit("--per-request is 1 to 64, and at most --images")

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "servers.log")
        try:
            os.makedirs(os.path.join(tmp, "images"))
            ps.mnist_pngs(args.data_dir, args.images, os.path.join(tmp, "images"))
            with open(log_path, "w") as log:
                rounds, _ = run(args, tmp, log)
        except BaseException:
            ps.stop_all()
            if os.path.exists(log_path):
                sys.stderr.write("--- server logs (last 40 lines) ---\n")
                with open(log_path) as f:
                    sys.stderr.writelines(f.readlines()[-40:])
            raise
        finally:
            ps.stop_all()

    print(f"\n{args.preset}, {args.per_request} image(s) per request; wrk {args.connections} "
          f"connections x {args.duration}s per run, {args.rounds} rounds rotating the order, "
          f"{args.images} distinct MNIST test images; one server, one model and batcher.")
    print(f"Client and server share this machine's {os.cpu_count()} cores; load average "
          f"before the run: {load_before}.\n")
    print(f"{'endpoint':16} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'cpu':>5} {'cpu us/img':>10} {'vs /predict':>11}   (medians over rounds)")
    med = {}
    failed = False
    for form in FORMS:
        rows = [r[form] for r in rounds]
        med[form] = {m: statistics.median(r[m] for r in rows)
                     for m in ("ips", "p50", "p99", "cpu", "cpu_us")}
        errors = sum(r["errors"] for r in rows)
        failed |= errors > 0
        m = med[form]
        ratio = m["ips"] / med["predict"]["ips"]
        print(f"{form:16} {m['ips']:9.0f} {m['p50']:8.2f} {m['p99']:8.2f} {errors:7d} "
              f"{m['cpu']:5.2f} {m['cpu_us']:10.1f} {ratio:10.3f}x")
    for form in FORMS[1:]:
        per_round = [r[form]["ips"] / r["predict"]["ips"] for r in rounds]
        print(f"{form} / predict per round: {', '.join(f'{x:.3f}' for x in per_round)}")
    if failed:
        print("\nFAILED: error responses (see above)", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
