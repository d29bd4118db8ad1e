"""Statistics over per-sample metric scores: bootstrap CIs, paired tests, rankings.

Everything here works on the long table ``per_sample`` with columns
``dataset, explainer, metric, sample_id, value`` (one row per score; NaN allowed)
and is deterministic given its ``seed``.

Summaries -- :func:`summarize`
    Per (dataset, explainer, metric): the mean over samples (NaN scores dropped,
    ``n`` = scores used) and a 95% bootstrap confidence interval of that mean.
    The default interval is **BCa** (bias-corrected and accelerated; Efron &
    Tibshirani 1993, ch. 14), the same estimator as ``scipy.stats.bootstrap``
    (``method="BCa"``) and identical to it for the same generator and number of
    resamples; ``method="percentile"`` gives the plain percentile interval.
    Resampling is vectorised (one ``(B, n)`` index draw per group). The generator
    of a group is seeded from ``(seed, dataset, metric)`` and scores are ordered by
    ``sample_id``, so explainers scored on the same samples are resampled with
    the same indices (common random numbers) and a group's interval does not
    depend on which other groups are present. Degenerate cases: ``n == 0`` gives
    NaN mean and interval, ``n == 1`` gives the value and a NaN interval (no
    spread to resample), all-equal scores give ``[v, v]``; if BCa is undefined
    (every bootstrap mean on one side of the estimate) the percentile interval is
    used for that group.

Paired tests -- :func:`paired_tests`
    For every pair of explainers on the same (dataset, metric), scores are matched
    by ``sample_id`` and samples where either score is NaN are dropped (the count
    is available with ``with_n=True`` and is logged). Differences are
    ``d = value_a - value_b``. Two tests per pair: the paired t-test (identical to
    ``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon`` with its defaults: zero differences dropped,
    exact null distribution for small samples, normal approximation otherwise).
    ``effect_size`` is Cohen's d_z = mean(d) / sd(d) (ddof=1), positive when
    ``explainer_a`` scores higher (in raw metric units, whatever the direction).
    ``p_holm`` is Holm's step-down adjustment over all pairs of one
    (dataset, metric, test) family. Degenerate cases: fewer than 2 pairs gives NaN
    statistic, p-values and effect size (and the pair is left out of the Holm
    family); all differences zero gives statistic 0, p = 1, d_z = 0; a constant
    non-zero difference (sd = 0) gives t = +-inf, p = 0, d_z = +-inf (the limit
    of an ever smaller spread), while Wilcoxon is computed as usual.
    Tests are never run across datasets: replicates of one dataset are not
    independent evidence, and every family lives within one dataset.

Rankings -- :func:`rank` and :func:`combined_ranking`
    Within a (dataset, metric), explainer ``A`` is *significantly better* than
    ``B`` when the Holm-adjusted p-value of their pair is below ``alpha`` and the
    paired mean difference favours ``A`` given ``higher_is_better``. The rank
    of an explainer is ``1 +`` the number of explainers significantly better
    than it, so explainers that nothing beats share rank 1 and ranks are ties
    wherever differences are not significant. ``group`` is the compact letter
    display (Piepho 2004, insert-and-absorb): two explainers share a letter
    exactly when they are not significantly different, and letters are
    assigned from the best mean down ("a" contains the best explainer).
    Across datasets, :func:`combined_ranking` averages these per-dataset ranks
    (one value per dataset, never pooling samples of different datasets).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "dataset", "model", "explainer", "metric", "mean", "ci_low", "ci_high", "n", "higher_is_better",
]
TESTS_COLUMNS = [
    "dataset", "metric", "explainer_a", "explainer_b", "test", "statistic", "p_value", "p_holm",
    "effect_size",
]
RANK_COLUMNS = ["dataset", "metric", "explainer", "rank", "group"]
COMBINED_COLUMNS = ["metric", "explainer", "mean_rank", "n_datasets"]
PER_SAMPLE_COLUMNS = ["dataset", "explainer", "metric", "sample_id", "value"]
#: columns that, when present, split results into independent comparisons: maps of different
#: explained models (``explained_model``: f_b, f_s) are never compared with each other
CONTEXT_COLUMNS = ("dataset", "grid", "explained_model", "replicate", "seed")
#: the columns of a replicate (a model retrained with another seed)
REPLICATE_COLUMNS = ("replicate", "seed")


def context_columns(df: pd.DataFrame) -> list[str]:
    """The comparison context present in ``df``: ``dataset`` and, where present, ``grid``,
    ``explained_model`` and the replicate (``replicate``, ``seed``)."""
    return [c for c in CONTEXT_COLUMNS if c in df.columns]


def _with_context(columns: list[str], df: pd.DataFrame) -> list[str]:
    """``columns`` with the optional context columns of ``df`` inserted after ``dataset``."""
    extra = [c for c in context_columns(df) if c != "dataset" and c not in columns]
    i = columns.index("dataset") + 1
    return columns[:i] + extra + columns[i:]


def _select(df: pd.DataFrame, ctx: dict[str, Any]) -> pd.DataFrame:
    """Rows of ``df`` in one comparison context (``{"dataset": ..., "explained_model": ...}``)."""
    mask = np.ones(len(df), dtype=bool)
    for c, v in ctx.items():
        if c in df.columns:
            mask &= (df[c] == v).to_numpy()
    return df[mask]
#: ``metric`` value of the rows of :func:`combined_ranking` that average over all metrics
ALL_METRICS = "(all metrics)"
TESTS = ("t", "wilcoxon")
CI_METHODS = ("bca", "percentile")

# --------------------------------------------------------------------------- helpers


def _check_columns(df: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _higher_is_better(meta: Mapping[str, Any], metric: str) -> bool:
    """``meta[metric]`` is a bool or a mapping with ``higher_is_better`` (run.json style)."""
    if metric not in meta:
        raise ValueError(
            f"metric '{metric}' has no entry in meta (higher_is_better unknown); "
            f"known: {sorted(meta)}"
        )
    entry = meta[metric]
    if isinstance(entry, Mapping):
        entry = entry["higher_is_better"]
    return bool(entry)


def _group_seed(seed: int, *keys: Any) -> np.random.SeedSequence:
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF]
    words += [zlib.crc32(str(k).encode("utf-8")) for k in keys]
    return np.random.SeedSequence(words)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: np.ndarray,
    *,
    rng: np.random.Generator | int | None = 0,
    n_boot: int = 2000,
    confidence: float = 0.95,
    method: str = "bca",
    max_chunk: int = 1 << 22,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of the 1-d ``values`` (NaN dropped).

    ``method`` is ``"bca"`` or ``"percentile"``. With ``B * n <= max_chunk``
    the resamples are drawn in one ``rng.integers(0, n, (B, n))`` call, so the
    result equals ``scipy.stats.bootstrap(..., n_resamples=B, rng=same_rng)``.
    Returns ``(nan, nan)`` for fewer than 2 values.
    """
    method = method.lower()
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method '{method}'; valid: {', '.join(CI_METHODS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(rng)
    rows = max(1, min(n_boot, max_chunk // n))
    boot = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, (stop - start, n))
        boot[start:stop] = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo_q, hi_q = alpha, 1 - alpha
    if method == "bca":
        bca = _bca_levels(x, boot, alpha)
        if bca is not None:
            lo_q, hi_q = bca
    lo, hi = np.quantile(boot, [lo_q, hi_q])
    return float(lo), float(hi)


def _bca_levels(x: np.ndarray, boot: np.ndarray, alpha: float) -> tuple[float, float] | None:
    """Adjusted quantile levels of the BCa interval for the mean (None when undefined)."""
    theta = x.mean()
    frac = (np.count_nonzero(boot < theta) + np.count_nonzero(boot <= theta)) / (2 * boot.size)
    z0 = special.ndtri(frac)
    if not np.isfinite(z0):
        return None
    n = x.size
    jack = (x.sum() - x) / (n - 1)  # leave-one-out means
    u = jack.mean() - jack
    den = np.sum(u**2)
    if den == 0:
        return None
    with np.errstate(all="ignore"):
        a = np.sum(u**3) / (6.0 * den**1.5)
    if not np.isfinite(a):
        return None
    z_lo, z_hi = special.ndtri(alpha), special.ndtri(1 - alpha)
    q_lo = special.ndtr(z0 + (z0 + z_lo) / (1 - a * (z0 + z_lo)))
    q_hi = special.ndtr(z0 + (z0 + z_hi) / (1 - a * (z0 + z_hi)))
    if not (np.isfinite(q_lo) and np.isfinite(q_hi)):
        return None
    return float(q_lo), float(q_hi)


def summarize(
    per_sample: pd.DataFrame,
    meta: Mapping[str, Any],
    seed: int = 0,
    *,
    models: Mapping[str, str] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    method: str = "bca",
) -> pd.DataFrame:
    """Mean and bootstrap CI per (dataset, explainer, metric).

    ``meta`` maps each metric to ``higher_is_better`` (a bool, or a mapping with
    that key as in ``run.json["metrics_meta"]``); ``models`` maps each dataset to
    the name of its model (``""`` when not given). Returns the columns
    :data:`SUMMARY_COLUMNS` in the order groups first appear in ``per_sample``.
    """
    _check_columns(per_sample, PER_SAMPLE_COLUMNS, "per_sample")
    ctx = context_columns(per_sample)
    df = per_sample[_with_context(PER_SAMPLE_COLUMNS, per_sample)]
    if models is not None:
        missing = sorted(set(map(str, df["dataset"].unique())) - set(map(str, models)))
        if missing:
            raise ValueError(f"no model given for dataset(s) {missing}")
    rows = []
    for keys, grp in df.groupby([*ctx, "explainer", "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        dataset, (explainer, metric) = context["dataset"], keys[len(ctx):]
        hib = _higher_is_better(meta, metric)
        grp = grp.sort_values("sample_id", kind="stable")
        x = grp["value"].to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        rng = np.random.default_rng(_group_seed(seed, dataset, metric))
        lo, hi = bootstrap_ci(x, rng=rng, n_boot=n_boot, confidence=confidence, method=method)
        rows.append({
            **context,
            "model": "" if models is None else models[str(dataset)],
            "explainer": explainer,
            "metric": metric,
            "mean": float(x.mean()) if x.size else float("nan"),
            "ci_low": lo,
            "ci_high": hi,
            "n": int(x.size),
            "higher_is_better": hib,
        })
    out = pd.DataFrame(rows, columns=_with_context(SUMMARY_COLUMNS, per_sample))
    return out.astype({"n": "int64", "higher_is_better": bool})


# --------------------------------------------------------------------------- paired tests


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted.

    ``p_holm[(i)] = min(1, max_{j <= i} (m - j + 1) * p[(j)])`` over the ``m``
    finite p-values sorted ascending.
    """
    p = np.asarray(list(p_values) if not isinstance(p_values, np.ndarray) else p_values,
                   dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = (m - np.arange(m)) * pv[order]
    adj = np.minimum(1.0, np.maximum.accumulate(scaled))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def cohens_dz(diffs: np.ndarray) -> float:
    """Cohen's d_z = mean / sd (ddof=1) of paired differences (see module doc for sd = 0)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan")
    mean = d.mean()
    if np.all(d == d[0]):
        return 0.0 if d[0] == 0 else float(np.copysign(np.inf, d[0]))
    return float(mean / d.std(ddof=1))


def paired_t(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided paired t-test on differences: ``(t, p)`` as ``scipy.stats.ttest_rel``."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        if d[0] == 0:
            return 0.0, 1.0
        return float(np.copysign(np.inf, d[0])), 0.0
    t = d.mean() / (d.std(ddof=1) / np.sqrt(n))
    p = 2.0 * sps.t.sf(abs(t), n - 1)
    return float(t), float(min(1.0, p))


#: up to this many differences with ties or zeros, scipy's ``wilcoxon`` runs an exact sign-flip
#: permutation test (2**n sign patterns); :func:`_wilcoxon_exact_flips` computes the same p-value
_EXACT_FLIPS_MAX_N = 13


def _wilcoxon_exact_flips(d: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test by enumerating all ``2**n`` sign flips of ``d``.

    The p-value ``scipy.stats.wilcoxon`` gives (method "auto") for ``n <= 13`` differences
    with ties or zeros, where it calls ``scipy.stats.permutation_test`` on the statistic
    ``r_plus`` (zeros dropped, average ranks of ``|d|``). The ranks do not change under sign
    flips, so the null distribution is ``signs @ ranks`` for the 0/1 matrix of all patterns:
    one matrix product instead of 2**n calls of the statistic (~100x faster).
    """
    nz = d != 0
    ranks = np.zeros_like(d)
    ranks[nz] = sps.rankdata(np.abs(d[nz]))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    n = d.size
    patterns = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1  # 1 = the sign of d_i is kept
    positive = np.where(patterns == 1, d > 0, d < 0)
    null = positive.astype(np.float64) @ ranks
    gamma = abs(np.finfo(np.float64).eps * 100 * r_plus)  # scipy's tolerance for equal values
    p_less = np.count_nonzero(null <= r_plus + gamma) / null.size
    p_greater = np.count_nonzero(null >= r_plus - gamma) / null.size
    return min(r_plus, r_minus), float(np.clip(2 * min(p_less, p_greater), 0.0, 1.0))


def paired_wilcoxon(diffs: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test: ``(statistic, p)`` as ``scipy.stats.wilcoxon``."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    if np.all(d == 0):
        return 0.0, 1.0
    nonzero = np.abs(d[d != 0])
    if d.size <= _EXACT_FLIPS_MAX_N and (nonzero.size < d.size or np.unique(nonzero).size < nonzero.size):
        return _wilcoxon_exact_flips(d)
    res = sps.wilcoxon(d)
    return float(res.statistic), float(res.pvalue)


def paired_tests(
    per_sample: pd.DataFrame,
    *,
    tests: Sequence[str] = TESTS,
    with_n: bool = False,
) -> pd.DataFrame:
    """Paired tests between every pair of explainers, per (dataset, metric).

    Returns one row per pair per test with the columns :data:`TESTS_COLUMNS`
    (plus ``n`` = matched pairs used and ``n_dropped`` = samples dropped because
    a score was NaN or missing on one side, when ``with_n``). Explainer pairs
    follow the order of first appearance (``explainer_a`` first). p-values do
    not depend on a significance level; pass ``alpha`` to :func:`rank`.
    """
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; valid: {', '.join(TESTS)}")
    _check_columns(per_sample, PER_SAMPLE_COLUMNS, "per_sample")
    ctx = context_columns(per_sample)
    df = per_sample[_with_context(PER_SAMPLE_COLUMNS, per_sample)]
    ident = [*ctx, "explainer", "metric", "sample_id"]
    dup = df.duplicated(ident)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"{int(dup.sum())} duplicated ({', '.join(ident)}) rows, e.g. {tuple(first[ident])}")
    frames = []
    for keys, grp in df.groupby([*ctx, "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        dataset, metric = context["dataset"], keys[-1]
        explainers = list(pd.unique(grp["explainer"]))
        wide = grp.pivot(index="sample_id", columns="explainer", values="value")
        rows = []
        for a, b in combinations(explainers, 2):
            va, vb = wide[a].to_numpy(np.float64), wide[b].to_numpy(np.float64)
            ok = ~(np.isnan(va) | np.isnan(vb))
            d = va[ok] - vb[ok]
            n_dropped = int((~ok).sum())
            if n_dropped:
                log.info("%s/%s: %s vs %s: %d sample(s) dropped (NaN or unmatched)",
                         dataset, metric, a, b, n_dropped)
            dz = cohens_dz(d)
            for test in tests:
                stat, p = paired_t(d) if test == "t" else paired_wilcoxon(d)
                rows.append({
                    **context, "metric": metric, "explainer_a": a, "explainer_b": b,
                    "test": test, "statistic": stat, "p_value": p, "effect_size": dz,
                    "n": int(d.size), "n_dropped": n_dropped,
                })
        part = pd.DataFrame(rows)
        if len(part):
            for test in tests:
                sel = (part["test"] == test).to_numpy()
                part.loc[sel, "p_holm"] = holm(part.loc[sel, "p_value"].to_numpy())
        frames.append(part)
    cols = _with_context(TESTS_COLUMNS, per_sample) + (["n", "n_dropped"] if with_n else [])
    if not frames or all(len(f) == 0 for f in frames):
        return pd.DataFrame(columns=cols)
    out = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return out[cols]


# --------------------------------------------------------------------------- ranking


def _letters(k: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa, ..."""
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def compact_letter_display(order: Sequence[str], different: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Letters such that two items share one exactly when they are not ``different``.

    ``order`` lists the items best first; letters are assigned in that order.
    Insert-and-absorb algorithm of Piepho (2004), J. Comput. Graph. Stat. 13(2).
    """
    pos = {x: i for i, x in enumerate(order)}
    pairs = sorted({tuple(sorted((a, b), key=pos.__getitem__)) for a, b in different if a != b},
                   key=lambda p: (pos[p[0]], pos[p[1]]))
    cols: list[frozenset] = [frozenset(order)] if order else []
    for i, j in pairs:
        new: list[frozenset] = []
        for c in cols:
            if i in c and j in c:
                new += [c - {i}, c - {j}]
            else:
                new.append(c)
        kept: list[frozenset] = []
        for k, c in enumerate(new):
            absorbed = any(
                (c < o) or (c == o and m < k) for m, o in enumerate(new) if m != k
            )
            if not absorbed:
                kept.append(c)
        cols = kept
    cols.sort(key=lambda c: sorted(pos[x] for x in c))
    out = {x: "" for x in order}
    for k, c in enumerate(cols):
        for x in sorted(c, key=pos.__getitem__):
            out[x] += _letters(k)
    return out


def _significant_pairs(
    tests: pd.DataFrame, context: dict[str, Any], metric: Any, alpha: float, test: str
) -> dict[tuple[str, str], float]:
    """``{(a, b): mean_diff_sign}`` for pairs whose Holm p-value is below ``alpha``."""
    sel = _select(tests, context)
    sel = sel[sel["metric"] == metric]
    want = TESTS if test == "both" else (test,)
    sel = sel[sel["test"].isin(want)]
    by_pair: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for a, b, t, p, es in zip(sel["explainer_a"], sel["explainer_b"], sel["test"],
                              sel["p_holm"].to_numpy(np.float64), sel["effect_size"].to_numpy(np.float64),
                              strict=True):
        by_pair.setdefault((a, b), {})[t] = (p, es)
    out: dict[tuple[str, str], float] = {}
    for pair, by_test in by_pair.items():
        if all(t in by_test for t in want) and all(by_test[t][0] < alpha for t in want):
            out[pair] = float(np.sign(by_test[want[0]][1]))
    return out


def _ordered(grp: pd.DataFrame, hib: bool) -> list[str]:
    key = grp["mean"] if hib else -grp["mean"]
    tmp = grp.assign(_k=key.to_numpy(), _pos=np.arange(len(grp)))
    tmp = tmp.sort_values(["_k", "_pos"], ascending=[False, True], na_position="last")
    return list(tmp["explainer"])


def rank(
    summary: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05, *, test: str = "t"
) -> pd.DataFrame:
    """Ranks with ties and compact-letter groups per (dataset, metric).

    ``test`` picks the p-values that decide significance: ``"t"`` (default: the
    table shows means, and the t-test is the test of the mean), ``"wilcoxon"``,
    or ``"both"`` (significant only when both are). Rank = 1 + number of
    explainers significantly better; see the module docstring. Rows are ordered
    best mean first; an explainer without a mean (no finite score) gets a
    missing rank and an empty group.
    """
    if test not in (*TESTS, "both"):
        raise ValueError(f"unknown test '{test}'; valid: t, wilcoxon, both")
    _check_columns(summary, ["dataset", "explainer", "metric", "mean", "higher_is_better"], "summary")
    if len(tests):
        _check_columns(tests, TESTS_COLUMNS, "tests")
    rows = []
    ctx = context_columns(summary)
    for keys, grp in summary.groupby([*ctx, "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        metric = keys[-1]
        hib = bool(grp["higher_is_better"].iloc[0])
        order = _ordered(grp, hib)
        valid = [e for e in order if np.isfinite(grp.loc[grp["explainer"] == e, "mean"].iloc[0])]
        sig = _significant_pairs(tests, context, metric, alpha, test) if len(tests) else {}
        means = dict(zip(grp["explainer"], grp["mean"], strict=False))
        better_count = {e: 0 for e in valid}
        different = []
        for (a, b), sign in sig.items():
            if a not in better_count or b not in better_count:
                continue
            if sign == 0 or np.isnan(sign):  # fall back on the summary means
                sign = float(np.sign(means[a] - means[b]))
                if sign == 0:
                    continue
            a_higher = sign > 0
            winner, loser = (a, b) if a_higher == hib else (b, a)
            better_count[loser] += 1
            different.append((winner, loser))
        letters = compact_letter_display(valid, different)
        for e in order:
            ok = e in better_count
            rows.append({
                **context, "metric": metric, "explainer": e,
                "rank": 1 + better_count[e] if ok else pd.NA,
                "group": letters[e] if ok else "",
            })
    out = pd.DataFrame(rows, columns=_with_context(RANK_COLUMNS, summary))
    return out.astype({"rank": "Int64"})


def compare_to_best(
    summary: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05, *, test: str = "t"
) -> pd.DataFrame:
    """Each explainer against the best mean of its (dataset, metric).

    Columns: ``dataset, metric, explainer, best, is_best, p_holm, significant``
    where ``p_holm`` is the Holm-adjusted p-value of the pair (explainer, best)
    for ``test`` (NaN for the best itself) and ``significant`` says whether the
    explainer is significantly worse than the best (``test="both"`` needs both).
    """
    want = TESTS if test == "both" else (test,)
    rows = []
    ctx = context_columns(summary)
    for keys, grp in summary.groupby([*ctx, "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        metric = keys[-1]
        hib = bool(grp["higher_is_better"].iloc[0])
        order = _ordered(grp, hib)
        best = order[0]
        sel = _select(tests, context) if len(tests) else tests
        sel = sel[sel["metric"] == metric] if len(sel) else sel
        for e in order:
            p = {t: float("nan") for t in want}
            if e != best and len(sel):
                m = sel[((sel["explainer_a"] == e) & (sel["explainer_b"] == best))
                        | ((sel["explainer_a"] == best) & (sel["explainer_b"] == e))]
                for t in want:
                    mt = m[m["test"] == t]
                    if len(mt):
                        p[t] = float(mt["p_holm"].iloc[0])
            pmax = max(p.values())
            rows.append({
                **context, "metric": metric, "explainer": e, "best": best,
                "is_best": e == best, "p_holm": pmax,
                "significant": bool(e != best and np.isfinite(pmax) and pmax < alpha),
            })
    return pd.DataFrame(
        rows, columns=_with_context(["dataset", "metric", "explainer", "best", "is_best", "p_holm", "significant"],
                                    summary)
    )


def combined_ranking(ranks: pd.DataFrame) -> pd.DataFrame:
    """Mean of the per-dataset ranks of :func:`rank`, per metric and over all metrics.

    Returns :data:`COMBINED_COLUMNS`; ``n_datasets`` counts the datasets that
    ranked the explainer (for :data:`ALL_METRICS` rows it counts distinct
    datasets; the mean is over all (dataset, metric) ranks). Sorted by metric
    (first appearance, :data:`ALL_METRICS` last), then by mean rank.
    """
    _check_columns(ranks, RANK_COLUMNS, "ranks")
    r = ranks.dropna(subset=["rank"]).astype({"rank": "float64"})
    metrics = list(pd.unique(r["metric"]))
    explainers = list(pd.unique(r["explainer"]))
    pos = {e: i for i, e in enumerate(explainers)}
    rows = []
    for metric in [*metrics, ALL_METRICS]:
        sel = r if metric == ALL_METRICS else r[r["metric"] == metric]
        part = []
        for e, g in sel.groupby("explainer", sort=False):
            part.append({"metric": metric, "explainer": e, "mean_rank": float(g["rank"].mean()),
                         "n_datasets": int(g["dataset"].nunique())})
        part.sort(key=lambda d: (d["mean_rank"], pos[d["explainer"]]))
        rows += part
    return pd.DataFrame(rows, columns=COMBINED_COLUMNS)


# --------------------------------------------------------------------------- replicates


def summarize_replicates(per_replicate: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Across replicates (models retrained with other seeds): per (context, explainer, metric) the
    mean of the per-replicate means, and a t-interval over the replicate means (NaN with one
    replicate). ``n`` sums the scores of all replicates; ``n_replicates`` counts replicates with a
    finite mean. Input: :func:`summarize` of a table with ``replicate`` and ``seed`` columns."""
    ctx = [c for c in context_columns(per_replicate) if c not in REPLICATE_COLUMNS]
    rows = []
    for keys, grp in per_replicate.groupby([*ctx, "explainer", "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        m = grp["mean"].to_numpy(np.float64)
        m = m[np.isfinite(m)]
        k = m.size
        mean = float(m.mean()) if k else float("nan")
        lo = hi = float("nan")
        if k >= 2:
            half = sps.t.ppf(0.5 + confidence / 2, k - 1) * m.std(ddof=1) / np.sqrt(k)
            lo, hi = mean - half, mean + half
        rows.append({**context, "model": grp["model"].iloc[0], "explainer": keys[-2], "metric": keys[-1],
                     "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(grp["n"].sum()),
                     "higher_is_better": bool(grp["higher_is_better"].iloc[0]), "n_replicates": k})
    cols = [*ctx, *SUMMARY_COLUMNS[1:], "n_replicates"]
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({"n": "int64", "higher_is_better": bool, "n_replicates": "int64"})


def replicate_tests(per_replicate: pd.DataFrame, tests: Sequence[str] = TESTS) -> pd.DataFrame:
    """Explainers compared across replicates: for every pair, the per-replicate means paired by seed,
    tested with the paired t-test and Wilcoxon (Holm over the pairs of one (context, metric, test)
    family). ``n`` is the number of replicates. This is the test of whether a difference survives
    retraining the model; the per-sample tests (``tests.csv``) compare explainers within one model."""
    ctx = [c for c in context_columns(per_replicate) if c not in REPLICATE_COLUMNS]
    long = per_replicate.rename(columns={"mean": "value"})[[*ctx, "explainer", "metric", "seed", "value"]]
    long = long.rename(columns={"seed": "sample_id"})
    out = paired_tests(long, tests=tests, with_n=True)
    return out.drop(columns=["n_dropped"])


def replicate_ranks(per_replicate: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05,
                    test: str = "t") -> pd.DataFrame:
    """:func:`rank` within every replicate (its own samples, its own Holm-adjusted tests), so the
    report can show whether an explainer ranking is stable across retrained models."""
    return rank(per_replicate, tests, alpha, test=test)


# --------------------------------------------------------------------------- object vs background

FG, BG = "fg_mean", "bg_mean"
FG_BG_COLUMNS = ["dataset", "explainer", "fg_metric", "test", "n", "fg_mean", "bg_mean", "mean_diff",
                 "statistic", "p_value", "p_holm", "effect_size"]


def _pairs(metrics: list[str]) -> list[tuple[str, str]]:
    """(fg, bg) output names present together: ``fg_mean``/``bg_mean`` or ``<prefix>fg_mean``/..."""
    out = []
    for m in metrics:
        if m.endswith(FG):
            bg = m[: -len(FG)] + BG
            if bg in metrics:
                out.append((m, bg))
    return out


def fg_bg_tests(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Foreground vs background within each explainer: for every explainer scored by
    ``fg_bg_attribution``, the per-image differences ``fg_mean - bg_mean`` are tested across images
    (paired t-test and Wilcoxon, Cohen's d_z, Holm over the explainers of one dataset per test).
    Columns ``FG_BG_COLUMNS``; written to ``results/fg_bg_tests.csv``."""
    if per_sample is None or not len(per_sample):
        return pd.DataFrame(columns=FG_BG_COLUMNS)
    rows: list[dict[str, Any]] = []
    ctx = context_columns(per_sample)
    for keys, dgrp in per_sample.groupby(ctx, sort=False):
        context = dict(zip(ctx, keys if isinstance(keys, tuple) else (keys,), strict=True))
        for fg_name, bg_name in _pairs(list(dict.fromkeys(dgrp["metric"]))):
            block = []
            for explainer, egrp in dgrp.groupby("explainer", sort=False):
                fg = egrp[egrp["metric"] == fg_name].set_index("sample_id")["value"]
                bg = egrp[egrp["metric"] == bg_name].set_index("sample_id")["value"]
                both = pd.concat([fg.rename("fg"), bg.rename("bg")], axis=1, join="inner").dropna()
                d = (both["fg"] - both["bg"]).to_numpy(np.float64)
                t, p_t = paired_t(d)
                w, p_w = paired_wilcoxon(d)
                dz = cohens_dz(d)
                base = {**context, "explainer": explainer, "fg_metric": fg_name, "n": len(d),
                        "fg_mean": float(both["fg"].mean()) if len(d) else np.nan,
                        "bg_mean": float(both["bg"].mean()) if len(d) else np.nan,
                        "mean_diff": float(d.mean()) if len(d) else np.nan, "effect_size": dz}
                block.append({**base, "test": "t", "statistic": t, "p_value": p_t})
                block.append({**base, "test": "wilcoxon", "statistic": w, "p_value": p_w})
            for test in ("t", "wilcoxon"):
                fam = [r for r in block if r["test"] == test]
                adj = holm([r["p_value"] for r in fam])
                for r, a in zip(fam, adj, strict=True):
                    r["p_holm"] = float(a)
            rows += block
    cols = _with_context(FG_BG_COLUMNS, per_sample)
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)


# --------------------------------------------------------------------------- the tables of a run


def result_tables(per_sample: pd.DataFrame, meta: Mapping[str, Any], *, models: Mapping[str, str] | None = None,
                  seed: int = 0, replicates: bool = False) -> dict[str, pd.DataFrame]:
    """Every statistics table a run writes under ``results/`` (``{file stem: frame}``), from its per-sample
    scores; :func:`xaiarena.evaluate` gives the same tables for the user's maps.

    ``summary`` (bootstrap CIs, :func:`summarize`) and ``tests`` (:func:`paired_tests`) always;
    ``fg_bg_tests`` where ``fg_bg_attribution`` scored; with ``replicates``, ``summary`` is the summary
    across replicates (:func:`summarize_replicates`) and ``summary_per_replicate``,
    ``ranks_per_replicate`` and ``tests_replicates`` are added."""
    out: dict[str, pd.DataFrame] = {}
    tests = paired_tests(per_sample)
    fg_bg = fg_bg_tests(per_sample)  # object vs background within each explainer (fg_bg_attribution)
    if len(fg_bg):
        out["fg_bg_tests"] = fg_bg
    if replicates:
        # per replicate, then across replicates (mean of per-replicate means, CI over replicates,
        # explainers compared by a paired test over replicates paired by seed)
        per_rep = summarize(per_sample, meta, models=models, seed=seed)
        out["summary_per_replicate"] = per_rep
        out["ranks_per_replicate"] = replicate_ranks(per_rep, tests)
        out["tests_replicates"] = replicate_tests(per_rep)
        out["summary"] = summarize_replicates(per_rep)
    else:
        out["summary"] = summarize(per_sample, meta, models=models, seed=seed)
    out["tests"] = tests
    return out


__all__ = [
    "ALL_METRICS", "COMBINED_COLUMNS", "RANK_COLUMNS", "SUMMARY_COLUMNS", "TESTS_COLUMNS",
    "replicate_ranks", "replicate_tests", "summarize_replicates",
    "bootstrap_ci", "cohens_dz", "combined_ranking", "compact_letter_display", "compare_to_best", "fg_bg_tests",
    "holm", "paired_t", "paired_tests", "paired_wilcoxon", "rank", "result_tables", "summarize",
]
