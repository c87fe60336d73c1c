"""Training speed, side by side: trainyard and PyTorch on the same machine, in one run.

Runs `trainyard bench --json` and the reference `torch_bench.py time` (and, with --keras,
`keras_bench.py time`) for both presets, then prints milliseconds per training step and
the ratio to PyTorch (and Keras). Not shipped; a developer's tool.

    python bench/train_speed.py [--batches 100] [--keras] [--trainyard target/release/trainyard]

Needs torch in the Python that runs it (and tensorflow-cpu for --keras), and the MNIST
files in ../shared/data/mnist. The reference scripts live in ../shared/reference.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "..", "shared", "reference")
DATA = os.path.join(ROOT, "..", "shared", "data")
PRESETS = {"torch-cnn": 512, "keras-cnn": 32}


def last_json(out):
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in:\n" + out)


def trainyard(exe, batches, warmup):
    out = subprocess.run(
        [exe, "bench", "--json", "--batches", str(batches), "--warmup", str(warmup),
         "--data-dir", DATA, "--no-download"],
        check=True, capture_output=True, text=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return {r["preset"]: r["ms_per_batch"] for r in rows}


def reference(script, model, batches, warmup):
    out = subprocess.run(
        [sys.executable, os.path.join(REF, script), "time", "--model", model,
         "--batches", str(batches), "--warmup", str(warmup)],
        check=True, capture_output=True, text=True, cwd=REF).stdout
    return last_json(out)["per_batch_ms"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trainyard", default=os.path.join(ROOT, "target", "release", "trainyard"))
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--keras", action="store_true", help="also run the Keras reference")
    a = p.parse_args()
    ty = trainyard(a.trainyard, a.batches, a.warmup)
    print(f"{'preset':<10} {'batch':>5} {'trainyard ms':>13} {'PyTorch ms':>11} {'ratio':>6}"
          + (f" {'Keras ms':>9} {'ratio':>6}" if a.keras else ""))
    for model, batch in PRESETS.items():
        pt = reference("torch_bench.py", model, a.batches, a.warmup)
        line = f"{model:<10} {batch:>5} {ty[model]:>13.1f} {pt:>11.1f} {ty[model] / pt:>6.2f}"
        if a.keras:
            kr = reference("keras_bench.py", model, a.batches, a.warmup)
            line += f" {kr:>9.1f} {ty[model] / kr:>6.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
