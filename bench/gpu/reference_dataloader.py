"""PyTorch reference for issue 4: the idiomatic DataLoader training loop, per epoch timed.

What a PyTorch user writes for the two seed models (docs/seed-models: keras-cnn and
torch-cnn): the MNIST tensors in a `torch.utils.data.Dataset`, a `DataLoader` with the
preset's batch size and shuffling (default settings otherwise: num_workers=0, no
pin_memory), the model on the device, and per batch `.to(device)`, zero_grad, forward,
loss, backward, step, with `loss.item()` (and the correct count) accumulated per batch.
Each epoch's training loop is timed with `torch.cuda.synchronize()` at both ends; the
evaluation after it (test set, and validation for keras-cnn) is timed apart, as
trainyard's `train_seconds` covers training only. The first epoch is the warm-up.

    python3 bench/gpu/reference_dataloader.py --model keras-cnn --epochs 3 \
        --data-dir .gpu/data/mnist --device cuda --json out.json

`--loader device` is the other end for comparison: every tensor moved to the device once
and batches indexed there (a randperm per epoch on the device), no DataLoader.

Self-contained (torch and the standard library only): the IDX reading and torch-cnn's
8x8 resize are those of shared/reference/common.py, the resize done as PIL's BILINEAR
(antialiased, 8-bit fixed point) so that no pillow or numpy is needed on the GPU machine.
`--check-pil` compares it with PIL on every image.
"""
import argparse
import gzip
import json
import math
import os
import platform
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

# --- data (as shared/reference/common.py) ------------------------------------------------


def load_idx(path):
    """An IDX file of uint8 as a torch tensor; `path` raw, or `path.gz`."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            raw = f.read()
    else:
        with gzip.open(path + ".gz", "rb") as f:
            raw = f.read()
    (magic,) = struct.unpack(">I", raw[:4])
    assert (magic >> 8) & 0xFF == 0x08, f"{path}: only uint8 IDX supported"
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    t = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return t.reshape(dims)


def load_mnist(data_dir):
    xtr = load_idx(os.path.join(data_dir, "train-images-idx3-ubyte"))
    ytr = load_idx(os.path.join(data_dir, "train-labels-idx1-ubyte"))
    xte = load_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte"))
    yte = load_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte"))
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    return xtr, ytr.long(), xte, yte.long()


PRECISION_BITS = 32 - 8 - 2  # Pillow's 8-bit resampling fixed point


def pil_bilinear_coeffs(in_size, out_size):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for BILINEAR, as an
    [out_size, in_size] matrix of integer weights (float64, exact)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = []
        for x in range(xmax):
            d = abs((x + xmin - center + 0.5) * ss)
            ws.append(1.0 - d if d < 1.0 else 0.0)
        ww = sum(ws)
        for x, w in enumerate(ws):
            k = w / ww if ww != 0.0 else w
            k = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
            m[xx, xmin + x] = k
    return m


def _clip8(ss):
    # Pillow: (ss + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, clamped to 0..255.
    return torch.floor((ss + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def resize8(x_u8):
    """[N,28,28] uint8 -> [N,8,8] uint8, equal to PIL Image.resize((8, 8), BILINEAR) on each
    'L' image (torchvision's Resize((8, 8)) on a PIL image): horizontal pass, then vertical,
    each rounded to 8 bits. Sums of integers below 2^53, so float64 is exact."""
    n, h, w = x_u8.shape
    kx = pil_bilinear_coeffs(w, 8)
    ky = pil_bilinear_coeffs(h, 8)
    x = x_u8.to(torch.float64)
    t = _clip8(x @ kx.T)  # [N, h, 8]
    out = _clip8(ky @ t)  # [N, 8, 8]
    return out.to(torch.uint8)


def prepare(model_name, data_dir):
    """Train/val/test tensors on the CPU, preprocessed as each preset specifies."""
    xtr, ytr, xte, yte = load_mnist(data_dir)
    if model_name == "torch-cnn":
        def norm(r):
            return ((r.float() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
        return dict(xtr=norm(resize8(xtr)), ytr=ytr, xval=None, yval=None,
                    xte=norm(resize8(xte)), yte=yte, batch=512, shuffle=False)
    xtr = (xtr.float() / 255.0).unsqueeze(1)
    xte = (xte.float() / 255.0).unsqueeze(1)
    split = int(60000 * (1 - 0.3))  # Keras validation_split=0.3: the LAST 30%, before shuffling
    return dict(xtr=xtr[:split].contiguous(), ytr=ytr[:split].contiguous(),
                xval=xtr[split:].contiguous(), yval=ytr[split:].contiguous(),
                xte=xte, yte=yte, batch=32, shuffle=True)


class MnistTensors(Dataset):
    """The preprocessed MNIST tensors as a map-style Dataset (one sample per index)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]


# --- models (as shared/reference/torch_bench.py, seed-models.md) --------------------------


class TorchCNN(nn.Module):
    """The article's PyTorch model (PyTorch default init)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 1)  # kernel 1 == identity, kept as in the article
        x = torch.flatten(x, 1)
        return F.log_softmax(self.fc(x), dim=1)


class KerasCNN(nn.Module):
    """The article's Keras model in PyTorch (glorot_uniform, zero biases); returns logits,
    softmax + categorical cross-entropy is F.cross_entropy."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 12 * 12, 1024)
        self.fc2 = nn.Linear(1024, 10)
        for m in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


