"""The reference for trainyard's POST /predict: FastAPI + PyTorch serving the same checkpoint.

Not shipped; `bench/predict_speed.py` starts it beside trainyard and loads both equally.
It is written the way one would deploy a small PyTorch classifier behind FastAPI: the model
is built and loaded once at start-up, inference runs under `torch.inference_mode()`, uvicorn
runs one worker with uvloop and httptools, and torch uses 2 threads (the machine's cores; `--threads`).

The request and the answer are trainyard's: the body is one image (PNG, JPEG or PGM) or
multipart/form-data with image parts; `?top_k=` (default 3); the JSON has `experiment`,
`epoch` and per image `label`, `class_name`, `probabilities` and `top_k`. The
preprocessing is trainyard's too (see tests/fixtures/parity/check_export.py): decode,
grayscale with PIL's convert("L"), PIL bilinear to 28x28 if needed, then the spec's own
resize and normalisation.

Usage: python bench/predict_reference.py --checkpoint best.safetensors [--port 8001]
"""
import argparse
import importlib.util
import io
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]


def _from_spec_class():
    """The nn.Module-from-spec builder of the parity check (one definition of it)."""
    path = os.path.join(HERE, "..", "tests", "fixtures", "parity", "check_export.py")
    spec = importlib.util.spec_from_file_location("check_export", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FromSpec


class Classifier:
    def __init__(self, checkpoint):
        with safe_open(checkpoint, "pt") as f:
            meta = f.metadata()
        self.spec = json.loads(meta["trainyard.spec"])
        self.epoch = int(meta.get("trainyard.epoch", 0))
        ds = self.spec["dataset"]
        self.size = tuple(ds.get("resize") or [28, 28])
        self.norm = ds.get("normalize")
        self.names = FASHION if ds["name"] == "fashion-mnist" else [str(i) for i in range(10)]
        self.last = self.spec["model"]["layers"][-1].get("activation", "none")
        self.model = _from_spec_class()(self.spec["model"]["layers"])
        self.model(torch.zeros(1, 1, *self.size))  # materialise the lazy layers
        self.model.load_state_dict(load_file(checkpoint))
        self.model.eval()

    def preprocess(self, data):
        img = Image.open(io.BytesIO(data))
        if img.format not in ("PNG", "JPEG", "PPM"):
            raise ValueError("not a PNG, JPEG or PGM image")
        img = img.convert("L")
        if img.size != (28, 28):
            img = img.resize((28, 28), Image.BILINEAR)
        h, w = self.size
        if (h, w) != (28, 28):
            img = img.resize((w, h), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) / 255.0
        if self.norm:
            x = (x - self.norm["mean"]) / self.norm["std"]
        return x

    def predict(self, images, top_k):
        x = torch.from_numpy(np.stack(images)[:, None])
        with torch.inference_mode():
            y = self.model(x)
            if self.last == "log_softmax":
                y = y.exp()
            elif self.last != "softmax":
                y = F.softmax(y, 1)
        out = []
        for p in y.tolist():
            order = sorted(range(len(p)), key=lambda i: -p[i])
            out.append({
                "label": order[0],
                "class_name": self.names[order[0]],
                "probabilities": p,
                "top_k": [{"label": i, "class_name": self.names[i], "probability": p[i]}
                          for i in order[:top_k]],
            })
        return out


def make_app(checkpoint, threads=2):
    torch.set_num_threads(threads)
    clf = Classifier(checkpoint)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request, experiment: str = "", top_k: int = 3):
        if not 1 <= top_k <= 10:
            raise HTTPException(422, "top_k must be between 1 and 10")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form()
            parts = [(p.filename, await p.read()) for _, p in form.multi_items()
                     if hasattr(p, "read")]
        elif ctype in ("image/png", "image/jpeg", "image/x-portable-graymap"):
            parts = [(None, await request.body())]
        else:
            raise HTTPException(415, "send an image or multipart/form-data")
        if not parts:
            raise HTTPException(422, "no image")
        images = []
        for name, data in parts:
            try:
                images.append(clf.preprocess(data))
            except Exception as e:  # PIL raises several kinds for bad input
                raise HTTPException(422, f"{name or 'image'}: {e}")
        preds = clf.predict(images, top_k)
        for (name, _), p in zip(parts, preds):
            if name is not None:
                p["filename"] = name
        return JSONResponse({"experiment": experiment, "epoch": clf.epoch, "predictions": preds})

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    a = ap.parse_args()
    uvicorn.run(make_app(a.checkpoint, a.threads), host=a.host, port=a.port, workers=1,
                loop="uvloop", http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
