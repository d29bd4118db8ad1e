"""Coverage and size of the replicate statistics, by simulation through xaiarena's own functions.

With ``replicates: N`` every retrained model is scored on the same evaluation samples, so seeds
and samples are crossed random factors. Scores are simulated as

    y[e, r, i] = mu + a[e, r] + b[e, i] + eps[e, r, i]      (explainer e, seed r, sample i)

with independent normal seed effects (SD ``--seed-sd``), sample effects (``--image-sd``) and
interactions (``--resid-sd``), the same true mean for both explainers (so every rejection of
"equal means" is a false one). For each regime it reports, over ``--runs`` simulated runs:

* ``crossed``: :func:`xaiarena.stats.crossed_mean` / :func:`~xaiarena.stats.crossed_t`, the
  functions under ``summarize_replicates`` and ``replicate_tests`` (two-way crossed random
  effects, ANOVA estimators, Satterthwaite df, never narrower than either one-factor
  t-interval) -- what a run writes;
  with ``--frames`` the long-table functions themselves (slower, the same numbers);
* ``Satterthwaite alone``: the same variance and df without the one-factor floor;
* ``replicate means``: the method of xaiarena up to f5a3d5a, a t-interval over the per-replicate
  means and a paired t-test over them (``stats.paired_t`` of the per-replicate mean differences):
  it counts retraining variance only;
* ``pigeonhole``: the crossed-factor bootstrap of Owen (2007, Ann. Appl. Stat. 1(2)), seeds and
  samples resampled independently, percentile interval, 1000 resamples -- for comparison.

Coverage of the nominal 95% interval of explainer A's mean, and the rate of p < 0.05 for A vs B;
the Monte-Carlo standard error of a rate q over ``runs`` runs is sqrt(q (1 - q) / runs).

    python benchmarks/replicate_coverage.py                      # 2000 runs per regime
    python benchmarks/replicate_coverage.py --runs 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd
from scipy import stats as sps

from xaiarena import stats

REGIMES = {
    # name: (image SD, seed SD, interaction SD)
    "images dominate": (0.15, 0.005, 0.05),
    "balanced": (0.15, 0.15 * np.sqrt(3 / 256), 0.05),  # s2_seed / 3 == s2_image / 256
    "seeds dominate": (0.15, 0.10, 0.05),
}
MU = 0.5


def simulate(
    rng: np.random.Generator, n: int, reps: int, image_sd: float, seed_sd: float, resid_sd: float
) -> np.ndarray:
    """``(2 explainers, reps, n)`` scores with the same true mean ``MU``."""
    a = rng.normal(0, seed_sd, (2, reps, 1))
    b = rng.normal(0, image_sd, (2, 1, n))
    return MU + a + b + rng.normal(0, resid_sd, (2, reps, n))


def long_table(y: np.ndarray) -> pd.DataFrame:
    """The per_sample table of a replicate run holding ``y`` (explainers ``A`` and ``B``)."""
    _, reps, n = y.shape
    e, r, i = np.meshgrid(np.arange(2), np.arange(reps), np.arange(n), indexing="ij")
    return pd.DataFrame(
        {
            "dataset": "sim",
            "replicate": r.ravel(),
            "seed": r.ravel(),
            "explainer": np.array(["A", "B"])[e.ravel()],
            "metric": "m",
            "sample_id": i.ravel(),
            "value": y.ravel(),
        }
    )


def replicate_means(y: np.ndarray) -> tuple[tuple[float, float], float]:
    """The old method: t-interval over the replicate means of A, paired t over replicate means."""
    m = y[0].mean(axis=1)
    half = sps.t.ppf(0.975, m.size - 1) * m.std(ddof=1) / np.sqrt(m.size)
    _, p = stats.paired_t(y[0].mean(axis=1) - y[1].mean(axis=1))
    return (m.mean() - half, m.mean() + half), p


def pigeonhole(
    y: np.ndarray, rng: np.random.Generator, n_boot: int = 1000
) -> tuple[tuple[float, float], float]:
    """Owen's crossed-factor bootstrap: seeds and samples resampled independently (percentile)."""
    _, reps, n = y.shape
    wr = rng.multinomial(reps, np.full(reps, 1 / reps), n_boot).astype(np.float64)
    wi = rng.multinomial(n, np.full(n, 1 / n), n_boot).astype(np.float64)
    boot_a = np.einsum("br,rn,bn->b", wr, y[0], wi) / (reps * n)
    boot_d = np.einsum("br,rn,bn->b", wr, y[0] - y[1], wi) / (reps * n)
    lo, hi = np.quantile(boot_a, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(boot_d <= 0), np.mean(boot_d >= 0)))  # percentile-interval test
    return (lo, hi), p


