"""Which metrics can you trust here? Statistics that evaluate a run's metrics (docs/meta.md).

Everything here works on saved tables (no model, no torch) and is deterministic. For every
*ranked* output of every metric, in every comparison context (dataset, grid point, explained
model, replicate: :data:`xaiarena.stats.CONTEXT_COLUMNS`), :func:`meta_table` gives one row
of ``results/meta.csv``:

Reliability -- :func:`krippendorff_alpha`, :func:`kendall_w`
    Each evaluation sample ranks the explainers (:func:`sample_ranks`: rank 1 = best given
    the output's direction, average ranks for ties). ``reliability`` is Krippendorff's alpha
    (ordinal; Krippendorff 2004, 2011) of these rankings, the samples being the coders and the
    explainers the units: 1 when every sample orders the explainers alike, about 0 when the
    orderings are no more alike than chance (a metric that is noise), negative when samples
    disagree systematically. Samples with an undefined score for some explainer rank the
    others (alpha handles the missing values). ``kendall_w`` is Kendall's coefficient of
    concordance W with the tie correction (Kendall & Babington Smith 1939) on the samples
    that scored every explainer; W of pure noise is about 1/m for m samples, not 0.
    ``friedman_p`` (:func:`friedman_p`) tests W against chance: a metric whose per-sample
    rankings are noise has p >= 0.05 most of the time.

    Alpha measures how far *single samples* agree on the order; it is not the reliability of
    the order of the *means* over all samples, which grows with the number of samples (for m
    samples of agreement alpha, about ``m alpha / (1 + (m - 1) alpha)``, Spearman-Brown). A low
    alpha with a small ``friedman_p`` says that explainers genuinely trade places from sample
    to sample while one order prevails on average.

Agreement -- :func:`agreement_pairs`
    The explainers' mean scores (over the context's samples, oriented so that higher is
    better) order the explainers; two outputs agree when their orderings correlate.
    ``agreement`` is the mean Spearman correlation of an output's ordering with those of the
    outputs of the *other* metric entries of its category (outputs of one metric entry, e.g.
    keep 10/20/50 %, are not counted as independent evidence; Tomsett et al. 2020); NaN when
    it is alone in its category. Correlations need 3 explainers scored by both outputs and a
    non-constant ordering. ``results/meta_agreement.csv`` holds every pair (Spearman and
    Kendall's tau-b).

Resilience and reactivity -- :func:`iac`, :func:`iec_minor`, :func:`iec_disruptive`,
:func:`consistency`
    MetaQuantus (Hedström et al. 2023) perturbs the evaluation problem of a subset of samples:
    the model (multiplicative Gaussian noise on every weight, the *model perturbation test*) or
    the inputs (additive uniform noise, the *input perturbation test*), slightly (*minor*: the
    scores should not change, on the samples whose prediction did not change) or strongly
    (*disruptive*: the scores should get worse, on the samples whose prediction changed).
    With ``q`` the unperturbed scores of one explainer and ``q_hat`` the perturbed ones:

    * ``IAC_NR`` = p-value of the two-sided Wilcoxon signed-rank test (``zero_method="zsplit"``)
      of ``q`` against ``q_hat``; ``IAC_AR`` = 1 - that p-value; averaged over explainers and
      perturbations (intra-consistency: the score distribution of each explainer);
    * ``IEC_NR`` = share of (sample, position) pairs whose explainer ordering (``argsort`` of the
      scores across explainers) is unchanged; ``IEC_AR`` = share of (explainer, sample) pairs
      whose perturbed score is worse than the unperturbed one (inter-consistency: the ranking);
    * ``MC`` = mean of the four (1 = ideal), per perturbation type (``mc_model``, ``mc_input``).

    ``resilience`` = mean of IAC_NR and IEC_NR, ``reactivity`` = mean of IAC_AR and IEC_AR
    (each averaged over the perturbation types that ran), ``mc`` = mean of ``mc_model`` and
    ``mc_input``. The formulas are those of MetaQuantus 0.0.5's ``MetaEvaluation``
    (``compute_iac_score``, ``compute_iec_resilience``, ``compute_iec_adversary``,
    ``run_meta_consistency_analysis``; tests/unit/stats/test_meta.py runs that module on the
    same arrays).
    Differences, only where MetaQuantus would give NaN: samples with an undefined score are
    left out of a Wilcoxon test, and means over explainers and perturbations skip NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import context_columns, paired_wilcoxon

#: the perturbation types (MetaQuantus's model and input perturbation tests) and strengths
PERTURBATION_TYPES = ("model", "input")
MINOR, DISRUPTIVE = "minor", "disruptive"
#: the columns of the perturbed scores the meta stage returns (besides the unit's context columns)
PERTURBED_COLUMNS = [
    "dataset",
    "explained_model",
    "explainer",
    "metric",
    "sample_id",
    "value",
    "perturbation",
    "strength",
    "draw",
    "same_prediction",
]
CRITERIA = [
    f"{c}_{p}" for p in PERTURBATION_TYPES for c in ("iac_nr", "iac_ar", "iec_nr", "iec_ar")
]
META_COLUMNS = [
    "dataset",
    "metric",
    "category",
    "n_explainers",
    "n_samples",
    "reliability",
    "kendall_w",
    "friedman_p",
    "agreement",
    "resilience",
    "reactivity",
    "mc",
    "mc_model",
    "mc_input",
    *CRITERIA,
    "n_meta_samples",
]
AGREEMENT_COLUMNS = [
    "dataset",
    "category",
    "metric_a",
    "metric_b",
    "spearman",
    "kendall_tau",
    "n_explainers",
]


# --------------------------------------------------------------------------- reliability


def sample_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Per row (sample) of ``scores`` ``(n_samples, n_explainers)``, the explainers' ranks: 1 = best
    given the direction, average ranks for ties; an undefined (NaN) score stays NaN and the other
    explainers of that sample are ranked among themselves."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"scores must be (n_samples, n_explainers), got shape {x.shape}")
    if x.size == 0:
        return x.copy()
    return sps.rankdata(-x if higher_is_better else x, axis=1, nan_policy="omit")


def krippendorff_alpha(ranks: np.ndarray, level: str = "ordinal") -> float:
    """Krippendorff's alpha of ``ranks`` ``(n_coders, n_units)``: here the samples are the coders
    and the explainers the units (NaN = missing). NaN when undefined: fewer than two coders with
    two values, or a single value in the whole table (no expected disagreement)."""
    import krippendorff

    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"ranks must be (n_coders, n_units), got shape {r.shape}")
    r = r[
        np.isfinite(r).sum(1) >= 2
    ]  # a coder that ranks one explainer says nothing about the order
    finite = r[np.isfinite(r)]
    if len(r) < 2 or np.unique(finite).size < 2:
        return float("nan")
    try:
        return float(krippendorff.alpha(reliability_data=r, level_of_measurement=level))
    except (ValueError, ZeroDivisionError):
        return float("nan")


def kendall_w(ranks: np.ndarray) -> float:
    """Kendall's W of ``ranks`` ``(m raters, n objects)`` with the correction for ties:
    ``W = 12 S / (m^2 (n^3 - n) - m sum_i T_i)``, ``S`` the sum of squared deviations of the
    objects' rank sums from their mean, ``T_i = sum (t^3 - t)`` over the tie groups of rater
    ``i``. Raters with a missing rank are left out; NaN for fewer than 2 raters or objects, or
    when every rater ties everything."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"ranks must be (m raters, n objects), got shape {r.shape}")
    r = r[np.isfinite(r).all(1)]
    m, n = r.shape
    if m < 2 or n < 2:
        return float("nan")
    totals = r.sum(0)
    s = float(((totals - totals.mean()) ** 2).sum())
    ties = 0.0
    for row in r:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts.astype(np.float64) ** 3 - counts).sum())
    den = m**2 * (n**3 - n) - m * ties
    return float(12 * s / den) if den > 0 else float("nan")


