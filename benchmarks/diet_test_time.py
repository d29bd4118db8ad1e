"""DiET's test-time optimisation on the default benchmark's setting (issue 23, part 1).

The setting is the built-in benchmark's (``src/xaiarena/configs/default.yaml``): hard_mnist, the
LeNet trained by the runner and DiET with its defaults, fitted exactly as a run fits them (the
runner's stages, cached in ``--cache``; a later ``xaiarena run --out <cache>`` reuses them).

    PYTHONPATH=src python benchmarks/diet_test_time.py prepare      # f_b and DiET's f_s (cached)
    PYTHONPATH=src python benchmarks/diet_test_time.py convergence  # training-split images only
    PYTHONPATH=src python benchmarks/diet_test_time.py sensitivity  # benchmark's evaluation images
    PYTHONPATH=src python benchmarks/diet_test_time.py timing       # CPU seconds, old vs default

``convergence`` runs the per-sample test-time optimisation for a fixed, long budget on
*training-split* images (images f_b did not train on, outside DiET's training subset; never the
test split) and records, every step, the set-level loss and mask change that a stopping rule can
see; then it applies the candidate stopping rules to the recorded trajectories. The default
procedure's rule and limits were chosen from this output
(``benchmarks/results/diet_convergence.*``).

``sensitivity`` measures how much DiET's maps depend on the background colour, the sparsity weight,
the procedure and the seed: the median (and quartiles) over the benchmark's evaluation images of the
per-image Spearman correlation between the maps of two variants (``benchmarks/results/
diet_sensitivity.*``). It chooses nothing.

``timing`` measures the CPU seconds (process time, robust to a busy machine) of the test-time masks
of the benchmark's evaluation set with the old procedure (66 steps) and the default, alternated in
one process (``benchmarks/results/diet_test_time_cost.json``). Wall-clock timings of whole runs are
taken on a quiet machine, not here.

Every step runs on one thread (``--threads``); 2 busy cores: convergence ~40 min, sensitivity ~25
min, timing ~5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- the setting


def setting(cache: Path, overrides: dict[str, Any] | None = None):
    """``(s, prep, spec, diet)``: the default benchmark's settings, its prepared dataset (f_b and
    the evaluation samples) and DiET fitted as the runner fits it (cached under ``cache``)."""
    from xaiarena.config import load_config
    from xaiarena.engine import cache as ck
    from xaiarena.engine import stages
    from xaiarena.registry import EXPLAINERS

    cfg = load_config(None, overrides or None)
    bs = cfg.evaluation.batch_size if isinstance(cfg.evaluation.batch_size, int) else 64
    s = stages.Settings(
        cfg=cfg,
        cache=ck.Cache(cache / "cache", cache),
        device=torch.device("cpu"),
        batch_size=bs,
        show_progress=False,
    )

    class _Log:
        def __call__(self, name):
            from contextlib import contextmanager

            @contextmanager
            def cm():
                info: dict[str, Any] = {}
                t0 = time.perf_counter()
                yield info
                print(f"[setting] {name}: {time.perf_counter() - t0:.1f}s", flush=True)

            return cm()

    prep = stages.prepare(s, cfg.data[0], _Log())
    spec = next(e for e in cfg.explainers if e.name == "diet")
    diet = EXPLAINERS.create(spec.name, **spec.params)
    t0 = time.perf_counter()
    stages.fit_learned(s, prep, spec, diet, "f_s")
    print(
        f"[setting] DiET fit: {time.perf_counter() - t0:.1f}s (cache hit: "
        f"{diet.report().get('cache_hit')})",
        flush=True,
    )
    return s, prep, spec, diet


def study_images(prep, diet, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training-split images (pixels in [0, 1]) that f_b did not train on (``train_model``'s
    ``val_fraction`` carve) and DiET did not learn masks for (outside its ``n_train`` subset), drawn
    by ``seed``; and their indices in the training split. The test split is never read."""
    cfg = prep.train  # noqa: F841 - the carve below is train_model's
    task = prep.task
    n_all = len(task.train)
    from xaiarena.config import load_config

    val_fraction = load_config(None).training.val_fraction
    carve = torch.randperm(n_all, generator=torch.Generator().manual_seed(0))[
        : int(n_all * val_fraction)
    ]
    used = torch.zeros(n_all, dtype=torch.bool)
    used[diet.train_index] = True
    pool = carve[~used[carve]]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 7919))
    idx = pool[order[:n]].sort().values
    return task.train.float_images(idx), idx


