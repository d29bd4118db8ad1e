"""What ``evaluation.meta: true`` adds to a run, counted in forward passes (not timed).

Runs a config (the built-in benchmark by default) at a small size with the meta-evaluation on,
counts the samples that pass through the model in every stage kind (explain, score, meta) with a
global forward hook (outermost module calls only; backward passes are not counted), and
extrapolates per-sample rates to the config's own ``evaluation.n_samples`` and the meta
settings::

    python benchmarks/meta_cost.py                       # the default benchmark, 8 samples
    python benchmarks/meta_cost.py --n-samples 16 --json
    python benchmarks/meta_cost.py CONFIG --meta-samples 16 --draws 1

The small run trains the model for one epoch on a few samples and fits DiET briefly (the counts
per evaluated sample of explainers and metrics do not depend on how well the model is trained;
DiET's test-time optimisation keeps its configured steps). With M meta samples, K draws and N
evaluation samples, per view: meta ~ 2·K·M re-explanations + 4·K·M scorings + 4·K·M
predictions, against N explanations + N scorings in the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch

FAST = {
    "training.epochs": 1,
    "data.0.n_train": 600,
    "data.0.n_test": 200,
    "training.num_threads": 1,
}
FAST_DIET = {"n_train": 64, "rounds": 1, "mask_max_epochs": 1, "model_max_epochs": 1}


@contextmanager
def count_forward_rows(counts: Counter, stage: list[str]):
    """Add the batch size of every outermost module call to ``counts[stage[-1]]``."""
    depth = [0]

    def pre(module, args):
        depth[0] += 1
        if depth[0] == 1 and args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 1:
            counts[stage[-1]] += int(args[0].shape[0])
        elif depth[0] == 1 and args and hasattr(args[0], "input_ids"):  # a TextBatch
            counts[stage[-1]] += len(args[0])

    def post(module, args, out):
        depth[0] -= 1

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post, always_call=True)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "config", nargs="?", default=None, help="config file (default: the built-in benchmark)"
    )
    ap.add_argument("--n-samples", type=int, default=8, help="evaluation samples of the small run")
    ap.add_argument(
        "--meta-samples", type=int, default=None, help="M to extrapolate to (default: the config's)"
    )
    ap.add_argument(
        "--draws", type=int, default=None, help="K to extrapolate to (default: the config's)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import xaiarena
    from xaiarena.config import load_config
    from xaiarena.engine import executors

    cfg = load_config(args.config)
    n_full = cfg.evaluation.n_samples
    m_full = args.meta_samples or cfg.evaluation.meta_samples
    k_full = args.draws or cfg.evaluation.meta_perturbations
    raw = cfg.to_dict()
    for spec in raw["explainers"]:
        if spec["name"] == "diet":
            spec["params"].update(FAST_DIET)
    n = args.n_samples
    overrides = {
        **FAST,
        "evaluation.n_samples": n,
        "evaluation.meta": True,
        "evaluation.meta_samples": n,
        "evaluation.meta_perturbations": 1,
    }
    counts: Counter = Counter()
    stage = ["other"]
    run_task = executors.run_task

    def counted(task, env, say=None):
        stage.append(task.kind)
        try:
            return run_task(task, env, say)
        finally:
            stage.pop()

    executors.run_task = counted
    try:
        with tempfile.TemporaryDirectory() as tmp, count_forward_rows(counts, stage):
            xaiarena.run(raw, out=Path(tmp) / "run", overrides=overrides, show_progress=False)
    finally:
        executors.run_task = run_task
    # per evaluated sample (the small run perturbs all n samples once per test)
    per = {k: counts[k] / n for k in ("explain", "score", "meta")}
    main_full = n_full * (per["explain"] + per["score"])
    meta_full = m_full * k_full * per["meta"]
    out = {
        "small_run": {"n_samples": n, "forward_rows": dict(counts)},
        "per_sample": per,
        "extrapolated": {
            "n_samples": n_full,
            "meta_samples": m_full,
            "draws": k_full,
            "explain_and_score_rows": round(main_full),
            "meta_rows": round(meta_full),
            "meta_over_explain_and_score": round(meta_full / main_full, 3) if main_full else None,
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        e = out["extrapolated"]
        print(f"small run ({n} samples): forward rows {dict(counts)}", file=sys.stderr)
        print(
            f"per evaluated sample: explain {per['explain']:.0f}, score {per['score']:.0f}, "
            f"meta (4 tests, 1 draw) {per['meta']:.0f}",
            file=sys.stderr,
        )
        print(
            f"at N={n_full}, M={m_full}, K={k_full}: "
            f"explain+score {e['explain_and_score_rows']:,} rows, "
            f"meta {e['meta_rows']:,} rows (x{e['meta_over_explain_and_score']} of explain+score)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
