"""A client nobody here wrote against trainyard's Open Inference Protocol routes:
NVIDIA's tritonclient[http] from PyPI, as a Triton user runs it.

Run by tests/it/v2.rs::tritonclient_* (with TRAINYARD_TRITON_PYTHON, a venv that
tests/run.sh makes), against a real server whose experiment has trained two epochs and
kept both checkpoints, on MNIST test images the test wrote: images.u8 (count x 28 x 28
raw pixels) and 0.png, 1.png, ... Every answer is compared with /predict's for the same
image (read with urllib), to float rounding.

Usage: python tests/v2_tritonclient.py --url HOST:PORT --model EXPERIMENT_ID
       --images DIR --count N
"""
import argparse
import json
import os
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

TOL = 1e-6


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}", flush=True)


def predict(base, model, png, checkpoint=None):
    """/predict's probabilities for one PNG."""
    url = f"{base}/predict?experiment={model}"
    if checkpoint is not None:
        url += f"&checkpoint={checkpoint}"
    req = urllib.request.Request(url, data=png, method="POST",
                                 headers={"content-type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return np.array(json.load(r)["predictions"][0]["probabilities"], dtype=np.float32)


def close(a, b):
    return a.shape == b.shape and float(np.max(np.abs(a - b))) <= TOL


def preprocess(spec, raw):
    """The spec's preprocessing as training applies it: each image resized with PIL's
    bilinear filter (torchvision's Resize), then x / 255 and (x - mean) / std in float32
    (ToTensor, Normalize)."""
    d = spec["dataset"]
    images = raw
    if d.get("resize") is not None:
        h, w = d["resize"]
        images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize((w, h), Image.BILINEAR))
                           for img in raw])
    x = images.astype(np.float32) / np.float32(255)
    norm = d.get("normalize")
    if norm:
        one = lambda v: np.float32(v[0] if isinstance(v, list) else v)
        x = (x - one(norm["mean"])) / one(norm["std"])
    return x.astype(np.float32)[:, None, :, :]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="host:port")
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    base = f"http://{args.url}"
    n, model = args.count, args.model
    raw = np.fromfile(os.path.join(args.images, "images.u8"), dtype=np.uint8).reshape(n, 28, 28)
    pngs = []
    for i in range(n):
        with open(os.path.join(args.images, f"{i}.png"), "rb") as f:
            pngs.append(f.read())
    want = np.stack([predict(base, model, p) for p in pngs])

    client = httpclient.InferenceServerClient(url=args.url)
    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    check(client.is_model_ready(model), "is_model_ready")
    check(client.is_model_ready(model, model_version="1"), "is_model_ready, version 1")
    check(not client.is_model_ready("00000000-0000-7000-8000-000000000000"),
          "an unknown model is not ready")
    server = client.get_server_metadata()
    check("binary_tensor_data" in server["extensions"], f"server metadata {server}")
    meta = client.get_model_metadata(model)
    check(meta["name"] == model and meta["versions"] == ["1", "2"], f"versions in {meta}")
    check(meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28]}],
          f"inputs in {meta}")
    check(meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
          f"outputs in {meta}")

    def infer(datatype, array, binary_in=True, binary_out=True, version=""):
        inp = httpclient.InferInput("images", list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary_in)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)
        res = client.infer(model, inputs=[inp], outputs=[out], model_version=version,
                           request_id="tc-1")
        r = res.get_response()
        if r["id"] != "tc-1" or r["model_name"] != model:
            sys.exit(f"FAILED: the response names {r}")
        return res.as_numpy("probabilities")

    # UINT8 raw pixels, binary in and out (tritonclient's default), then JSON both ways.
    uint8 = infer("UINT8", raw)
    check(uint8.dtype == np.float32 and uint8.shape == (n, 10), f"UINT8 output {uint8.shape}")
    check(close(uint8, want), "UINT8 binary in, binary out = /predict")
    check(close(infer("UINT8", raw, binary_in=False, binary_out=False), want),
          "UINT8 JSON in, JSON out = /predict")
    check(close(infer("UINT8", raw, binary_in=True, binary_out=False), want),
          "UINT8 binary in, JSON out = /predict")
    check(close(infer("UINT8", raw.reshape(n, 1, 28, 28)), want), "UINT8 [N, 1, 28, 28]")

    # FP32, preprocessed here as the spec says (the preset resizes to 8x8).
    with urllib.request.urlopen(f"{base}/experiments/{model}", timeout=30) as r:
        spec = json.load(r)["spec"]
    x = preprocess(spec, raw)
    check(x.shape[0] == n, f"preprocessed {x.shape}")
    check(close(infer("FP32", x), uint8), f"FP32 {list(x.shape)} binary = UINT8")
    check(close(infer("FP32", x, binary_in=False, binary_out=False), uint8), "FP32 JSON = UINT8")

    # BYTES: PNG files (binary only: tritonclient sends JSON BYTES as UTF-8 text).
    files = np.array(pngs, dtype=np.object_)
    check(close(infer("BYTES", files), want), "BYTES (PNG) binary in, binary out = /predict")
    check(close(infer("BYTES", files, binary_out=False), want), "BYTES (PNG), JSON out = /predict")

    # A version: that epoch's checkpoint, as /predict's checkpoint=1.
    v1 = np.stack([predict(base, model, p, checkpoint=1) for p in pngs])
    check(close(infer("UINT8", raw, version="1"), v1), "version 1 = /predict?checkpoint=1")

    # Errors reach the client as the server's message.
    try:
        infer("INT32", raw.astype(np.int32))
        sys.exit("FAILED: INT32 was taken")
    except InferenceServerException as e:
        check("INT32" in e.message(), f"a wrong datatype is refused: {e.message()}")
    try:
        client.get_model_metadata("00000000-0000-7000-8000-000000000000")
        sys.exit("FAILED: an unknown model has metadata")
    except InferenceServerException as e:
        check("not found" in e.message(), f"an unknown model: {e.message()}")
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    main()