# --------------------------------------------------------------------------- helpers


def topk_iou(
    f_s, x: torch.Tensor, y: torch.Tensor, gt: torch.Tensor, maps: torch.Tensor, seed: int = 0
) -> float:
    """Mean top-k IoU of ``maps`` with the ground-truth digit (the registered ``topk_iou``)."""
    from xaiarena.metrics import EvalBatch
    from xaiarena.registry import METRICS

    batch = EvalBatch(model=f_s, inputs=x, targets=y, labels=y, masks=gt)
    out = METRICS.create("topk_iou").evaluate(
        batch, {"m": maps}, generator=torch.Generator().manual_seed(seed)
    )
    return float(out.scores["topk_iou"]["m"].nanmean())


def median_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from xaiarena.explainers.diet.testtime import spearman_pairs

    r = spearman_pairs(list(a), list(b))
    r = r[~torch.isnan(r)]
    return float(r.median()) if len(r) else float("nan")


def quartiles(v: torch.Tensor) -> list[float]:
    v = v[~torch.isnan(v)].double()
    if not len(v):
        return [float("nan")] * 3
    return [float(v.quantile(q)) for q in (0.25, 0.5, 0.75)]


# --------------------------------------------------------------------------- convergence study

#: the test-time settings the study follows (both with a horizon of 66 steps at 32x32 cells)
STUDY_SETTINGS = {
    "w8": {"test_sparsity_weight": 8.0, "test_lr": 125.0},
    "w1": {"test_sparsity_weight": 1.0, "test_lr": 1000.0},
}
#: candidate stopping rules applied afterwards to the recorded trajectories: window (horizons),
#: tolerance on the window-mean loss, on the window-mean mask (both relative), and whether the noise
#: allowances of the implemented rule apply (testtime.LOSS_NOISE_Z, MASK_NOISE_RATIO)
CANDIDATES = [
    (wh, tl, tm, noise)
    for noise in (False, True)
    for wh in (0.5, 1.0, 2.0)
    for tl, tm in ((0.01, 0.05), (0.02, 0.1), (0.05, 0.2))
]


