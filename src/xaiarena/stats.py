"""Statistics over per-sample metric scores: bootstrap CIs, paired tests, rankings.

Everything here works on the long table ``per_sample`` with columns
``dataset, explainer, metric, sample_id, value`` (one row per score; NaN allowed)
and is deterministic given its ``seed``.

Summaries -- :func:`summarize`
    Per (dataset, explainer, metric): the mean over samples (NaN scores dropped,
    ``n`` = ``n_samples`` = scores used, ``n_replicates`` = 1) and a 95% bootstrap
    confidence interval of that mean.
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

Replicates -- :func:`summarize_replicates` and :func:`replicate_tests`
    With ``replicates: N`` the model is retrained with N seeds and every model is scored on
    the same samples: seeds and samples are *crossed* random factors. A score is modelled as
    ``mu + a_seed + b_sample + e`` and the interval of the mean counts both variances
    (``Var = s2_a / R + s2_b / n + s2_e / (R n)``, ANOVA estimators of the balanced two-way
    crossed design truncated at zero, Satterthwaite degrees of freedom; never narrower than the
    t-interval over replicate means nor the one over per-sample means: :func:`crossed_mean`).
    Explainer pairs are compared by the same model of their paired differences
    (:func:`crossed_t`, Clark's 1973 quasi-F for two levels, the matching intersection-union
    test) and, over the replicate means, by a Wilcoxon signed-rank test whose smallest
    attainable p (``min_p``, 0.25 with 3 replicates) is reported: a test that cannot go below
    ``alpha`` does not vote in :func:`rank` and :func:`compare_to_best`. Only samples scored in
    every replicate enter.

Rankings -- :func:`rank` and :func:`combined_ranking`
    Within a (dataset, metric), explainer ``A`` is *significantly better* than
    ``B`` when the Holm-adjusted p-value of their pair is below ``alpha`` and the
    paired mean difference favours ``A`` given ``higher_is_better`` (with
    ``test="both"``, in each test that can reach ``alpha``: see ``min_p``). The rank
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
    "dataset",
    "model",
    "explainer",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "n",
    "higher_is_better",
]
TESTS_COLUMNS = [
    "dataset",
    "metric",
    "explainer_a",
    "explainer_b",
    "test",
    "statistic",
    "p_value",
    "p_holm",
    "effect_size",
]
#: added after :data:`SUMMARY_COLUMNS` (whose ``n`` is the number of distinct samples, ==
#: ``n_samples``): the samples and the replicates (models retrained with other seeds; 1 without)
#: a mean rests on
COUNT_COLUMNS = ["n_samples", "n_replicates"]
_COUNT_TYPES = {"n": "int64", "n_samples": "int64", "n_replicates": "int64"}
RANK_COLUMNS = ["dataset", "metric", "explainer", "rank", "group"]
COMBINED_COLUMNS = ["metric", "explainer", "mean_rank", "n_datasets"]
#: the columns of ``results/per_sample.parquet`` (a run with a grid or replicates adds ``grid`` and
#: ``replicate``, ``seed`` after ``dataset``): the one definition, shared by the engine and the API
PER_SAMPLE_COLUMNS = ["dataset", "explained_model", "explainer", "metric", "sample_id", "value"]
#: the columns of ``results/curves.parquet`` (the same context columns after ``dataset``)
CURVE_COLUMNS = [
    "dataset",
    "explained_model",
    "explainer",
    "metric",
    "x",
    "mean",
    "ci_low",
    "ci_high",
]
#: columns that, when present, split results into independent comparisons: maps of different
#: explained models (``explained_model``: f_b, f_s) are never compared with each other
CONTEXT_COLUMNS = ("dataset", "grid", "explained_model", "replicate", "seed")
#: what the statistics need of a per-sample table: :data:`PER_SAMPLE_COLUMNS` less the optional
#: context columns (``explained_model``), which they use where present
PER_SAMPLE_REQUIRED = [c for c in PER_SAMPLE_COLUMNS if c == "dataset" or c not in CONTEXT_COLUMNS]
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
    :data:`SUMMARY_COLUMNS` then :data:`COUNT_COLUMNS` (``n_samples`` == ``n``,
    ``n_replicates`` 1: one model; a table with replicates is summarised per replicate, see
    :func:`summarize_replicates`) in the order groups first appear in ``per_sample``.
    """
    _check_columns(per_sample, PER_SAMPLE_REQUIRED, "per_sample")
    ctx = context_columns(per_sample)
    df = per_sample[_with_context(PER_SAMPLE_REQUIRED, per_sample)]
    if models is not None:
        missing = sorted(set(map(str, df["dataset"].unique())) - set(map(str, models)))
        if missing:
            raise ValueError(f"no model given for dataset(s) {missing}")
    rows = []
    for keys, grp in df.groupby([*ctx, "explainer", "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        dataset, (explainer, metric) = context["dataset"], keys[len(ctx) :]
        hib = _higher_is_better(meta, metric)
        grp = grp.sort_values("sample_id", kind="stable")
        x = grp["value"].to_numpy(dtype=np.float64)
        x = x[~np.isnan(x)]
        rng = np.random.default_rng(_group_seed(seed, dataset, metric))
        lo, hi = bootstrap_ci(x, rng=rng, n_boot=n_boot, confidence=confidence, method=method)
        rows.append(
            {
                **context,
                "model": "" if models is None else models[str(dataset)],
                "explainer": explainer,
                "metric": metric,
                "mean": float(x.mean()) if x.size else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "n": int(x.size),
                "higher_is_better": hib,
                "n_samples": int(x.size),
                "n_replicates": 1,
            }
        )
    out = pd.DataFrame(rows, columns=_with_context(SUMMARY_COLUMNS, per_sample) + COUNT_COLUMNS)
    return out.astype({**_COUNT_TYPES, "higher_is_better": bool})


# --------------------------------------------------------------------------- paired tests


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and are not counted.

    ``p_holm[(i)] = min(1, max_{j <= i} (m - j + 1) * p[(j)])`` over the ``m``
    finite p-values sorted ascending.
    """
    p = np.asarray(
        list(p_values) if not isinstance(p_values, np.ndarray) else p_values, dtype=np.float64
    )
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


def _wilcoxon_exact_flips(d: np.ndarray, zero_method: str = "wilcox") -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test by enumerating all ``2**n`` sign flips of ``d``.

    The p-value ``scipy.stats.wilcoxon`` gives (method "auto") for ``n <= 13`` differences
    with ties or zeros, where it calls ``scipy.stats.permutation_test`` on the statistic
    ``r_plus`` (average ranks of ``|d|``; ``zero_method="wilcox"`` drops the zeros,
    ``"zsplit"`` ranks them and splits their ranks between ``r_plus`` and ``r_minus``). The
    ranks do not change under sign flips (nor do the zeros), so the null distribution is
    ``signs @ ranks`` for the 0/1 matrix of all patterns: one matrix product instead of 2**n
    calls of the statistic (~100x faster).
    """
    nz = d != 0
    ranks = np.zeros_like(d)
    if zero_method == "zsplit":
        ranks = sps.rankdata(np.abs(d)).astype(np.float64)
        zero_half = 0.5 * float(ranks[~nz].sum())
    else:
        ranks[nz] = sps.rankdata(np.abs(d[nz]))
        zero_half = 0.0
    r_plus = float(ranks[d > 0].sum()) + zero_half
    r_minus = float(ranks[d < 0].sum()) + zero_half
    n = d.size
    patterns = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # 1 = the sign of d_i is kept
    positive = np.where(patterns == 1, d > 0, d < 0)
    null = positive.astype(np.float64) @ ranks + zero_half
    gamma = abs(np.finfo(np.float64).eps * 100 * r_plus)  # scipy's tolerance for equal values
    p_less = np.count_nonzero(null <= r_plus + gamma) / null.size
    p_greater = np.count_nonzero(null >= r_plus - gamma) / null.size
    return min(r_plus, r_minus), float(np.clip(2 * min(p_less, p_greater), 0.0, 1.0))


def paired_wilcoxon(diffs: np.ndarray, zero_method: str = "wilcox") -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test: ``(statistic, p)`` as ``scipy.stats.wilcoxon`` with
    ``zero_method`` (``wilcox``, scipy's default, or ``zsplit``) and method "auto", whose slow
    permutation branch (``n <= 13`` with ties or zeros) is computed by
    :func:`_wilcoxon_exact_flips`."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return float("nan"), float("nan")
    if np.all(d == 0):
        return 0.0, 1.0
    nonzero = np.abs(d[d != 0])
    if d.size <= _EXACT_FLIPS_MAX_N and (
        nonzero.size < d.size or np.unique(nonzero).size < nonzero.size
    ):
        return _wilcoxon_exact_flips(d, zero_method)
    res = sps.wilcoxon(d, zero_method=zero_method)
    return float(res.statistic), float(res.pvalue)


def paired_tests(
    per_sample: pd.DataFrame,
    *,
    tests: Sequence[str] = TESTS,
    with_n: bool = False,
) -> pd.DataFrame:
    """Paired tests between every pair of explainers, per (dataset, metric).

    Returns one row per pair per test with the columns :data:`TESTS_COLUMNS`,
    ``min_p`` (the smallest p-value the test can give with these samples: 0 for t,
    :func:`wilcoxon_min_p` of the non-zero differences for Wilcoxon), and, when ``with_n``,
    ``n`` = matched pairs used and ``n_dropped`` = samples dropped because a score was NaN
    or missing on one side. Explainer pairs follow the order of first appearance
    (``explainer_a`` first). p-values do not depend on a significance level; pass ``alpha``
    to :func:`rank`.

    Longer than 80 lines because the docstring states the tests' conventions in full; the body is
    one loop over the (context, metric) groups and their explainer pairs.
    """
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; valid: {', '.join(TESTS)}")
    _check_columns(per_sample, PER_SAMPLE_REQUIRED, "per_sample")
    ctx = context_columns(per_sample)
    df = per_sample[_with_context(PER_SAMPLE_REQUIRED, per_sample)]
    ident = [*ctx, "explainer", "metric", "sample_id"]
    dup = df.duplicated(ident)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} duplicated ({', '.join(ident)}) rows, e.g. {tuple(first[ident])}"
        )
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
                log.info(
                    "%s/%s: %s vs %s: %d sample(s) dropped (NaN or unmatched)",
                    dataset,
                    metric,
                    a,
                    b,
                    n_dropped,
                )
            dz = cohens_dz(d)
            for test in tests:
                stat, p = paired_t(d) if test == "t" else paired_wilcoxon(d)
                min_p = 0.0 if test == "t" else wilcoxon_min_p(int(np.count_nonzero(d)))
                rows.append(
                    {
                        **context,
                        "metric": metric,
                        "explainer_a": a,
                        "explainer_b": b,
                        "test": test,
                        "statistic": stat,
                        "p_value": p,
                        "effect_size": dz,
                        "min_p": min_p,
                        "n": int(d.size),
                        "n_dropped": n_dropped,
                    }
                )
        part = pd.DataFrame(rows)
        if len(part):
            for test in tests:
                sel = (part["test"] == test).to_numpy()
                part.loc[sel, "p_holm"] = holm(part.loc[sel, "p_value"].to_numpy())
        frames.append(part)
    cols = [
        *_with_context(TESTS_COLUMNS, per_sample),
        "min_p",
        *(["n", "n_dropped"] if with_n else []),
    ]
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


def compact_letter_display(
    order: Sequence[str], different: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Letters such that two items share one exactly when they are not ``different``.

    ``order`` lists the items best first; letters are assigned in that order.
    Insert-and-absorb algorithm of Piepho (2004), J. Comput. Graph. Stat. 13(2).
    """
    pos = {x: i for i, x in enumerate(order)}
    pairs = sorted(
        {tuple(sorted((a, b), key=pos.__getitem__)) for a, b in different if a != b},
        key=lambda p: (pos[p[0]], pos[p[1]]),
    )
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
            absorbed = any((c < o) or (c == o and m < k) for m, o in enumerate(new) if m != k)
            if not absorbed:
                kept.append(c)
        cols = kept
    cols.sort(key=lambda c: sorted(pos[x] for x in c))
    out = {x: "" for x in order}
    for k, c in enumerate(cols):
        for x in sorted(c, key=pos.__getitem__):
            out[x] += _letters(k)
    return out


def informative(min_p: Any, alpha: float) -> bool:
    """Whether a test whose smallest attainable p-value is ``min_p`` can reject at ``alpha`` (a
    missing ``min_p``, as in tables written before it existed, counts as informative)."""
    try:
        v = float(min_p)
    except (TypeError, ValueError):
        return True
    return not np.isfinite(v) or v < alpha


def _voters(
    by_test: dict[str, tuple[float, float, float]], want: Sequence[str], alpha: float
) -> list[str]:
    """The wanted tests that can decide a pair: every wanted test must be there, and a test that
    cannot reach ``alpha`` (a Wilcoxon over 3 replicates) does not vote. Empty: nothing decides."""
    if not all(t in by_test for t in want):
        return []
    return [t for t in want if informative(by_test[t][2], alpha)]


def _by_pair(sel: pd.DataFrame) -> dict[tuple[str, str], dict[str, tuple[float, float, float]]]:
    """``{(a, b): {test: (p_holm, effect_size, min_p)}}`` of a tests table."""
    min_p = sel["min_p"].to_numpy(np.float64) if "min_p" in sel.columns else np.zeros(len(sel))
    out: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {}
    p_holm, effect = sel["p_holm"].to_numpy(np.float64), sel["effect_size"].to_numpy(np.float64)
    for a, b, t, p, es, mp in zip(
        sel["explainer_a"], sel["explainer_b"], sel["test"], p_holm, effect, min_p, strict=True
    ):
        out.setdefault((a, b), {})[t] = (p, es, mp)
    return out


def _significant_pairs(
    tests: pd.DataFrame, context: dict[str, Any], metric: Any, alpha: float, test: str
) -> dict[tuple[str, str], float]:
    """``{(a, b): mean_diff_sign}`` for pairs whose Holm p-value is below ``alpha`` in every voting
    test (:func:`_voters`)."""
    sel = _select(tests, context)
    sel = sel[sel["metric"] == metric]
    want = TESTS if test == "both" else (test,)
    sel = sel[sel["test"].isin(want)]
    out: dict[tuple[str, str], float] = {}
    for pair, by_test in _by_pair(sel).items():
        voters = _voters(by_test, want, alpha)
        if voters and all(by_test[t][0] < alpha for t in voters):
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
    _check_columns(
        summary, ["dataset", "explainer", "metric", "mean", "higher_is_better"], "summary"
    )
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
            rows.append(
                {
                    **context,
                    "metric": metric,
                    "explainer": e,
                    "rank": 1 + better_count[e] if ok else pd.NA,
                    "group": letters[e] if ok else "",
                }
            )
    out = pd.DataFrame(rows, columns=_with_context(RANK_COLUMNS, summary))
    return out.astype({"rank": "Int64"})


def compare_to_best(
    summary: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05, *, test: str = "t"
) -> pd.DataFrame:
    """Each explainer against the best mean of its (dataset, metric).

    Columns: ``dataset, metric, explainer, best, is_best, p_holm, significant``
    where ``p_holm`` is the Holm-adjusted p-value of the pair (explainer, best)
    for ``test`` (NaN for the best itself, and where no test can decide: a Wilcoxon whose
    smallest attainable p is not below ``alpha`` does not vote) and ``significant`` says
    whether the explainer is significantly worse than the best (``test="both"`` needs both
    voting tests; the larger p is reported).
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
            pmax = float("nan")
            if e != best and len(sel):
                m = sel[
                    ((sel["explainer_a"] == e) & (sel["explainer_b"] == best))
                    | ((sel["explainer_a"] == best) & (sel["explainer_b"] == e))
                ]
                by_test = next(iter(_by_pair(m[m["test"].isin(want)]).values()), {})
                voters = _voters(by_test, want, alpha)
                if voters:
                    pmax = max(by_test[t][0] for t in voters)
            rows.append(
                {
                    **context,
                    "metric": metric,
                    "explainer": e,
                    "best": best,
                    "is_best": e == best,
                    "p_holm": pmax,
                    "significant": bool(e != best and np.isfinite(pmax) and pmax < alpha),
                }
            )
    return pd.DataFrame(
        rows,
        columns=_with_context(
            ["dataset", "metric", "explainer", "best", "is_best", "p_holm", "significant"], summary
        ),
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
            part.append(
                {
                    "metric": metric,
                    "explainer": e,
                    "mean_rank": float(g["rank"].mean()),
                    "n_datasets": int(g["dataset"].nunique()),
                }
            )
        part.sort(key=lambda d: (d["mean_rank"], pos[d["explainer"]]))
        rows += part
    return pd.DataFrame(rows, columns=COMBINED_COLUMNS)


# --------------------------------------------------------------------------- replicates x samples


def wilcoxon_min_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with ``n``
    non-zero differences: all of one sign, ``2 / 2**n`` (0.25 for 3, 0.0625 for 5, 0.03125
    for 6). A test whose smallest possible p is not below ``alpha`` cannot reject at ``alpha``:
    it is not informative there (:func:`rank` does not let it vote, the report prints no p)."""
    return 1.0 if n < 1 else float(min(1.0, 2.0 ** (1 - n)))


def _crossed_parts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, and (variance of the mean, df) of the three estimates of :func:`crossed_mean`, for
    complete tables ``y`` of shape ``(..., R, n)``: ``var`` and ``df`` have a last axis of 3
    (crossed, over replicate means, over per-sample means)."""
    reps, n = y.shape[-2:]
    mean = y.mean(axis=(-2, -1))
    rm, cm = y.mean(axis=-1), y.mean(axis=-2)
    ms_r = n * np.sum((rm - mean[..., None]) ** 2, axis=-1) / (reps - 1)
    ms_i = reps * np.sum((cm - mean[..., None]) ** 2, axis=-1) / (n - 1)
    df_e = (reps - 1) * (n - 1)
    resid = y - rm[..., :, None] - cm[..., None, :] + mean[..., None, None]
    ms_e = np.sum(resid**2, axis=(-2, -1)) / df_e
    # a variance component estimated <= 0 is set to 0 (its mean square leaves the combination)
    c_r, c_i = (ms_r > ms_e).astype(np.float64), (ms_i > ms_e).astype(np.float64)
    terms = np.stack([c_r * ms_r, c_i * ms_i, (1.0 - c_r - c_i) * ms_e], axis=-1)
    total = terms.sum(axis=-1)
    den = np.sum(terms**2 / np.array([reps - 1, n - 1, df_e], dtype=np.float64), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(den > 0, total**2 / np.where(den > 0, den, 1.0), np.inf)
    var = np.stack([total, ms_r, ms_i], axis=-1) / (reps * n)
    df = np.stack([nu, np.full_like(nu, reps - 1.0), np.full_like(nu, n - 1.0)], axis=-1)
    return mean, var, df


def _as_table(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim < 2:
        raise ValueError(f"{what} needs (replicates, samples) tables, got shape {y.shape}")
    if np.isnan(y).any():
        raise ValueError(f"{what} needs complete tables (no NaN): drop incomplete samples first")
    return y


def _out(x: np.ndarray) -> Any:
    return float(x) if np.ndim(x) == 0 else x


def crossed_mean(y: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """The grand mean of a complete ``(replicates, samples)`` table and its interval, counting
    both random factors: seeds and samples are crossed (every retrained model scores the same
    samples).

    Model ``y[r, i] = mu + a_r + b_i + e_ri`` (two-way crossed random effects, one score per
    cell) with independent seed effects ``a_r`` (variance ``s2_a``), sample effects ``b_i``
    (``s2_b``) and interactions ``e_ri`` (``s2_e``), so
    ``Var(mean) = s2_a / R + s2_b / n + s2_e / (R n)``. With the mean squares ``MS_R`` (seeds,
    R - 1 df), ``MS_I`` (samples, n - 1 df) and ``MS_E`` (residual, (R - 1)(n - 1) df), the
    ANOVA estimators of the balanced design truncated at zero (Searle, Casella & McCulloch
    1992, *Variance Components*, ch. 4) give
    ``V = [(MS_R - MS_E)+ + (MS_I - MS_E)+ + MS_E] / (R n)``, a linear combination of mean
    squares with Satterthwaite's (1946) degrees of freedom
    ``nu = (sum c_k MS_k)**2 / sum (c_k MS_k)**2 / df_k``.

    With few replicates ``nu`` is itself noisy and ``mean +- t(nu) sqrt(V)`` undercovers when
    retraining variance dominates (93% at 3 seeds, ``benchmarks/replicate_coverage.py``). So
    the interval is never narrower than either one-factor t-interval, each exact when the other
    factor's variance vanishes: over the R replicate means (``MS_R / (R n)``, R - 1 df: these
    samples under retraining) and over the n per-sample means (``MS_I / (R n)``, n - 1 df:
    these models under resampling of samples). The half-width is the largest of the three; the
    test of :func:`crossed_t` is the matching intersection-union test (Berger 1982).

    Returns ``mean, se, df, ci_low, ci_high``: ``se`` and ``df`` of the estimate that set the
    width (``df`` near R - 1: retraining variance decides; large: sample variance does). Fewer
    than 2 replicates or 2 samples give a NaN interval (one of the variances cannot be
    estimated). ``y`` may carry leading batch axes ``(..., R, n)``; the values are then arrays.
    """
    y = _as_table(y, "crossed_mean")
    reps, n = y.shape[-2:]
    keys = ("se", "df", "ci_low", "ci_high")
    nan = _out(np.full(y.shape[:-2], np.nan))
    if reps == 0 or n == 0:
        return {"mean": nan, **dict.fromkeys(keys, nan)}
    if reps < 2 or n < 2:
        return {"mean": _out(y.mean(axis=(-2, -1))), **dict.fromkeys(keys, nan)}
    mean, var, df = _crossed_parts(y)
    half_k = sps.t.ppf(0.5 + confidence / 2, df) * np.sqrt(var)
    k = np.argmax(half_k, axis=-1)[..., None]
    half = np.take_along_axis(half_k, k, -1)[..., 0]
    return {
        "mean": _out(mean),
        "se": _out(np.sqrt(np.take_along_axis(var, k, -1)[..., 0])),
        "df": _out(np.take_along_axis(df, k, -1)[..., 0]),
        "ci_low": _out(mean - half),
        "ci_high": _out(mean + half),
    }


def crossed_t(d: np.ndarray) -> tuple[Any, Any, Any]:
    """Two-sided test of a zero mean of a complete ``(replicates, samples)`` table of paired
    differences, counting seed and sample variance: ``(t, p, df)``, the dual of
    :func:`crossed_mean`.

    The crossed random-effects t (for two explainers, Clark's 1973 quasi-F ``F' = t**2`` for a
    treatment crossed with two random factors) on Satterthwaite's df, the paired t over the R
    replicate means and the paired t over the n per-sample means: the p-value is the largest of
    the three (reject only when all three reject: an intersection-union test, Berger 1982,
    never more liberal than any of them), reported with its ``t`` and ``df``. Fewer than 2
    replicates or samples give NaN; differences that are all equal give t = 0, p = 1 (all zero)
    or t = +-inf, p = 0. Leading batch axes ``(..., R, n)`` give arrays.
    """
    d = _as_table(d, "crossed_t")
    reps, n = d.shape[-2:]
    if reps < 2 or n < 2:
        nan = _out(np.full(d.shape[:-2], np.nan))
        return nan, nan, nan
    mean, var, df = _crossed_parts(d)
    m = mean[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(
            var > 0,
            m / np.sqrt(np.where(var > 0, var, 1.0)),
            np.where(m == 0, 0.0, np.copysign(np.inf, m)),
        )
    p = np.minimum(1.0, 2.0 * sps.t.sf(np.abs(t), df))
    k = np.argmax(p, axis=-1)[..., None]
    pick = [np.take_along_axis(a, k, -1)[..., 0] for a in (t, p, df)]
    return _out(pick[0]), _out(pick[1]), _out(pick[2])


def _replicate_key(df: pd.DataFrame) -> str:
    key = next((c for c in REPLICATE_COLUMNS if c in df.columns), None)
    if key is None:
        raise ValueError(
            f"per_sample has no replicate column ({', '.join(REPLICATE_COLUMNS)}); "
            f"it has {list(df.columns)}"
        )
    return key


def _complete(wide: pd.DataFrame) -> pd.DataFrame:
    """A (replicates x samples) table without replicates that have no finite score, then without
    samples not scored in every remaining replicate (a complete, balanced design)."""
    wide = wide.dropna(axis=0, how="all")
    return wide.dropna(axis=1, how="any")


def summarize_replicates(
    per_sample: pd.DataFrame,
    meta: Mapping[str, Any],
    *,
    models: Mapping[str, str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per (context, explainer, metric) across replicates (models retrained with other seeds,
    scored on the same samples): the mean over replicates x samples and a 95% interval that
    counts both sources of variance (:func:`crossed_mean`: crossed random effects, ANOVA
    estimators, Satterthwaite df, never narrower than either one-factor interval).

    ``per_sample`` has ``replicate`` (or ``seed``) columns. Only samples scored (finite) in
    every replicate enter (a complete design); replicates without any finite score are left
    out. Columns: :data:`SUMMARY_COLUMNS`, where ``n`` is the number of distinct samples
    (== ``n_samples``), then ``n_samples``, ``n_replicates`` and ``df`` (the interval's degrees
    of freedom: near ``n_replicates - 1`` when retraining variance decides, near
    ``n_samples - 1`` when sample variance does)."""
    _check_columns(per_sample, PER_SAMPLE_REQUIRED, "per_sample")
    rep = _replicate_key(per_sample)
    ctx = [c for c in context_columns(per_sample) if c not in REPLICATE_COLUMNS]
    rows = []
    for keys, grp in per_sample.groupby([*ctx, "explainer", "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        explainer, metric = keys[len(ctx) :]
        wide = _complete(grp.pivot(index=rep, columns="sample_id", values="value"))
        r = crossed_mean(wide.to_numpy(np.float64), confidence)
        n_s, n_r = (int(wide.shape[1]), int(wide.shape[0])) if wide.size else (0, 0)
        dropped = int(grp["sample_id"].nunique()) - n_s
        if dropped:
            log.info(
                "%s/%s/%s: %d sample(s) not scored in every replicate left out",
                context.get("dataset"),
                explainer,
                metric,
                dropped,
            )
        rows.append(
            {
                **context,
                "model": "" if models is None else models[str(context["dataset"])],
                "explainer": explainer,
                "metric": metric,
                "mean": r["mean"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n": n_s,
                "higher_is_better": _higher_is_better(meta, metric),
                "n_samples": n_s,
                "n_replicates": n_r,
                "df": r["df"],
            }
        )
    cols = [*ctx, *SUMMARY_COLUMNS[1:], *COUNT_COLUMNS, "df"]
    return pd.DataFrame(rows, columns=cols).astype({**_COUNT_TYPES, "higher_is_better": bool})


#: what each test of :func:`replicate_tests` counts as its units
REPLICATE_TEST_UNITS = {"t": "samples x replicates", "wilcoxon": "replicates"}
REPLICATE_TESTS_COLUMNS = [*TESTS_COLUMNS, "df", "min_p", "unit", "n", *COUNT_COLUMNS]


def replicate_tests(per_sample: pd.DataFrame, tests: Sequence[str] = TESTS) -> pd.DataFrame:
    """Explainers compared across replicates: for every pair of one (context, metric), the
    paired differences on the samples both scored in every replicate, as a (replicates x
    samples) table.

    * ``t``: the crossed random-effects test (:func:`crossed_t`), which counts the variance of
      retraining *and* of the samples; ``df`` is the degrees of freedom of its deciding part.
    * ``wilcoxon``: the signed-rank test over the per-replicate mean differences (units:
      replicates; it asks whether the difference on these samples survives retraining, and
      does not count sample variance). ``min_p`` is its smallest attainable p
      (:func:`wilcoxon_min_p`; 0.25 with 3 replicates): where it is not below alpha the test
      cannot reject and is not informative (:func:`rank` does not let it vote; the report does
      not print it).

    ``effect_size`` is Cohen's d_z of the per-sample differences averaged over replicates (for
    one replicate, the d_z of :func:`paired_tests`). ``p_holm`` is Holm's adjustment over the
    pairs of one (context, metric, test). Columns :data:`REPLICATE_TESTS_COLUMNS` (``n`` ==
    ``n_samples``, distinct samples).

    Longer than 80 lines because the docstring states the model and its conventions in full; the
    body is one loop over the (context, metric) groups and their explainer pairs."""
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise ValueError(f"unknown test(s) {unknown}; valid: {', '.join(TESTS)}")
    _check_columns(per_sample, PER_SAMPLE_REQUIRED, "per_sample")
    rep = _replicate_key(per_sample)
    ctx = [c for c in context_columns(per_sample) if c not in REPLICATE_COLUMNS]
    ident = [*ctx, rep, "explainer", "metric", "sample_id"]
    dup = per_sample.duplicated(ident)
    if dup.any():
        raise ValueError(
            f"{int(dup.sum())} duplicated ({', '.join(ident)}) rows, e.g. "
            f"{tuple(per_sample[dup].iloc[0][ident])}"
        )
    frames = []
    nan = float("nan")
    for keys, grp in per_sample.groupby([*ctx, "metric"], sort=False):
        context = dict(zip(ctx, keys[: len(ctx)], strict=True))
        metric = keys[-1]
        tables = {
            e: g.pivot(index=rep, columns="sample_id", values="value")
            for e, g in grp.groupby("explainer", sort=False)
        }
        rows = []
        for a, b in combinations(list(tables), 2):
            d = _complete(tables[a].sub(tables[b])).to_numpy(np.float64)  # by replicate and id
            n_r, n_s = d.shape if d.size else (0, 0)
            base = {
                **context,
                "metric": metric,
                "explainer_a": a,
                "explainer_b": b,
                "effect_size": cohens_dz(d.mean(axis=0)) if d.size else nan,
                "n": n_s,
                "n_samples": n_s,
                "n_replicates": n_r,
            }
            for test in tests:
                if test == "t":
                    stat, p, df = crossed_t(d) if d.size else (nan, nan, nan)
                    min_p = 0.0
                else:
                    rep_means = d.mean(axis=1) if d.size else np.empty(0)
                    stat, p = paired_wilcoxon(rep_means)
                    df, min_p = nan, wilcoxon_min_p(int(np.count_nonzero(rep_means)))
                rows.append(
                    {
                        **base,
                        "test": test,
                        "statistic": stat,
                        "p_value": p,
                        "df": df,
                        "min_p": min_p,
                        "unit": REPLICATE_TEST_UNITS[test],
                    }
                )
        part = pd.DataFrame(rows)
        if len(part):
            for test in tests:
                sel = (part["test"] == test).to_numpy()
                part.loc[sel, "p_holm"] = holm(part.loc[sel, "p_value"].to_numpy())
        frames.append(part)
    cols = [*ctx, *REPLICATE_TESTS_COLUMNS[1:]]
    if not frames or all(len(f) == 0 for f in frames):
        return pd.DataFrame(columns=cols)
    out = pd.concat([f for f in frames if len(f)], ignore_index=True)
    return out[cols].astype(_COUNT_TYPES)


def replicate_ranks(
    per_replicate: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05, test: str = "t"
) -> pd.DataFrame:
    """:func:`rank` within every replicate (its own model, its own Holm-adjusted tests over
    samples, ``tests.csv``), so the report can show whether an explainer ranking is stable
    across retrained models. These ranks are conditional on each replicate's model; the ranking
    across replicates comes from :func:`replicate_tests`."""
    return rank(per_replicate, tests, alpha, test=test)


# --------------------------------------------------------------------------- object vs background

FG, BG = "fg_mean", "bg_mean"
FG_BG_COLUMNS = [
    "dataset",
    "explainer",
    "fg_metric",
    "test",
    "n",
    "fg_mean",
    "bg_mean",
    "mean_diff",
    "statistic",
    "p_value",
    "p_holm",
    "effect_size",
    "min_p",
]


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
    (paired t-test and Wilcoxon, Cohen's d_z, Holm over the explainers of one dataset per test;
    ``min_p`` is the smallest p the test can give, :func:`wilcoxon_min_p`). Columns
    ``FG_BG_COLUMNS``; written to ``results/fg_bg_tests.csv``."""
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
                base = {
                    **context,
                    "explainer": explainer,
                    "fg_metric": fg_name,
                    "n": len(d),
                    "fg_mean": float(both["fg"].mean()) if len(d) else np.nan,
                    "bg_mean": float(both["bg"].mean()) if len(d) else np.nan,
                    "mean_diff": float(d.mean()) if len(d) else np.nan,
                    "effect_size": dz,
                }
                block.append({**base, "test": "t", "statistic": t, "p_value": p_t, "min_p": 0.0})
                block.append(
                    {
                        **base,
                        "test": "wilcoxon",
                        "statistic": w,
                        "p_value": p_w,
                        "min_p": wilcoxon_min_p(int(np.count_nonzero(d))),
                    }
                )
            for test in ("t", "wilcoxon"):
                fam = [r for r in block if r["test"] == test]
                adj = holm([r["p_value"] for r in fam])
                for r, a in zip(fam, adj, strict=True):
                    r["p_holm"] = float(a)
            rows += block
    cols = _with_context(FG_BG_COLUMNS, per_sample)
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)


# --------------------------------------------------------------------------- the tables of a run


def result_tables(
    per_sample: pd.DataFrame,
    meta: Mapping[str, Any],
    *,
    models: Mapping[str, str] | None = None,
    seed: int = 0,
    replicates: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every statistics table a run writes under ``results/`` (``{file stem: frame}``), from its
    per-sample scores; :func:`xaiarena.evaluate` gives the same tables for the user's maps.

    ``summary`` (bootstrap CIs, :func:`summarize`) and ``tests`` (:func:`paired_tests`) always;
    ``fg_bg_tests`` where ``fg_bg_attribution`` scored. With ``replicates`` (``per_sample`` has
    ``replicate`` and ``seed`` columns), ``summary`` is the summary across replicates x samples
    (:func:`summarize_replicates`: crossed random effects), ``tests_replicates`` compares explainers
    across replicates x samples (:func:`replicate_tests`), and ``summary_per_replicate`` and
    ``ranks_per_replicate`` describe each retrained model on its own (``tests`` is then per
    replicate)."""
    out: dict[str, pd.DataFrame] = {}
    tests = paired_tests(per_sample)
    fg_bg = fg_bg_tests(
        per_sample
    )  # object vs background within each explainer (fg_bg_attribution)
    if len(fg_bg):
        out["fg_bg_tests"] = fg_bg
    if replicates:
        per_rep = summarize(per_sample, meta, models=models, seed=seed)
        out["summary_per_replicate"] = per_rep
        out["ranks_per_replicate"] = replicate_ranks(per_rep, tests)
        out["tests_replicates"] = replicate_tests(per_sample)
        out["summary"] = summarize_replicates(per_sample, meta, models=models)
    else:
        out["summary"] = summarize(per_sample, meta, models=models, seed=seed)
    out["tests"] = tests
    return out


__all__ = [
    "ALL_METRICS",
    "COMBINED_COLUMNS",
    "COUNT_COLUMNS",
    "CURVE_COLUMNS",
    "PER_SAMPLE_COLUMNS",
    "PER_SAMPLE_REQUIRED",
    "RANK_COLUMNS",
    "REPLICATE_TESTS_COLUMNS",
    "SUMMARY_COLUMNS",
    "TESTS_COLUMNS",
    "crossed_mean",
    "crossed_t",
    "informative",
    "replicate_ranks",
    "replicate_tests",
    "summarize_replicates",
    "wilcoxon_min_p",
    "bootstrap_ci",
    "cohens_dz",
    "combined_ranking",
    "compact_letter_display",
    "compare_to_best",
    "fg_bg_tests",
    "holm",
    "paired_t",
    "paired_tests",
    "paired_wilcoxon",
    "rank",
    "result_tables",
    "summarize",
]