def satterthwaite(y: np.ndarray) -> tuple[tuple[float, float], float]:
    """The crossed random-effects interval and test on Satterthwaite's df alone (no floor)."""
    mean, var, df = stats._crossed_parts(y[0])
    half = sps.t.ppf(0.975, df[0]) * np.sqrt(var[0])
    dm, dv, ddf = stats._crossed_parts(y[0] - y[1])
    p = 2 * sps.t.sf(abs(dm) / np.sqrt(dv[0]), ddf[0])
    return (mean - half, mean + half), p


METHODS = ("crossed", "Satterthwaite alone", "replicate means", "pigeonhole")


def run_regime(name: str, runs: int, n: int, reps: int, seed: int, frames: bool) -> dict:
    image_sd, seed_sd, resid_sd = REGIMES[name]
    rng = np.random.default_rng(seed)
    boot_rng = np.random.default_rng(seed + 1)
    hits = {k: [0, 0] for k in METHODS}
    dfs = []
    for _ in range(runs):
        y = simulate(rng, n, reps, image_sd, seed_sd, resid_sd)
        if frames:  # the functions a run calls, on the long table
            ps = long_table(y)
            s = stats.summarize_replicates(ps, {"m": True}).set_index("explainer").loc["A"]
            ci, df = (s["ci_low"], s["ci_high"]), s["df"]
            t = stats.replicate_tests(ps, tests=("t",))
            p = float(t["p_value"].iloc[0])
        else:  # the same numbers from the array functions underneath (fast)
            r = stats.crossed_mean(y[0])
            ci, df = (r["ci_low"], r["ci_high"]), r["df"]
            p = stats.crossed_t(y[0] - y[1])[1]
        dfs.append(df)
        for key, (c, pv) in {
            "crossed": (ci, p),
            "Satterthwaite alone": satterthwaite(y),
            "replicate means": replicate_means(y),
            "pigeonhole": pigeonhole(y, boot_rng),
        }.items():
            hits[key][0] += bool(c[0] <= MU <= c[1])
            hits[key][1] += bool(pv < 0.05)
    out = {
        "regime": name,
        "image_sd": image_sd,
        "seed_sd": round(seed_sd, 4),
        "resid_sd": resid_sd,
        "n_samples": n,
        "n_replicates": reps,
        "runs": runs,
        "median_df": float(np.median(dfs)),
    }
    for key, (cov, rej) in hits.items():
        out[key] = {"coverage": cov / runs, "rejection": rej / runs}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--n", type=int, default=256, help="evaluation samples")
    ap.add_argument("--replicates", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--frames",
        action="store_true",
        help="call summarize_replicates/replicate_tests on long tables (slower, same numbers)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = [
        run_regime(name, args.runs, args.n, args.replicates, args.seed, args.frames)
        for name in REGIMES
    ]
    mcse = np.sqrt(0.95 * 0.05 / args.runs)
    print(
        f"{args.runs} runs per regime, {args.n} samples x {args.replicates} replicates; "
        f"Monte-Carlo SE of a rate near 0.95 or 0.05: {mcse:.4f}\n"
    )
    print(
        "| regime | image SD | seed SD | interaction SD | median df | method | coverage of 95% CI "
        "| rejections at 0.05 (true null) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in res:
        for key in METHODS:
            print(
                f"| {r['regime']} | {r['image_sd']} | {r['seed_sd']} | {r['resid_sd']} "
                f"| {r['median_df']:.1f} | {key} | {r[key]['coverage']:.3f} "
                f"| {r[key]['rejection']:.3f} |"
            )
    print(
        "\nmedian df: of the crossed interval (near replicates - 1: retraining variance decides)",
        file=sys.stderr,
    )
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "mcse": mcse, "results": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
