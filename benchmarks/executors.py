"""Ray overhead: the same config run by the local executor and by Ray, wall time and results.

Each run is a fresh ``xaiarena run`` process into a fresh run directory (nothing cached),
so the Ray time includes starting a local Ray instance. The script then checks that both
executors wrote the same ``results/summary.csv`` (exactly: same stages, same seeds).

    python benchmarks/executors.py                       # the default benchmark, local vs ray
    python benchmarks/executors.py --grid                # a 3-seed replicate grid, local vs ray
    python benchmarks/executors.py --set evaluation.n_samples=32 --out /tmp/bench

Take timings on a quiet machine (check ``uptime`` before and after); results are printed
as a Markdown table and written to ``<out>/executors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

# a small replicate grid: three training seeds of the built-in benchmark at a reduced size
GRID = [
    "replicates=3",
    "evaluation.n_samples=64",
    "explainers=[gradcam, integrated_gradients, smoothgrad, random]",
    "metrics=[deletion, insertion, topk_iou]",
]


def run(executor: str, out: Path, sets: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "xaiarena.cli",
        "run",
        "--out",
        str(out),
        "--quiet",
        "--executor",
        executor,
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--grid",
        action="store_true",
        help="run the 3-seed replicate grid instead of the default benchmark",
    )
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="an override, as for xaiarena run"
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for the two run directories")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="xaiarena-executors-"))
    sets = (GRID if args.grid else []) + args.sets
    times = {}
    for ex in ("local", "ray"):
        d = out / ex
        if d.exists():
            raise SystemExit(f"{d} exists: give a fresh --out (timings must not reuse a cache)")
        times[ex] = run(ex, d, sets)
        print(f"{ex}: {times[ex]:.1f} s", flush=True)
    a = pd.read_csv(out / "local" / "results" / "summary.csv")
    b = pd.read_csv(out / "ray" / "results" / "summary.csv")
    identical = a.equals(b)
    # every task computes with the local run's torch thread count (engine.context.thread_count), so
    # the two summaries should be identical; where they are not, say by how much
    num = [c for c in ("mean", "ci_low", "ci_high") if c in a.columns]
    same_rows = a.drop(columns=num).equals(b.drop(columns=num))
    max_diff = float((a[num] - b[num]).abs().max().max()) if same_rows else float("nan")
    result = {
        "config": "replicate grid (3 seeds)" if args.grid else "default benchmark",
        "overrides": sets,
        "local_s": round(times["local"], 1),
        "ray_s": round(times["ray"], 1),
        "ray_over_local": round(times["ray"] / times["local"], 3),
        "summary_identical": identical,
        "same_rows": same_rows,
        "max_abs_difference": max_diff,
        "cpu_count": os.cpu_count(),
    }
    (out / "executors.json").write_text(json.dumps(result, indent=2))
    print("| config | local | ray | ray / local | summary.csv |")
    print("|---|---|---|---|---|")
    same = (
        "identical"
        if identical
        else (f"same rows, max abs difference {max_diff:.1e}" if same_rows else "DIFFERENT ROWS")
    )
    print(
        f"| {result['config']} | {result['local_s']} s | {result['ray_s']} s | "
        f"{result['ray_over_local']:.2f} | {same} |"
    )


if __name__ == "__main__":
    main()
