#!/usr/bin/env python3
"""First load of each web app view: bytes on the wire (compressed) in a real browser.

Starts `trainyard serve --workers 0` on a fresh database with two queued experiments (so
that the experiment and compare views have something to show), then opens each view's URL
in a new headless Chromium session (an empty cache) through chromedriver, and sums the
`transferSize` of the navigation and of every resource the page loaded, as the browser
reports them (Resource Timing). The goal (issue 11): at most 150 KB for any view.

Usage: python3 bench/first_load.py [--trainyard PATH]   (chromium and chromium-driver
from Debian; standard library only).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_latency import (  # noqa: E402
    Processes, database_urls, default_trainyard, free_port, start_api)

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,900"]

TOTAL = """
const nav = performance.getEntriesByType('navigation')[0];
const res = performance.getEntriesByType('resource');
return {page: nav.transferSize, resources: res.map(r => [r.name, r.transferSize]),
        total: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0)};
"""


def wd(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["value"]


def measure(driver_port, url, wait_s):
    with tempfile.TemporaryDirectory() as profile:
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": ARGS + [f"--user-data-dir={profile}"]}}}}
        session = wd(driver_port, "POST", "/session", caps)["sessionId"]
        try:
            wd(driver_port, "POST", f"/session/{session}/url", {"url": url})
            time.sleep(wait_s)  # the view's own fetches and lazy modules
            return wd(driver_port, "POST", f"/session/{session}/execute/sync",
                      {"script": TOTAL, "args": []})
        finally:
            wd(driver_port, "DELETE", f"/session/{session}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainyard")
    ap.add_argument("--database", default="trainyard_first_load")
    ap.add_argument("--wait", type=float, default=3.0)
    args = ap.parse_args()
    exe = args.trainyard or default_trainyard()
    base, url = database_urls(args.database)
    subprocess.run(["psql", base, "-X", "-q", "-c",
                    f"DROP DATABASE IF EXISTS {args.database} WITH (FORCE)"], check=True)
    port, driver_port = free_port(), free_port()
    env = dict(os.environ, DATABASE_URL=url, RUST_LOG="warn")
    with tempfile.TemporaryDirectory() as logs:
        procs = Processes(logs)
        try:
            _, api = start_api(procs, exe, port, env)
            ids = [api.submit({"preset": p})[1] for p in ("keras-cnn", "torch-cnn")]
            procs.start("chromedriver", ["chromedriver", f"--port={driver_port}"], env)
            for _ in range(100):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", driver_port)) == 0:
                        break
                time.sleep(0.1)
            views = [("Experiments", "/"), ("Experiment", f"/ui/experiments/{ids[0]}"),
                     ("New experiment", "/ui/new"), ("Compare", f"/ui/compare?ids={','.join(ids)}"),
                     ("Predict", "/ui/predict")]
            worst = 0
            print("first load, bytes transferred (compressed), empty cache:")
            for name, path in views:
                r = measure(driver_port, f"http://127.0.0.1:{port}{path}", args.wait)
                worst = max(worst, r["total"])
                print(f"  {name:<16} {r['total'] / 1000:7.1f} KB in {len(r['resources']) + 1} "
                      f"requests  ({path})")
            print(f"largest {worst / 1000:.1f} KB; goal at most 150 KB: "
                  f"{'met' if worst <= 150_000 else 'NOT met'}")
            return 0 if worst <= 150_000 else 1
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