# --- loops --------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch_dataloader(model, opt, loader, device):
    model.train()
    loss_sum, correct, seen, batches = 0.0, 0, 0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * xb.shape[0]
        correct += (out.argmax(1) == yb).sum().item()
        seen += xb.shape[0]
        batches += 1
    return loss_sum / seen, correct / seen, batches


def train_epoch_device(model, opt, x, y, bs, shuffle, gen):
    """Batches indexed from tensors already on the device (no DataLoader)."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, device=x.device, generator=gen) if shuffle else None
    loss_sum, correct, batches = 0.0, 0, 0
    for lo in range(0, n, bs):
        if order is None:
            xb, yb = x[lo:lo + bs], y[lo:lo + bs]
        else:
            idx = order[lo:lo + bs]
            xb, yb = x[idx], y[idx]
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * xb.shape[0]
        correct += (out.argmax(1) == yb).sum().item()
        batches += 1
    return loss_sum / n, correct / n, batches


@torch.no_grad()
def evaluate(model, loader, device):
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb)
        loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
        correct += (out.argmax(1) == yb).sum().item()
        seen += xb.shape[0]
    model.train()
    return loss_sum / seen, correct / seen


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["torch-cnn", "keras-cnn"], default="torch-cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default=os.path.join(".gpu", "data", "mnist"),
                   help="folder with the MNIST IDX files (raw or .gz)")
    p.add_argument("--loader", choices=["dataloader", "device"], default="dataloader")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N training samples only (dry runs)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on N samples only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--check-pil", action="store_true",
                   help="only compare the 8x8 resize with PIL on all 70,000 images and exit")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.check_pil:
        import numpy as np
        from PIL import Image
        xtr, _, xte, _ = load_mnist(a.data_dir)
        x = torch.cat([xtr, xte])
        ours = resize8(x).numpy()
        ref = np.stack([np.asarray(Image.fromarray(im, mode="L").resize((8, 8), Image.BILINEAR))
                        for im in x.numpy()])
        diff = int((ours != ref).sum())
        print(json.dumps({"check_pil": "ok" if diff == 0 else "MISMATCH", "images": len(ref),
                          "differing_pixels": diff}))
        sys.exit(0 if diff == 0 else 1)

    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    t_data = time.perf_counter()
    d = prepare(a.model, a.data_dir)
    if a.limit is not None:
        d["xtr"], d["ytr"] = d["xtr"][:a.limit], d["ytr"][:a.limit]
    if a.test_limit is not None:
        for k in ("xte", "yte", "xval", "yval"):
            if d[k] is not None:
                d[k] = d[k][:a.test_limit]
    prep_s = time.perf_counter() - t_data

    model = (TorchCNN() if a.model == "torch-cnn" else KerasCNN()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    eval_loaders = {"test": DataLoader(MnistTensors(d["xte"], d["yte"]), batch_size=1000)}
    if d["xval"] is not None:
        eval_loaders["val"] = DataLoader(MnistTensors(d["xval"], d["yval"]), batch_size=1000)
    if a.loader == "dataloader":
        loader = DataLoader(MnistTensors(d["xtr"], d["ytr"]), batch_size=d["batch"], shuffle=d["shuffle"])
    else:
        xdev, ydev = d["xtr"].to(device), d["ytr"].to(device)
        gen = torch.Generator(device=device).manual_seed(a.seed)

    res = dict(framework="pytorch", loader=a.loader, model=a.model, device=str(device),
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
               torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
               threads=torch.get_num_threads(), batch=d["batch"], shuffle=d["shuffle"],
               train_samples=int(d["xtr"].shape[0]), prep_s=prep_s, epochs=[])
    for ep in range(1, a.epochs + 1):
        sync(device)
        t0 = time.perf_counter()
        if a.loader == "dataloader":
            tr_loss, tr_acc, nb = train_epoch_dataloader(model, opt, loader, device)
        else:
            tr_loss, tr_acc, nb = train_epoch_device(model, opt, xdev, ydev, d["batch"], d["shuffle"], gen)
        sync(device)
        train_s = time.perf_counter() - t0
        rec = dict(epoch=ep, train_seconds=train_s, batches=nb, ms_per_batch=1000 * train_s / nb,
                   images_per_second=d["xtr"].shape[0] / train_s, train_loss=tr_loss, train_accuracy=tr_acc)
        t1 = time.perf_counter()
        for name, dl in sorted(eval_loaders.items()):
            rec[f"{name}_loss"], rec[f"{name}_accuracy"] = evaluate(model, dl, device)
        sync(device)
        rec["eval_seconds"] = time.perf_counter() - t1
        res["epochs"].append(rec)
        print(json.dumps(rec), flush=True)
    steady = [e["train_seconds"] for e in res["epochs"][1:]] or [res["epochs"][0]["train_seconds"]]
    res["steady_epoch_seconds"] = sum(steady) / len(steady)
    line = json.dumps(res)
    print(line, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
