"""What a user does with a running `docker compose up`, step by step, for tests/compose.sh.

Standard library only: it runs on the host against the published port, as a user's client
would, with the admin key the first start printed. Each step exits non-zero with what it
saw when the stack does not do what it should.

  python3 tests/compose_check.py BASE KEY use          submit, follow the curve to its end,
                                                       predict a PNG, download a checkpoint;
                                                       prints the experiment id
  python3 tests/compose_check.py BASE KEY kept ID      after down/up: ID, its curve and its
                                                       checkpoint are still there
  python3 tests/compose_check.py BASE KEY long         submits a longer run, returns once it
                                                       has finished an epoch; prints its id
  python3 tests/compose_check.py BASE KEY resumed ID   ID finished after its worker stopped
                                                       mid-run: a second attempt, every epoch
                                                       once
"""
import gzip
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
# The MNIST test files the images are sent from (compose.sh points at its build context).
MNIST = os.environ.get("TRAINYARD_CHECK_MNIST",
                       os.path.join(HERE, "..", "docker", "data", "mnist"))


def fail(msg):
    sys.exit(f"compose_check: {msg}")


class Api:
    def __init__(self, base, key):
        self.base, self.key = base.rstrip("/"), key

    def request(self, method, path, body=None, ctype=None, timeout=60):
        headers = {"authorization": f"Bearer {self.key}"}
        if ctype:
            headers["content-type"] = ctype
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def json(self, method, path, value=None, expect=200):
        body = None if value is None else json.dumps(value).encode()
        status, _, out = self.request(method, path, body, "application/json" if body else None)
        if status != expect:
            fail(f"{method} {path}: {status}, wanted {expect}: {out[:400]!r}")
        return json.loads(out)

    def submit(self, preset, epochs, train_limit):
        spec = {"preset": preset, "epochs": epochs, "device": "cpu", "seed": 7,
                "dataset": {"train_limit": train_limit, "test_limit": 500}}
        return self.json("POST", "/experiments", spec, expect=201)["id"]

    def wait(self, exp_id, done, secs=900):
        deadline = time.time() + secs
        while time.time() < deadline:
            exp = self.json("GET", f"/experiments/{exp_id}")
            if done(exp):
                return exp
            if exp["status"] in ("failed", "cancelled"):
                fail(f"experiment {exp_id} ended {exp['status']}: {exp.get('error')}")
            time.sleep(0.5)
        fail(f"experiment {exp_id} still {exp['status']} after {secs}s")


def curve(api, exp_id):
    """Reads GET /experiments/{id}/curve to its `end` event; returns the events."""
    req = urllib.request.Request(f"{api.base}/experiments/{exp_id}/curve",
                                 headers={"authorization": f"Bearer {api.key}",
                                          "accept": "text/event-stream"})
    events, kind, data = [], None, []
    with urllib.request.urlopen(req, timeout=900) as r:
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            fail(f"the curve came as {r.headers.get('content-type')}")
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and kind:
                events.append((kind, json.loads("\n".join(data))))
                if kind == "end":
                    return events
                kind, data = None, []
    fail(f"the curve of {exp_id} closed without an end event")


def mnist_png(index):
    """A real MNIST test image, as a grayscale PNG made with zlib."""
    path = os.path.join(MNIST, "t10k-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        raw = f.read()
    rows, cols = struct.unpack(">II", raw[8:16])
    start = 16 + index * rows * cols
    pixels = raw[start:start + rows * cols]
    scanlines = b"".join(b"\x00" + pixels[r * cols:(r + 1) * cols] for r in range(rows))

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b""))


def mnist_label(index):
    path = os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz")
    with gzip.open(path) as f:
        return f.read()[8 + index]


def check_checkpoint(api, exp_id):
    status, headers, body = api.request("GET", f"/experiments/{exp_id}/checkpoints/best")
    if status != 200:
        fail(f"checkpoint download: {status} {body[:200]!r}")
    (n,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8:8 + n])
    tensors = [k for k in header if k != "__metadata__"]
    if not tensors or len(body) < 8 + n + 1000:
        fail(f"the checkpoint is not a safetensors file with weights ({len(body)} bytes)")
    return len(body), len(tensors)


def check_predict(api, exp_id):
    right = 0
    for i in range(20):
        status, _, out = api.request("POST", f"/predict?experiment={exp_id}", mnist_png(i),
                                     "image/png")
        if status != 200:
            fail(f"predict: {status} {out[:300]!r}")
        right += json.loads(out)["predictions"][0]["label"] == mnist_label(i)
    if right < 17:
        fail(f"predict got {right} of 20 MNIST test images right")
    return right


def use(api):
    exp_id = api.submit("keras-cnn", epochs=2, train_limit=6000)
    events = curve(api, exp_id)
    epochs = [d for k, d in events if k == "epoch"]
    end = events[-1][1]
    if end["status"] != "succeeded" or len(epochs) != 2:
        fail(f"the curve ended {end['status']} after {len(epochs)} epoch events")
    right = check_predict(api, exp_id)
    size, tensors = check_checkpoint(api, exp_id)
    print(f"use: {exp_id} trained keras-cnn 2 epochs (val_loss {epochs[-1].get('val_loss')}), "
          f"predict {right}/20 right, checkpoint {size} bytes with {tensors} tensors",
          file=sys.stderr)
    print(exp_id)


def kept(api, exp_id):
    exp = api.json("GET", f"/experiments/{exp_id}")
    if exp["status"] != "succeeded":
        fail(f"after down/up {exp_id} is {exp['status']}")
    rows = api.json("GET", f"/experiments/{exp_id}/metrics")
    rows = rows.get("epochs", rows) if isinstance(rows, dict) else rows
    if len(rows) != 2:
        fail(f"after down/up {exp_id} has {len(rows)} epochs of metrics")
    check_checkpoint(api, exp_id)
    check_predict(api, exp_id)
    print(f"kept: {exp_id} and its metrics, checkpoint and predictions", file=sys.stderr)


def long(api):
    exp_id = api.submit("keras-cnn", epochs=4, train_limit=12000)
    api.wait(exp_id, lambda e: e["status"] == "running" and e["epochs_done"] >= 1)
    print(exp_id)


def resumed(api, exp_id):
    exp = api.wait(exp_id, lambda e: e["status"] == "succeeded")
    if exp["attempt"] < 2:
        fail(f"{exp_id} finished in attempt {exp['attempt']}: the stop did not hand it back")
    events = curve(api, exp_id)
    epochs = [d["epoch"] for k, d in events if k == "epoch"]
    if epochs != [1, 2, 3, 4]:
        fail(f"{exp_id} recorded epochs {epochs} across its attempts")
    print(f"resumed: {exp_id} finished in attempt {exp['attempt']}, epochs {epochs}",
          file=sys.stderr)


def main():
    if len(sys.argv) < 4:
        fail(__doc__)
    api, step, rest = Api(sys.argv[1], sys.argv[2]), sys.argv[3], sys.argv[4:]
    {"use": use, "kept": kept, "long": long, "resumed": resumed}[step](api, *rest)


if __name__ == "__main__":
    main()
