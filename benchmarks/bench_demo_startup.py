"""Where `vmr demo --no-app` spends its time on a fresh cache: N runs, each split into the phases the demo prints.

    python benchmarks/bench_demo_startup.py --runs 3 [--env OMP_NUM_THREADS=1] [--json OUT.json]

Each run is a new process with an empty XDG_CACHE_HOME (library rendered, indexed and searched from nothing).
"start-up" is the process's wall time before the demo's clock starts (Python and library imports); the load
average before and after each run is recorded, since two-thread CPU timings swing widely when other jobs share
the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("model load", "render", "index", "queries")
DONE = re.compile(r"done in ([\d.]+)s \((.*?)\)")


def one_run(env_extra: dict[str, str]) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="vmr-demo-bench-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), **env_extra}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--no-app", "--no-progress"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    if out.returncode != 0:
        raise SystemExit(f"vmr demo failed ({out.returncode}): {out.stderr[-2000:]}")
    m = DONE.search(out.stdout)
    phases = {name.strip(): float(value[:-1]) for name, value in
              (part.rsplit(" ", 1) for part in m.group(2).split(", "))}
    recall = re.search(r"own video at rank 1 for ([\d.]+)%", out.stdout).group(1)
    return {"wall": wall, "start-up": wall - float(m.group(1)), **phases, "r1": float(recall),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment")
    parser.add_argument("--json", default=None, help="write the runs and medians here")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(env))
        r = runs[-1]
        print(f"run {i + 1}: wall {r['wall']:.1f}s = start-up {r['start-up']:.1f} + "
              + " + ".join(f"{p} {r[p]:.1f}" for p in PHASES)
              + f"; own video at rank 1 {r['r1']}%; load {r['load_before']:.2f} -> {r['load_after']:.2f}",
              flush=True)
    keys = ("wall", "start-up") + PHASES
    medians = {k: statistics.median(r[k] for r in runs) for k in keys}
    print("median: " + ", ".join(f"{k} {v:.1f}s" for k, v in medians.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "cpus": os.cpu_count(), "runs": runs,
                                               "median": medians}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