def record(
    diet, x: torch.Tensor, config, seed: int, steps: int, every: int
) -> dict[str, torch.Tensor]:
    """Run the ``converged`` procedure for exactly ``steps`` steps (rule off) and keep every step's
    per-sample loss and every ``every``-th step's masks."""
    import dataclasses

    from xaiarena.explainers.diet.image import _digests
    from xaiarena.explainers.diet.testtime import optimise_test_masks, sample_seed

    cfg = dataclasses.replace(
        config, test_procedure="converged", test_window=1e6, test_max_steps=steps
    )
    n = len(x)
    losses = torch.zeros(steps, n, dtype=torch.float64)
    snaps = torch.zeros(steps // every, n, *diet.masker.init_masks(1).shape[1:])

    def trace(t, idx, loss, masks):
        losses[t, idx] = loss
        if (t + 1) % every == 0:
            snaps[(t + 1) // every - 1, idx] = masks.cpu()

    seeds = [sample_seed(seed, d) for d in _digests(x)]
    optimise_test_masks(
        diet.f_s, x, diet.test_masker, cfg, seed=seed, sample_seeds=seeds, trace=trace
    )
    return {"losses": losses, "snaps": snaps}


def apply_rule(rec, half: int, every: int, tol: float, mask_tol: float, noise: bool):
    """The implemented rule (testtime._converged) on a recorded trajectory: half-windows of ``half``
    steps (a multiple of ``every``; half-window mask means from the snapshots), checked at the end
    of every half-window after the fourth. Returns each sample's stop step (the recorded length
    where it never stops) and its map (the mean of the last window)."""
    from xaiarena.explainers.diet.testtime import LOSS_NOISE_Z, MASK_NOISE_RATIO

    losses, snaps = rec["losses"], rec["snaps"]
    steps, n = losses.shape
    per = half // every
    nh = steps // half
    lh = losses[: nh * half].view(nh, half, n)
    lsum, lsq = lh.sum(1), (lh**2).sum(1)
    mh = snaps[: nh * per].view(nh, per, n, -1).mean(1)
    stop = torch.full((n,), steps, dtype=torch.long)
    last = torch.full((n,), nh - 1, dtype=torch.long)
    w = 2 * half
    for h in range(3, nh):
        m1, m0 = (lsum[h - 1] + lsum[h]) / w, (lsum[h - 3] + lsum[h - 2]) / w
        v1 = ((lsq[h - 1] + lsq[h] - w * m1**2) / (w - 1)).clamp_min(0)
        v0 = ((lsq[h - 3] + lsq[h - 2] - w * m0**2) / (w - 1)).clamp_min(0)
        dl = (m1 - m0).abs()
        ok_loss = dl <= tol * m0.abs()
        new, old = (mh[h - 1] + mh[h]) / 2, (mh[h - 3] + mh[h - 2]) / 2
        kept = torch.maximum(new.mean(1), old.mean(1)).clamp_min(1e-12)
        dm = (new - old).abs().mean(1)
        ok_mask = dm <= mask_tol * kept
        if noise:
            ok_loss |= dl <= LOSS_NOISE_Z * ((v1 + v0) / w).sqrt()
            ok_mask |= dm <= MASK_NOISE_RATIO * (mh[h] - mh[h - 1]).abs().mean(1)
        hit = ok_loss & ok_mask & (stop == steps)
        stop[hit] = (h + 1) * half
        last[hit] = h
    maps = torch.stack([(mh[last[i] - 1, i] + mh[last[i], i]) / 2 for i in range(n)])
    return stop, maps.view(n, *snaps.shape[2:])


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).double() - a.flatten(1).double().mean(1, keepdim=True)
    b = b.flatten(1).double() - b.flatten(1).double().mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(
        den > 0, (a * b).sum(1) / den.clamp_min(1e-30), torch.full_like(den, float("nan"))
    )


def convergence(diet, x, gt, y, steps: int, every: int, out: Path, raw_dir: Path) -> dict[str, Any]:
    """Record (or load) the trajectories, then the set-level curves and the candidate rules."""
    import dataclasses

    from xaiarena.explainers.diet.testtime import (
        _rel_mask_change,
        horizons,
        mask_units,
        second_seed,
    )

    seeds = {"seed": diet._seed, "second seed": second_seed(diet._seed)}
    result: dict[str, Any] = {
        "n_images": len(x),
        "steps": steps,
        "every": every,
        "settings": {},
        "seeds": seeds,
    }
    up = diet.masker.expand
    for name, over in STUDY_SETTINGS.items():
        cfg = dataclasses.replace(diet.config, **over)
        horizon = int(horizons(cfg, diet.test_masker, x, diet.masker.init_masks(1))[0])
        recs = {}
        for label, sd in seeds.items():
            raw = raw_dir / f"convergence_{name}_{sd}_{len(x)}x{steps}.pt"
            if raw.exists():
                recs[label] = torch.load(raw, weights_only=True)
                continue
            t0 = time.perf_counter()
            recs[label] = record(diet, x, cfg, sd, steps, every)
            torch.save(recs[label], raw)
            print(
                f"[convergence] {name} {label}: {steps} steps x {len(x)} images in "
                f"{time.perf_counter() - t0:.0f}s",
                flush=True,
            )
        a, b = recs["seed"], recs["second seed"]
        final = a["snaps"][-1]
        window = horizon
        per = window // every
        n_win = steps // window
        wm = {
            k: r["snaps"][: n_win * per].view(n_win, per, *r["snaps"].shape[1:]).mean(1)
            for k, r in recs.items()
        }
        units = mask_units(diet.test_masker, x, final)
        curve = []
        for j in range(len(a["snaps"])):
            t = (j + 1) * every
            row = {
                "step": t,
                "horizons": round(t / horizon, 3),
                "set_loss": float(a["losses"][t - every : t].mean()),
                "kept": float(up(a["snaps"][j]).mean()),
                "spearman_to_final": median_spearman(up(a["snaps"][j])[:, 0], up(final)[:, 0]),
                "spearman_seeds": median_spearman(up(a["snaps"][j])[:, 0], up(b["snaps"][j])[:, 0]),
            }
            if t % window == 0:  # window = 1 horizon: window means of the loss and of the masks
                k = t // window - 1
                row["topk_iou"] = topk_iou(diet.f_s, x, y, gt, up(a["snaps"][j])[:, 0])
                row["topk_iou_window_mean"] = topk_iou(diet.f_s, x, y, gt, up(wm["seed"][k])[:, 0])
                row["spearman_seeds_window_mean"] = median_spearman(
                    up(wm["seed"][k])[:, 0], up(wm["second seed"][k])[:, 0]
                )
                row["spearman_to_final_window_mean"] = median_spearman(
                    up(wm["seed"][k])[:, 0], up(wm["seed"][-1])[:, 0]
                )
                if k >= 1:
                    cur, prev = (
                        a["losses"][t - window : t].mean(0),
                        a["losses"][t - 2 * window : t - window].mean(0),
                    )
                    row["set_loss_change"] = float((cur.mean() - prev.mean()).abs() / prev.mean())
                    lc = (cur - prev).abs() / prev
                    rel = _rel_mask_change(
                        diet.test_masker, wm["seed"][k], wm["seed"][k - 1], x, units
                    )
                    absc = (wm["seed"][k] - wm["seed"][k - 1]).abs().flatten(1).mean(1).double()
                    row["sample_loss_change_q"] = quartiles(lc)
                    row["sample_mask_change_q"] = quartiles(rel)
                    row["sample_abs_mask_change_q"] = quartiles(absc)
                    row["sample_1_minus_pearson_q"] = quartiles(
                        1 - pearson_rows(wm["seed"][k], wm["seed"][k - 1])
                    )
            curve.append(row)
        rules = []
        for wh, tl, tm, noise in CANDIDATES:
            half = max(every, int(round(wh * horizon / 2 / every)) * every)
            stops, maps = {}, {}
            for label, r in recs.items():
                stops[label], m = apply_rule(r, half, every, tl, tm, noise)
                maps[label] = up(m)[:, 0]
            sa = stops["seed"]
            rules.append(
                {
                    "window_horizons": wh,
                    "window_steps": 2 * half,
                    "tol": tl,
                    "mask_tol": tm,
                    "noise_allowance": noise,
                    "steps_quartiles": quartiles(sa.double()),
                    "steps_mean": float(sa.double().mean()),
                    "steps_max": int(sa.max()),
                    "never_stopped": int((sa == steps).sum()),
                    "spearman_seeds": median_spearman(maps["seed"], maps["second seed"]),
                    "topk_iou": topk_iou(diet.f_s, x, y, gt, maps["seed"]),
                }
            )
        result["settings"][name] = {
            "options": over,
            "horizon": horizon,
            "curve": curve,
            "rules": rules,
        }
        if over["test_sparsity_weight"] == diet.config.test_sparsity_weight and over["test_lr"] == (
            diet.config.test_lr
        ):
            result["settings"][name]["implemented"] = [
                implemented(diet, x, y, gt, seeds, wh) for wh in (0.5, 1.0, 2.0)
            ]
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result


def implemented(diet, x, y, gt, seeds: dict[str, int], window: float) -> dict[str, Any]:
    """The converged procedure with DiET's defaults but ``test_window``, as implemented, on the
    study images, per seed."""
    import dataclasses

    from xaiarena.explainers.diet.image import _digests
    from xaiarena.explainers.diet.testtime import optimise_test_masks, sample_seed, spearman_pairs

    runs, maps = {}, {}
    cfg = dataclasses.replace(diet.config, test_window=window)
    for label, sd in seeds.items():
        t0 = time.perf_counter()
        masks, summary = optimise_test_masks(
            diet.f_s,
            x,
            diet.test_masker,
            cfg,
            seed=sd,
            sample_seeds=[sample_seed(sd, d) for d in _digests(x)],
        )
        maps[label] = diet.masker.expand(masks)[:, 0]
        st = summary["steps"].double()
        runs[label] = {
            "steps_quartiles": quartiles(st),
            "steps_mean": float(st.mean()),
            "steps_max": int(st.max()),
            "stopped_at_limit": int(summary["limit_hit"].sum()),
            "loss_change_median": float(summary["loss_change"].nanmedian()),
            "mask_change_median": float(summary["mask_change"].nanmedian()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    rho = spearman_pairs(list(maps["seed"]), list(maps["second seed"]))
    return {
        "settings": {
            k: getattr(cfg, k)
            for k in (
                "test_lr",
                "test_sparsity_weight",
                "test_window",
                "test_tol",
                "test_mask_tol",
                "test_average",
            )
        },
        "runs": runs,
        "spearman_seeds": float(rho.nanmedian()),
        "spearman_seeds_q": quartiles(rho),
        "topk_iou": topk_iou(diet.f_s, x, y, gt, maps["seed"]),
    }


def convergence_markdown(result: dict[str, Any]) -> str:
    def q(v):
        return " / ".join(f"{x:.3f}" for x in v)

    lines = [
        f"Convergence study: {result['n_images']} training-split images, {result['steps']} steps "
        f"of the per-sample procedure (stopping rule off), seeds {result['seeds']}.",
        "",
    ]
    for name, res in result["settings"].items():
        lines += [
            f"### {name}: {res['options']} (horizon {res['horizon']} steps)",
            "",
            "Every horizon (= window W): set-level loss (mean over the images of the last steps' "
            "losses), kept fraction, the set-level relative change of the window-mean loss, "
            "per-image quartiles of the relative changes of the window-mean loss and mask, median "
            "per-image Spearman of the last iterate with the last step's and with the second "
            "seed's, the same for window-mean masks, top-k IoU of the last iterate / window mean.",
            "",
            "| step | H | set loss | kept | set loss change | loss change q25/50/75 | mask change "
            "q25/50/75 | iterate: rho final / rho seeds | window mean: rho final / rho seeds | IoU "
            "iterate / mean |",
            "|" + "---|" * 10,
        ]
        for r in res["curve"]:
            if "topk_iou" not in r:
                continue
            lc = q(r["sample_loss_change_q"]) if "sample_loss_change_q" in r else ""
            mc = q(r["sample_mask_change_q"]) if "sample_mask_change_q" in r else ""
            sl = f"{r['set_loss_change']:.4f}" if "set_loss_change" in r else ""
            lines.append(
                f"| {r['step']} | {r['horizons']:g} | {r['set_loss']:.4f} | {r['kept']:.3f} | {sl} "
                f"| {lc} | {mc} | {r['spearman_to_final']:.3f} / {r['spearman_seeds']:.3f} | "
                f"{r['spearman_to_final_window_mean']:.3f} / {r['spearman_seeds_window_mean']:.3f} "
                f"| {r['topk_iou']:.3f} / {r['topk_iou_window_mean']:.3f} |"
            )
        lines += [
            "",
            "Candidate rules on the recorded trajectories (half-window mask means from the "
            "snapshots): checked every half-window, the map is the mean mask of the last window; "
            "with the noise allowances of the implemented rule or without:",
            "",
            "| window (H) | loss tol | mask tol | noise allowance | steps q25 / median / q75 | "
            "mean | max | never stopped | Spearman seeds | top-k IoU |",
            "|" + "---|" * 10,
        ]
        for r in res["rules"]:
            sq = r["steps_quartiles"]
            lines.append(
                f"| {r['window_horizons']:g} | {r['tol']:g} | {r['mask_tol']:g} | "
                f"{'yes' if r['noise_allowance'] else 'no'} | {sq[0]:.0f} / {sq[1]:.0f} / "
                f"{sq[2]:.0f} | {r['steps_mean']:.0f} | {r['steps_max']} | {r['never_stopped']} | "
                f"{r['spearman_seeds']:.3f} | {r['topk_iou']:.3f} |"
            )
        lines.append(
            "\n(These maps are means of the snapshots, every 6th step: noisier than the "
            "implemented rule's, which averages every step of the window; see below.)"
        )
        if res.get("implemented"):
            lines += [
                "",
                "The implemented rule (testtime._converged, exact: every step's mask in the window "
                "means), DiET's defaults but the window, run as it is on the same images with both "
                "seeds:",
                "",
                "| window (H) | seed | steps q25 / median / q75 | mean | max | stopped at the "
                "limit | final loss change (median) | final mask change (median) | Spearman seeds "
                "(q25 / median / q75) | top-k IoU |",
                "|" + "---|" * 10,
            ]
            for imp in res["implemented"]:
                rq = imp["spearman_seeds_q"]
                for label, v in imp["runs"].items():
                    sq = v["steps_quartiles"]
                    both = (
                        f"{rq[0]:.3f} / {rq[1]:.3f} / {rq[2]:.3f} | {imp['topk_iou']:.3f}"
                        if label == "seed"
                        else " | "
                    )
                    lines.append(
                        f"| {imp['settings']['test_window']:g} | {label} | {sq[0]:.0f} / "
                        f"{sq[1]:.0f} / {sq[2]:.0f} | {v['steps_mean']:.0f} | {v['steps_max']} | "
                        f"{v['stopped_at_limit']} | {v['loss_change_median']:.4f} | "
                        f"{v['mask_change_median']:.4f} | {both} |"
                    )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sensitivity

#: variants of DiET's test time on the fitted default f_s: options of the ``diet`` explainer
#: (test-time only, so the fit is reused), and ``seed``: the test-time seed alone (the fit stays
#: seed 0's)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "second seed": {"seed": "second"},
    "third seed": {"seed": "third"},
    "background: the authors' colour": {"test_background_mean": [0.527, 0.447, 0.403]},
    "background: black": {"test_background_mean": 0.0},
    "sparsity weight 4 (lr 250)": {"test_sparsity_weight": 4.0, "test_lr": 250.0},
    "sparsity weight 1 (lr 1000)": {"test_sparsity_weight": 1.0, "test_lr": 1000.0},
    "procedure: authors (w 8, lr 125, our background)": {
        "test_procedure": "authors",
        "test_sparsity_weight": 8.0,
        "test_background_mean": "dataset",
    },
    "procedure: authors (its defaults: w 1, its colour, lr 125)": {"test_procedure": "authors"},
    "old default (66 steps, the horizon; last iterate)": {
        "test_max_steps": 66,
        "test_window": 1e6,
        "test_average": False,
    },
}


def variant(
    s, prep, spec, options: dict[str, Any], x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Test-time masks of ``x`` for the default fit with the test-time ``options`` (cached in the
    fit's folder under their own keys)."""
    from xaiarena.engine import cache as ck
    from xaiarena.explainers.diet.testtime import second_seed
    from xaiarena.registry import EXPLAINERS

    opts = {k: v for k, v in options.items() if k != "seed"}
    if opts.get("test_background_mean") == "dataset":
        opts["test_background_mean"] = list(prep.task.mean)
    diet = EXPLAINERS.create(spec.name, **{**spec.params, **opts})
    fit_dir = s.cache.path(
        "explainers", prep.dataset, ck.fit_key(prep.model_key, spec.hash_dict(), s.seed).hash
    )
    diet.fit(
        prep.model,
        prep.task,
        device=s.device,
        generator=torch.Generator().manual_seed(s.seed),
        cache_dir=fit_dir,
    )
    assert diet.report()["cache_hit"], "the variant must reuse the default fit"
    if options.get("seed") == "second":
        diet._seed = second_seed(diet._seed)
    elif options.get("seed") == "third":
        diet._seed = second_seed(second_seed(diet._seed))
    diet._update_test_stats()
    t0 = time.perf_counter()
    diet.prepare_set(diet.f_s, x)
    masks = diet.test_masks(x)
    info = dict(diet.report().get("test_time") or {})
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["seed_check"] = diet.report().get("test_seed_check")
    return diet.masker.expand(masks.float())[:, 0], info


def sensitivity(s, prep, spec, x: torch.Tensor, out: Path) -> dict[str, Any]:
    from xaiarena.explainers.diet.testtime import spearman_pairs

    maps: dict[str, torch.Tensor] = {}
    rows = []
    for name, options in VARIANTS.items():
        m, info = variant(s, prep, spec, options, x)
        maps[name] = m
        rho = spearman_pairs(list(m), list(maps["default"]))
        rows.append(
            {
                "variant": name,
                "options": options,
                "spearman_vs_default": quartiles(rho),
                "kept": float(m.mean()),
                "steps_median": info.get("steps_median"),
                "steps_max": info.get("steps_max"),
                "stopped_at_limit": info.get("stopped_at_limit"),
                "epochs": info.get("epochs"),
                "seconds": info["seconds"],
                "seed_check": info.get("seed_check"),
            }
        )
        print(
            f"[sensitivity] {name}: median Spearman vs default "
            f"{rows[-1]['spearman_vs_default'][1]:.3f}, steps median {info.get('steps_median')}, "
            f"{info['seconds']}s",
            flush=True,
        )
        out.with_suffix(".json").write_text(
            json.dumps({"n_images": len(x), "rows": rows}, indent=1)
        )
    pairs = [
        ("second seed", "third seed"),
        (
            "procedure: authors (w 8, lr 125, our background)",
            "procedure: authors (its defaults: w 1, its colour, lr 125)",
        ),
    ]
    extra = []
    for a, b in pairs:
        extra.append(
            {"a": a, "b": b, "spearman": quartiles(spearman_pairs(list(maps[a]), list(maps[b])))}
        )
    return {"n_images": len(x), "rows": rows, "pairs": extra}


def sensitivity_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Per-image Spearman correlation between DiET's maps of {result['n_images']} evaluation "
        "images of the default benchmark under each variant and under the default (median [q25, "
        "q75]).",
        "",
        "| variant | Spearman vs default | kept (mean map) | steps median (max) | at the limit |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        q = r["spearman_vs_default"]
        steps = (
            f"{r['epochs']} epochs"
            if r.get("epochs")
            else f"{r['steps_median']:.0f} ({r['steps_max']})"
            if r.get("steps_median") is not None
            else ""
        )
        lines.append(
            f"| {r['variant']} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] | {r['kept']:.3f} | {steps} | "
            f"{r.get('stopped_at_limit')} |"
        )
    for p in result.get("pairs", []):
        q = p["spearman"]
        lines.append(f"| {p['a']} vs {p['b']} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] | | | |")
    lines += [
        "",
        "Seed check of each variant (median per-sample Spearman, first 8 samples by digest, second "
        "seed; authors: that subset as its own set with each seed): "
        + "; ".join(
            f"{r['variant']} {r['seed_check']['median_spearman']:.2f}"
            for r in result["rows"]
            if r.get("seed_check")
        )
        + ".",
        "",
        "Everything but the variant is the default (converged, w 8, test_lr 125 per 1024 cells, "
        "the dataset's mean as background colour, std 0.05, DiET's seed). The old default ran 66 "
        "steps (its horizon cap, hence 'at the limit') with the last iterate as the map and "
        "per-sample backgrounds (the old code drew one background per step for the whole batch).",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- cost


def timing(s, prep, spec, repeats: int = 2) -> dict[str, Any]:
    """CPU seconds (process time) of DiET's test-time masks for the benchmark's evaluation set, the
    old procedure (66 steps, the horizon) against the default (with its seed check), alternated
    ``repeats`` times in one process; nothing served from a cache."""
    from xaiarena.engine import cache as ck
    from xaiarena.registry import EXPLAINERS

    fit_dir = s.cache.path(
        "explainers", prep.dataset, ck.fit_key(prep.model_key, spec.hash_dict(), s.seed).hash
    )
    # the old procedure had no seed check
    variants = {
        "old (66 steps)": {
            **VARIANTS["old default (66 steps, the horizon; last iterate)"],
            "test_seed_check": 0,
        },
        "default": {},
    }
    out: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, options in variants.items():
            diet = EXPLAINERS.create(spec.name, **{**spec.params, **options})
            diet.fit(
                prep.model,
                prep.task,
                device=s.device,
                generator=torch.Generator().manual_seed(s.seed),
                cache_dir=fit_dir,
            )
            diet.cache_dir, diet._test_cache, diet._checks = (
                None,
                {},
                {},
            )  # compute, never serve or write
            c0, w0 = time.process_time(), time.perf_counter()
            diet.prepare_set(diet.f_s, prep.inputs)
            info = diet.report()["test_time"]
            out[name].append(
                {
                    "cpu_seconds": round(time.process_time() - c0, 2),
                    "wall_seconds": round(time.perf_counter() - w0, 2),
                    "steps_mean": info["steps_mean"],
                    "n_masks": info["n_masks"],
                    "seed_check": bool(diet.report().get("test_seed_check")),
                }
            )
            print(f"[timing] {name}: {out[name][-1]}", flush=True)
    cpu = {k: sum(r["cpu_seconds"] for r in v) / len(v) for k, v in out.items()}
    return {
        "runs": out,
        "cpu_seconds_mean": cpu,
        "ratio_default_to_old": cpu["default"] / cpu["old (66 steps)"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("prepare", "convergence", "sensitivity", "timing"))
    ap.add_argument(
        "--cache",
        default=str(ROOT / "runs" / "diet_default"),
        help="run directory whose cache/ holds f_b and DiET (default runs/diet_default)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--n", type=int, default=None, help="images (convergence: 64; sensitivity: all 128)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="convergence: steps to record (default 2000)"
    )
    ap.add_argument(
        "--out", default=None, help="output path without suffix (default benchmarks/results/...)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XAIARENA_QUIET", "1")
    cache = Path(args.cache)
    s, prep, spec, diet = setting(cache)
    if args.what == "prepare":
        print(
            json.dumps(
                {k: v for k, v in diet.report().items() if not isinstance(v, dict)}, indent=1
            )
        )
        return
    if args.what == "convergence":
        x, idx = study_images(prep, diet, args.n or 32)
        gt = prep.task.train.masks[idx]
        y = prep.task.train.labels[idx]
        out = Path(args.out) if args.out else RESULTS / "diet_convergence"
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        res = convergence(diet, x, gt, y, args.steps or 1320, 6, out, cache)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["threads"] = torch.get_num_threads()
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        out.with_suffix(".md").write_text(convergence_markdown(res))
        print(convergence_markdown(res))
        return
    if args.what == "timing":
        res = timing(s, prep, spec)
        out = Path(args.out) if args.out else RESULTS / "diet_test_time_cost"
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    x = prep.inputs if args.n is None else prep.inputs[: args.n]
    out = Path(args.out) if args.out else RESULTS / "diet_sensitivity"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = sensitivity(s, prep, spec, x, out)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["threads"] = torch.get_num_threads()
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(sensitivity_markdown(res))
    print(sensitivity_markdown(res))


if __name__ == "__main__":
    sys.exit(main())
