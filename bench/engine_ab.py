#!/usr/bin/env python3
"""`trainyard bench` of two binaries, alternated: did a change slow training down?

Runs `BIN bench --json` for each binary in turn, ROUNDS times, swapping which goes first
every round (so drift of a shared machine hits both alike), and prints each preset's median
images/second per binary and their ratio. Both the CPU kernels and, with --candle-graph,
Candle's graph can be compared.

    python3 bench/engine_ab.py BEFORE AFTER [--rounds 5] [--candle-graph] [--batches 50]
"""
import argparse
import json
import os
import statistics
import subprocess


def run(binary, args):
    cmd = [binary, "bench", "--json", "--batches", str(args.batches), "--no-download"]
    if args.candle_graph:
        cmd.append("--candle-graph")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["preset"]: r["images_per_second"] for r in rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--candle-graph", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TRAINYARD_DATA_DIR", "../shared/data")
    seen = {"before": {}, "after": {}}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for which in order:
            for preset, ips in run(getattr(args, which), args).items():
                seen[which].setdefault(preset, []).append(ips)
        print(f"round {r + 1}: " + ", ".join(
            f"{w} {p} {v[-1]:.0f}" for w in order for p, v in seen[w].items()), flush=True)
    print(f"\n| preset | rounds | before img/s | after img/s | after/before |")
    print("| --- | --- | --- | --- | --- |")
    for preset in seen["before"]:
        b = statistics.median(seen["before"][preset])
        a = statistics.median(seen["after"][preset])
        print(f"| {preset} | {args.rounds} | {b:,.0f} | {a:,.0f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()
