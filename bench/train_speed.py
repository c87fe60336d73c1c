"""Training speed and memory, side by side: trainyard, PyTorch and Keras on this machine, in one run.

Default (epochs): trains each preset for --epochs full epochs with `trainyard train`, the
PyTorch reference (`torch_bench.py train`) and the Keras reference (`keras_bench.py train`),
one process after another, and prints each one's training seconds per epoch (the fastest
epoch after the first, which warms up, so that one slow epoch from the shared machine's
noise does not decide a ratio; every epoch is printed too), its peak resident memory, the
ratios, and the issue's targets:
torch-cnn at most 0.7x Keras's epoch, keras-cnn at most 0.5x, and peak memory while
training keras-cnn at most PyTorch's.

    python bench/train_speed.py [--epochs 3] [--presets torch-cnn,keras-cnn] [--no-keras]
    python bench/train_speed.py --steps [--batches 100]   # ms per training step only,
                                                          # also with Candle's graph

Needs torch (and tensorflow-cpu 2.21 for Keras) in the Python that runs it, a release build
(`cargo build --release`), and the MNIST files in ../shared/data/mnist; the reference
scripts live in ../shared/reference. Not shipped; a developer's tool. Run it on a quiet
machine: every figure shares the same 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "..", "shared", "reference")
DATA = os.path.join(ROOT, "..", "shared", "data")
PRESETS = {"torch-cnn": 512, "keras-cnn": 32}
TARGET_VS_KERAS = {"torch-cnn": 0.7, "keras-cnn": 0.5}


def peak_mib(cmd, cwd=None):
    """Runs a command and returns (stdout, peak RSS MiB) from wait4's rusage."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({code}):\n{err.read()[-3000:]}")
        return out.read(), usage.ru_maxrss / 1024.0


def trainyard_epochs(exe, preset, epochs):
    with tempfile.TemporaryDirectory() as d:
        spec = os.path.join(d, "spec.json")
        with open(spec, "w") as f:
            json.dump({"preset": preset, "epochs": epochs, "device": "cpu"}, f)
        _, mib = peak_mib([exe, "train", spec, "--out", os.path.join(d, "run"),
                           "--data-dir", DATA, "--no-download"])
        with open(os.path.join(d, "run", "metrics.jsonl")) as f:
            rows = [json.loads(l) for l in f if l.strip()]
    return [r["train_seconds"] for r in rows], rows[-1].get("test_accuracy"), mib


def reference_epochs(script, preset, epochs):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.json")
        _, mib = peak_mib([sys.executable, os.path.join(REF, script), "train", "--model", preset,
                           "--epochs", str(epochs), "--json", out], cwd=REF)
        with open(out) as f:
            res = json.load(f)
    return [e["train_s"] for e in res["epochs"]], res.get("final_test_acc"), mib


def figure(secs):
    """An epoch's seconds: the fastest after the first (the only one if there is one)."""
    return min(secs[1:]) if len(secs) > 1 else secs[0]


def epochs_mode(a):
    print(f"{'preset':<10} {'who':<10} {'epoch s':>8} {'(all epochs)':<22} {'peak MiB':>9} {'test acc':>9}")
    results = {}
    for preset in a.presets:
        rows = {"trainyard": trainyard_epochs(a.trainyard, preset, a.epochs),
                "pytorch": reference_epochs("torch_bench.py", preset, a.epochs)}
        if a.keras:
            rows["keras"] = reference_epochs("keras_bench.py", preset, a.epochs)
        results[preset] = rows
        for who, (secs, acc, mib) in rows.items():
            acc_s = f"{acc:.4f}" if isinstance(acc, float) else "-"
            print(f"{preset:<10} {who:<10} {figure(secs):>8.2f} {str([round(s, 2) for s in secs]):<22} "
                  f"{mib:>9.0f} {acc_s:>9}", flush=True)
    print()
    for preset, rows in results.items():
        ty = figure(rows["trainyard"][0])
        pt = figure(rows["pytorch"][0])
        line = f"{preset}: trainyard/PyTorch epoch {ty / pt:.2f}"
        if "keras" in rows:
            kr = figure(rows["keras"][0])
            target = TARGET_VS_KERAS[preset]
            ok = ty / kr <= target
            line += f", trainyard/Keras {ty / kr:.2f} (target <= {target}: {'met' if ok else 'NOT met'})"
        if preset == "keras-cnn":
            tm, pm = rows["trainyard"][2], rows["pytorch"][2]
            ok = tm <= pm
            line += f"; peak memory {tm:.0f} vs PyTorch {pm:.0f} MiB ({'met' if ok else 'NOT met'})"
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def steps_mode(a):
    def trainyard(extra):
        out = subprocess.run([a.trainyard, "bench", "--json", "--batches", str(a.batches),
                              "--warmup", str(a.warmup), "--data-dir", DATA, "--no-download"] + extra,
                             check=True, capture_output=True, text=True).stdout
        return {r["preset"]: r["ms_per_batch"] for r in map(json.loads, filter(lambda l: l.startswith("{"), out.splitlines()))}

    def reference(script, model):
        out = subprocess.run([sys.executable, os.path.join(REF, script), "time", "--model", model,
                              "--batches", str(a.batches), "--warmup", str(a.warmup)],
                             check=True, capture_output=True, text=True, cwd=REF).stdout
        for line in reversed(out.splitlines()):
            if line.strip().startswith("{"):
                return json.loads(line)["per_batch_ms"]
        raise RuntimeError("no JSON line in:\n" + out)

    fast, graph = trainyard([]), trainyard(["--candle-graph"])
    print(f"{'preset':<10} {'batch':>5} {'CPU path ms':>12} {'graph ms':>9} {'PyTorch ms':>11} {'ratio':>6}"
          + (f" {'Keras ms':>9} {'ratio':>6}" if a.keras else ""))
    for model, batch in PRESETS.items():
        if model not in a.presets:
            continue
        pt = reference("torch_bench.py", model)
        line = (f"{model:<10} {batch:>5} {fast[model]:>12.1f} {graph[model]:>9.1f} {pt:>11.1f} "
                f"{fast[model] / pt:>6.2f}")
        # keras_bench.py times keras-cnn only; torch-cnn's Keras figure comes from epochs mode.
        if a.keras and model == "keras-cnn":
            kr = reference("keras_bench.py", model)
            line += f" {kr:>9.1f} {fast[model] / kr:>6.2f}"
        print(line, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trainyard", default=os.path.join(ROOT, "target", "release", "trainyard"))
    p.add_argument("--presets", default="torch-cnn,keras-cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-keras", dest="keras", action="store_false")
    p.add_argument("--steps", action="store_true", help="ms per training step instead of epochs")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", help="also write the raw figures here")
    a = p.parse_args()
    a.presets = a.presets.split(",")
    steps_mode(a) if a.steps else epochs_mode(a)


if __name__ == "__main__":
    main()