def friedman_p(ranks: np.ndarray) -> float:
    """p-value of Friedman's test that the raters' rankings are no more alike than chance:
    ``chi2 = m (n - 1) W`` on ``n - 1`` degrees of freedom (:func:`kendall_w`, the same raters);
    equal to ``scipy.stats.friedmanchisquare`` on the complete rows. NaN where W is."""
    r = np.asarray(ranks, dtype=np.float64)
    r = r[np.isfinite(r).all(1)] if r.ndim == 2 else r
    w = kendall_w(r)
    if not np.isfinite(w):
        return float("nan")
    m, n = r.shape
    return float(sps.chi2.sf(m * (n - 1) * w, n - 1))


# --------------------------------------------------------------------------- agreement


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan"), n
    return float(sps.spearmanr(a[ok], b[ok])[0]), float(sps.kendalltau(a[ok], b[ok])[0]), n


def agreement_pairs(means: pd.DataFrame, outputs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Rank correlations of the explainer orderings of every pair of outputs in one category.

    ``means``: explainers x outputs, each output's mean score (NaN where not scored);
    ``outputs``: per output its ``category``, ``label`` (the metric entry) and
    ``higher_is_better``. Outputs of one metric entry are not paired. Columns ``category,
    metric_a, metric_b, spearman, kendall_tau, n_explainers`` (both orders of each pair)."""
    rows = []
    names = [m for m in means.columns if m in outputs]
    for a in names:
        for b in names:
            ea, eb = outputs[a], outputs[b]
            if a == b or ea["category"] != eb["category"] or ea["label"] == eb["label"]:
                continue
            va = means[a].to_numpy(np.float64) * (1 if ea["higher_is_better"] else -1)
            vb = means[b].to_numpy(np.float64) * (1 if eb["higher_is_better"] else -1)
            rho, tau, n = _correlations(va, vb)
            rows.append(
                {
                    "category": ea["category"],
                    "metric_a": a,
                    "metric_b": b,
                    "spearman": rho,
                    "kendall_tau": tau,
                    "n_explainers": n,
                }
            )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS[1:])


# --------------------------------------------------------------------------- MetaQuantus criteria


def iac(q: np.ndarray, q_hat: np.ndarray, indices: np.ndarray, disruptive: bool) -> float:
    """Intra-consistency of one explainer's scores under one perturbation: the two-sided Wilcoxon
    signed-rank p-value (``zero_method="zsplit"``) of ``q`` against ``q_hat`` on the samples
    ``indices`` (minor: p, the scores should not move; disruptive: 1 - p). As MetaQuantus, a test
    that fails (e.g. one sample) counts as p = 0; samples with a NaN score are left out."""
    q, q_hat = np.asarray(q, np.float64), np.asarray(q_hat, np.float64)
    idx = np.asarray(indices, dtype=bool) & np.isfinite(q) & np.isfinite(q_hat)
    d = q[idx] - q_hat[idx]
    if d.size >= 2:
        # scipy.stats.wilcoxon(q, q_hat, zero_method="zsplit"), its exact sign-flip branch
        # computed in one matrix product (stats.paired_wilcoxon)
        p = paired_wilcoxon(d, zero_method="zsplit")[1]
    else:  # scipy's own answers at n < 2: NaN for no sample, p = 1 or an error for one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                p = float(sps.wilcoxon(d, zero_method="zsplit")[1])
            except Exception:  # noqa: BLE001 - MetaQuantus: any failure of the test is p = 0
                p = 0.0
    return 1.0 - p if disruptive else p


def iec_minor(scores: np.ndarray, perturbed: np.ndarray, indices: np.ndarray) -> float:
    """Inter-consistency under a minor perturbation: the share of positions of the explainer
    ordering (``argsort`` over explainers of ``(n_explainers, n_samples)`` scores, per sample)
    that hold the same explainer after the perturbation, over the samples ``indices``."""
    q, q_hat = np.asarray(scores, np.float64), np.asarray(perturbed, np.float64)
    idx = np.asarray(indices, dtype=bool)
    same = np.argsort(q, axis=0, kind="stable") == np.argsort(q_hat, axis=0, kind="stable")
    u = same[:, idx]
    return float(u.mean()) if u.size else float("nan")


def iec_disruptive(
    scores: np.ndarray, perturbed: np.ndarray, indices: np.ndarray, higher_is_better: bool
) -> float:
    """Inter-consistency under a disruptive perturbation: the share of (explainer, sample) pairs
    (samples ``indices``) whose perturbed score is worse than the unperturbed one."""
    q, q_hat = np.asarray(scores, np.float64), np.asarray(perturbed, np.float64)
    idx = np.asarray(indices, dtype=bool)
    worse = q[:, idx] > q_hat[:, idx] if higher_is_better else q[:, idx] < q_hat[:, idx]
    return float(worse.mean()) if worse.size else float("nan")


def _nanmean(values: Any) -> float:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def consistency(
    scores: np.ndarray,
    perturbed: np.ndarray,
    same_prediction: np.ndarray,
    strength: str,
    higher_is_better: bool,
) -> tuple[float, float]:
    """``(IAC, IEC)`` of one perturbation test and strength.

    ``scores``: ``(n_explainers, n_samples)`` unperturbed; ``perturbed``: ``(K, n_explainers,
    n_samples)`` for K draws; ``same_prediction``: ``(K, n_samples)`` whether the perturbed
    model/input predicts what the unperturbed one did. Minor: the samples with the same
    prediction; disruptive: those whose prediction changed. IAC is averaged over explainers and
    draws, IEC over draws."""
    if strength not in (MINOR, DISRUPTIVE):
        raise ValueError(f"strength must be '{MINOR}' or '{DISRUPTIVE}', got {strength!r}")
    q = np.asarray(scores, np.float64)
    qh = np.asarray(perturbed, np.float64)
    same = np.asarray(same_prediction, dtype=bool)
    if qh.ndim != 3 or qh.shape[1:] != q.shape or same.shape != (qh.shape[0], q.shape[1]):
        raise ValueError(
            f"shapes do not match: scores {q.shape}, perturbed {qh.shape}, "
            f"same_prediction {same.shape}"
        )
    disruptive = strength == DISRUPTIVE
    intra, inter = [], []
    for k in range(qh.shape[0]):
        idx = ~same[k] if disruptive else same[k]
        intra += [iac(q[e], qh[k, e], idx, disruptive) for e in range(q.shape[0])]
        inter.append(
            iec_disruptive(q, qh[k], idx, higher_is_better)
            if disruptive
            else iec_minor(q, qh[k], idx)
        )
    return _nanmean(intra), _nanmean(inter)


def meta_consistency(criteria: Mapping[str, float]) -> dict[str, float]:
    """``mc_<type>`` (mean of the four criteria of a perturbation type; NaN if one is missing),
    ``mc`` (mean over the types that have one), ``resilience`` and ``reactivity`` from the
    criteria ``iac_nr_<type>, iac_ar_<type>, iec_nr_<type>, iec_ar_<type>``."""
    out: dict[str, float] = {}
    nr, ar = [], []
    for p in PERTURBATION_TYPES:
        four = [
            criteria.get(f"{c}_{p}", float("nan")) for c in ("iac_nr", "iac_ar", "iec_nr", "iec_ar")
        ]
        out[f"mc_{p}"] = float(np.mean(four))  # NaN when one is missing, as MetaQuantus
        if np.isfinite(out[f"mc_{p}"]):
            nr.append((four[0] + four[2]) / 2)
            ar.append((four[1] + four[3]) / 2)
    out["mc"] = _nanmean([out[f"mc_{p}"] for p in PERTURBATION_TYPES])
    out["resilience"] = _nanmean(nr)
    out["reactivity"] = _nanmean(ar)
    return out


# --------------------------------------------------------------------------- the tables of a run


def _matrix(frame: pd.DataFrame, explainers: list[str], samples: list[Any]) -> np.ndarray:
    """``(n_explainers, n_samples)`` scores of one output (NaN where missing)."""
    wide = frame.pivot_table(
        index="explainer", columns="sample_id", values="value", aggfunc="first", dropna=False
    )
    return wide.reindex(index=explainers, columns=samples).to_numpy(np.float64)


def _perturbation_criteria(base: pd.DataFrame, pert: pd.DataFrame, hib: bool) -> dict[str, float]:
    """The eight MetaQuantus criteria of one output in one context (NaN for tests that did not
    run)."""
    out = {c: float("nan") for c in CRITERIA}
    if pert is None or not len(pert):
        return out
    explainers = list(dict.fromkeys(pert["explainer"]))
    explainers = [e for e in explainers if e in set(base["explainer"])]
    samples = sorted(set(pert["sample_id"]))
    if not explainers or not samples:
        return out
    q = _matrix(base, explainers, samples)
    for (ptype, strength), grp in pert.groupby(["perturbation", "strength"], sort=False):
        draws = sorted(set(grp["draw"]))
        qh = np.stack([_matrix(grp[grp["draw"] == k], explainers, samples) for k in draws])
        flags = grp.drop_duplicates(["draw", "sample_id"]).pivot(
            index="draw", columns="sample_id", values="same_prediction"
        )
        same = flags.reindex(index=draws, columns=samples).fillna(False).to_numpy(bool)
        i, e = consistency(q, qh, same, strength, hib)
        tag = "nr" if strength == MINOR else "ar"
        out[f"iac_{tag}_{ptype}"], out[f"iec_{tag}_{ptype}"] = i, e
    return out


def meta_table(
    per_sample: pd.DataFrame,
    meta: Mapping[str, Mapping[str, Any]],
    perturbed: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``results/meta.csv`` and ``results/meta_agreement.csv`` of a run.

    ``per_sample``: the run's per-sample scores (``dataset, explainer, metric, sample_id, value``
    and any context columns); ``meta``: run.json ``metrics_meta`` (per output: ``category``,
    ``label``, ``higher_is_better``, ``ranked``); ``perturbed``: the meta stage's scores of the
    perturbed evaluation problems (:data:`PERTURBED_COLUMNS` plus the context columns; None:
    the resilience and reactivity columns are NaN). Outputs with ``ranked: false`` never rank
    explainers and are left out."""
    ctx = context_columns(per_sample)
    ranked = {m: e for m, e in meta.items() if e.get("ranked", True)}
    rows, pairs = [], []
    df = per_sample[per_sample["metric"].isin(list(ranked))]
    pert_groups: dict[tuple, pd.DataFrame] = {}
    pctx = [c for c in ctx if perturbed is not None and c in perturbed.columns]
    if perturbed is not None and len(perturbed):
        pert_groups = dict(iter(perturbed.groupby([*pctx, "metric"], sort=False)))
    for keys, grp in df.groupby(ctx, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        context = dict(zip(ctx, keys, strict=True))
        metrics = list(dict.fromkeys(grp["metric"]))
        means = grp.groupby(["explainer", "metric"], sort=False)["value"].mean().unstack("metric")
        agree = agreement_pairs(
            means,
            {
                m: {
                    "category": ranked[m].get("category", "other"),
                    "label": ranked[m].get("label", m),
                    "higher_is_better": bool(ranked[m].get("higher_is_better", True)),
                }
                for m in metrics
            },
        )
        pairs += [{**context, **r} for r in agree.to_dict("records")]
        for m in metrics:
            entry = ranked[m]
            hib = bool(entry.get("higher_is_better", True))
            sel = grp[grp["metric"] == m]
            explainers = list(dict.fromkeys(sel["explainer"]))
            samples = list(dict.fromkeys(sel["sample_id"]))
            scores = _matrix(sel, explainers, samples).T  # (samples, explainers)
            ranks = sample_ranks(scores, hib)
            mine = (
                agree[agree["metric_a"] == m]["spearman"] if len(agree) else pd.Series(dtype=float)
            )
            pert = pert_groups.get((*[context[c] for c in pctx], m))
            crit = _perturbation_criteria(sel, pert, hib)
            n_meta = int(pert["sample_id"].nunique()) if pert is not None else 0
            rows.append(
                {
                    **context,
                    "metric": m,
                    "category": entry.get("category", "other"),
                    "n_explainers": len(explainers),
                    "n_samples": len(samples),
                    "reliability": krippendorff_alpha(ranks),
                    "kendall_w": kendall_w(ranks),
                    "friedman_p": friedman_p(ranks),
                    "agreement": _nanmean(mine.to_numpy()) if len(mine) else float("nan"),
                    **meta_consistency(crit),
                    **crit,
                    "n_meta_samples": n_meta,
                }
            )
    cols = _context_first(META_COLUMNS, ctx)
    table = pd.DataFrame(rows, columns=cols).astype(
        {"n_explainers": "int64", "n_samples": "int64", "n_meta_samples": "int64"}
    )
    return table, pd.DataFrame(pairs, columns=_context_first(AGREEMENT_COLUMNS, ctx))


def _context_first(columns: list[str], ctx: list[str]) -> list[str]:
    return [*ctx, *[c for c in columns if c not in ctx]]


__all__ = [
    "AGREEMENT_COLUMNS",
    "CRITERIA",
    "DISRUPTIVE",
    "META_COLUMNS",
    "MINOR",
    "PERTURBATION_TYPES",
    "PERTURBED_COLUMNS",
    "agreement_pairs",
    "consistency",
    "iac",
    "iec_disruptive",
    "iec_minor",
    "friedman_p",
    "kendall_w",
    "krippendorff_alpha",
    "meta_consistency",
    "meta_table",
    "sample_ranks",
]
