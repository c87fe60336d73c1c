"""Summary of a bench/gpu/run.sh run: python3 bench/gpu/summarize.py OUT_DIR.

Reads OUT_DIR/trainyard-PRESET.metrics.jsonl, pytorch-PRESET.json (DataLoader loop),
pytorch-device-PRESET.json (data on the device, no DataLoader), trainyard-bench.log and
steps.tsv; prints the table and writes summary.md and summary.json. Missing files show as
'-'. Issue 4's criterion: trainyard's epoch time at most half of PyTorch's DataLoader loop,
compared on the steady epochs (the first one is the warm-up).
"""
import json
import os
import sys

PRESETS = ["torch-cnn", "keras-cnn"]


def read_jsonl(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip().startswith("{")]
    except (OSError, ValueError):
        return None


def read_json(path):
    rows = read_jsonl(path)
    return rows[-1] if rows else None


def read_pytorch(out, name):
    """The reference's final JSON, or, when it was cut short, its per-epoch lines from the log."""
    res = read_json(os.path.join(out, f"{name}.json"))
    if res:
        return res
    rows = [r for r in read_jsonl(os.path.join(out, f"{name}.log")) or [] if "train_seconds" in r]
    return {"epochs": rows, "partial": True} if rows else None


def steady(xs):
    """Mean of the epochs after the first (the first alone when there is one)."""
    if not xs:
        return None
    rest = xs[1:] or xs
    return sum(rest) / len(rest)


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    summary = {"presets": {}, "bench": [], "steps": []}
    lines = []
    for preset in PRESETS:
        ty = read_jsonl(os.path.join(out, f"trainyard-{preset}.metrics.jsonl")) or []
        pt = read_pytorch(out, f"pytorch-{preset}")
        pd = read_pytorch(out, f"pytorch-device-{preset}")
        ty_s = [m["train_seconds"] for m in ty]
        pt_s = [e["train_seconds"] for e in pt["epochs"]] if pt else []
        pd_s = [e["train_seconds"] for e in pd["epochs"]] if pd else []
        s_ty, s_pt, s_pd = steady(ty_s), steady(pt_s), steady(pd_s)
        ratio = s_ty / s_pt if s_ty and s_pt else None
        last_ty = ty[-1] if ty else {}
        ty_device = None
        try:
            with open(os.path.join(out, f"trainyard-{preset}.log")) as f:
                ty_device = next((l.split(":", 1)[1].strip() for l in f if l.startswith("device:")), None)
        except OSError:
            pass
        last_pt = pt["epochs"][-1] if pt else {}
        rec = {
            "trainyard_device": ty_device,
            "trainyard_epoch_seconds": ty_s, "pytorch_dataloader_epoch_seconds": pt_s,
            "pytorch_device_epoch_seconds": pd_s,
            "trainyard_steady_seconds": s_ty, "pytorch_dataloader_steady_seconds": s_pt,
            "pytorch_device_steady_seconds": s_pd,
            "ratio_trainyard_to_pytorch_dataloader": ratio,
            "ratio_trainyard_to_pytorch_device": s_ty / s_pd if s_ty and s_pd else None,
            "meets_issue_4": None if ratio is None else ratio <= 0.5,
            "trainyard_final": {k: last_ty.get(k) for k in
                                ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                 "test_loss", "test_accuracy")},
            "pytorch_final": {k: last_pt.get(k) for k in
                              ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                               "test_loss", "test_accuracy")},
            "pytorch_env": {k: pt.get(k) for k in ("torch", "cuda", "cudnn", "device_name", "train_samples")}
            if pt else None,
        }
        summary["presets"][preset] = rec

        lines.append(f"## {preset}")
        lines.append("")
        lines.append("| epoch | trainyard s | PyTorch DataLoader s | ratio | PyTorch data-on-device s |")
        lines.append("| --- | --- | --- | --- | --- |")
        for i in range(max(len(ty_s), len(pt_s), len(pd_s))):
            a = ty_s[i] if i < len(ty_s) else None
            b = pt_s[i] if i < len(pt_s) else None
            c = pd_s[i] if i < len(pd_s) else None
            r = a / b if a and b else None
            lines.append(f"| {i + 1}{' (warm-up)' if i == 0 else ''} | {fmt(a)} | {fmt(b)} | {fmt(r, '.2f')} | {fmt(c)} |")
        lines.append(f"| steady (epochs 2+) | {fmt(s_ty)} | {fmt(s_pt)} | **{fmt(ratio, '.2f')}** | {fmt(s_pd)} |")
        verdict = {None: "no verdict (missing figures)", True: "MEETS issue 4 (<= 0.50)",
                   False: "does NOT meet issue 4 (needs <= 0.50)"}[rec["meets_issue_4"]]
        lines.append("")
        pdev = pt.get("device_name") if pt else None
        lines.append(f"devices: trainyard {ty_device or '-'}; PyTorch {pdev or '-'}"
                     f" (torch {pt.get('torch') if pt else '-'}, CUDA {pt.get('cuda') if pt else '-'})")
        lines.append(f"ratio trainyard / PyTorch DataLoader = {fmt(ratio, '.2f')}: {verdict}")
        tf, pf = rec["trainyard_final"], rec["pytorch_final"]
        lines.append(f"final epoch accuracy: trainyard train {fmt(tf['train_accuracy'], '.4f')} "
                     f"val {fmt(tf['val_accuracy'], '.4f')} test {fmt(tf['test_accuracy'], '.4f')}; "
                     f"PyTorch train {fmt(pf['train_accuracy'], '.4f')} val {fmt(pf['val_accuracy'], '.4f')} "
                     f"test {fmt(pf['test_accuracy'], '.4f')}")
        lines.append("")

    bench = read_jsonl(os.path.join(out, "trainyard-bench.log")) or []
    summary["bench"] = bench
    lines.append("## trainyard bench")
    lines.append("")
    for b in bench:
        lines.append(f"- {b.get('preset')}: batch {b.get('batch')}, {fmt(b.get('ms_per_batch'), '.3f')} ms/batch, "
                     f"{fmt(b.get('images_per_second'), '.0f')} images/s")
    if not bench:
        lines.append("- (no output)")
    lines.append("")
    try:
        with open(os.path.join(out, "steps.tsv")) as f:
            rows = [l.rstrip("\n").split("\t") for l in f][1:]
        summary["steps"] = [dict(zip(("step", "rc", "seconds", "limit_s"), r)) for r in rows]
        lines.append("## steps")
        lines.append("")
        lines.append("| step | rc | seconds | limit |")
        lines.append("| --- | --- | --- | --- |")
        lines.extend(f"| {' | '.join(r)} |" for r in rows)
    except OSError:
        pass

    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
