"""Upload throughput and upload-to-first-batch of `POST /datasets`, with a reference.

Makes a class-folder zip of about `--mb` MB (ten classes of 64x64 RGB PNGs of noise, which
PNG cannot shrink), starts `trainyard serve` with one worker, and measures:
  (a) upload: from the first byte sent to the 201 (streamed to a temporary file, every
      image decoded, the tensors hashed and stored in PostgreSQL), as MB/s of the zip;
  (b) upload to first batch: from the first byte of the upload to the `training_started_at`
      of an experiment submitted on the dataset as soon as the upload answered (the claim,
      the worker loading the tensors from the database, preparing and building the model);
  (c) the reference, in the same run: what a Python user's own loader costs for the same
      zip, Pillow decoding every image into one numpy array (as `ImageFolder` with
      `ToTensor` does, minus the tensor conversion), single-threaded.

    venv/bin/python bench/upload.py [--mb 100] [--json]

Needs numpy and Pillow (the reference venv of ../shared/reference has them), the release
binary (`cargo build --release`), PostgreSQL at $DATABASE_URL (database
`trainyard_upload`, created if missing).
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import queue_latency as ql  # noqa: E402  (the process and API helpers)


def make_zip(path, mb):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    target = mb * 1_000_000
    n = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        while os.path.getsize(path) < target:
            img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=1)
            z.writestr(f"noise/class{n % 10}/{n:06d}.png", buf.getvalue())
            n += 1
            if n % 500 == 0:
                z.fp.flush()
    return n


def reference(path):
    """Pillow decoding every image of the zip into one array; seconds."""
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png"))
        out = np.empty((len(names), 64, 64, 3), dtype=np.uint8)
        for i, n in enumerate(names):
            out[i] = np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB"))
    return time.perf_counter() - start


def upload(port, path):
    import http.client

    size = os.path.getsize(path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.connect()
    started = time.time()
    with open(path, "rb") as f:
        conn.request("POST", "/datasets?name=noise", body=f,
                     headers={"content-type": "application/zip", "content-length": str(size)})
        r = conn.getresponse()
        body = json.loads(r.read())
    answered = time.time()
    if r.status != 201:
        raise RuntimeError(f"POST /datasets: {r.status} {body}")
    return started, answered, body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--trainyard", default=ql.default_trainyard())
    a = p.parse_args()
    base, url = ql.database_urls("trainyard_upload")
    subprocess.run(["psql", base, "-qc", "DROP DATABASE IF EXISTS trainyard_upload"], check=True)
    subprocess.run(["psql", base, "-qc", "CREATE DATABASE trainyard_upload"], check=True)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "noise.zip")
    images = make_zip(path, a.mb)
    size = os.path.getsize(path)
    ref_secs = reference(path)

    procs = ql.Processes(tmp)
    env = dict(os.environ, TRAINYARD_LOG_JSON="true")
    port = ql.free_port()
    try:
        procs.start("serve", [a.trainyard, "serve", "--bind", f"127.0.0.1:{port}",
                              "--database-url", url, "--auth", "off", "--workers", "1",
                              "--device", "cpu", "--no-download"], env)
        api = ql.Api(port)
        deadline = time.time() + 60
        while True:
            try:
                if api.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        started, answered, d = upload(port, path)
        spec = {"version": 1, "dataset": {"id": d["id"]},
                "model": {"layers": [
                    {"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"},
                    {"type": "max_pool2d", "size": 2}, {"type": "flatten"},
                    {"type": "dense", "units": 10, "activation": "log_softmax"}]},
                "optimizer": {"type": "sgd", "learning_rate": 0.01},
                "epochs": 1, "batch_size": 64, "device": "cpu"}
        sent_at, exp_id = api.submit(spec)
        while True:
            _, e = api.request("GET", f"/experiments/{exp_id}")
            if e["training_started_at"]:
                break
            if e["status"] in ("failed", "cancelled"):
                raise RuntimeError(e)
            time.sleep(0.02)
        first_batch = ql.parse_time(e["training_started_at"])
        api.request("POST", f"/experiments/{exp_id}/cancel")
    finally:
        procs.stop_all()
    upload_secs = answered - started
    out = {
        "zip_mb": round(size / 1e6, 1),
        "images": images,
        "upload_seconds": round(upload_secs, 2),
        "upload_mb_per_s": round(size / 1e6 / upload_secs, 1),
        "upload_to_first_batch_seconds": round(first_batch - started, 2),
        "submit_to_first_batch_seconds": round(first_batch - sent_at, 3),
        "reference_pillow_decode_seconds": round(ref_secs, 2),
        "reference_pillow_mb_per_s": round(size / 1e6 / ref_secs, 1),
        "new_content": d["new_content"],
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:36} {v}")


if __name__ == "__main__":
    main()
