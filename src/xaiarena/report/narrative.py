"""A short plain-language reading of the results, generated from the numbers only.

Rules (so the text never claims more than the tests support):

* "wins" means best mean *and* significantly better than every other explainer
  (Holm-adjusted paired test below alpha); otherwise the explainers not
  significantly different from the best are named as tied with it.
* "no significant differences" is said when every explainer is in the best
  group of a metric.
* Across datasets, only mean ranks are compared; no test pools samples of
  different datasets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import stats
from ..views import on_f_b_label
from .tables import decimals_for, direction_words, fmt, fmt_percent, fmt_signed


def _join(names: list[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _test_name(test: str) -> str:
    return {
        "t": "paired t-test",
        "wilcoxon": "Wilcoxon signed-rank test",
        "both": "paired t-test and Wilcoxon signed-rank test",
    }[test]


def _accuracy_sentences(info: dict[str, Any]) -> list[str]:
    """The model's test accuracy (near chance: said so) and the number of evaluation samples, as
    one sentence; none where the run has no accuracy."""
    acc = info.get("test_accuracy")
    if not (isinstance(acc, (int, float)) and np.isfinite(acc)):
        return []
    model = info.get("model") or "the model"
    s = f"{model} reaches {fmt_percent(acc)} test accuracy"
    k = info.get("num_classes")
    if isinstance(k, int) and k > 1 and acc < 1.5 / k:
        s += (
            f", close to chance ({fmt_percent(1 / k)} for {k} classes), so the "
            "attributions explain a model that has learned little"
        )
    if info.get("n_eval"):
        s += f"; {info['n_eval']} evaluation samples were explained"
    return [s + "."]


def _learned_sentences(info: dict[str, Any]) -> list[str]:
    """Which explainers explain DiET's f_s instead of f_b, f_s's agreement with f_b, and the
    cautions of the learned explainer's report; none without such explainers."""
    diet = learned_report(info)
    agree = diet.get("test_agreement_fs_fb") if isinstance(diet, dict) else None
    fs = [
        e
        for e, v in (info.get("explainers") or {}).items()
        if isinstance(v, dict) and v.get("explains") == "f_s"
    ]
    if not fs:
        return []
    s = (
        f"{_join(fs)} {'explains' if len(fs) == 1 else 'explain'} DiET's distilled model "
        "f_s, not f_b"
    )
    if isinstance(agree, (int, float)) and np.isfinite(agree):
        s += f"; f_s agrees with f_b on {fmt_percent(agree)} of predictions"
    return [s + ".", *learned_cautions(diet)]


def dataset_reading(
    dataset: str,
    info: dict[str, Any],
    summary: pd.DataFrame,
    versus_best: pd.DataFrame,
    metrics: list[str],
    meta: dict[str, dict[str, Any]],
    alpha: float,
    test: str,
) -> list[str]:
    """Sentences about one dataset: model accuracy, per-metric winners and ties, DiET."""
    out: list[str] = []
    first = _accuracy_sentences(info)
    summ = summary[summary["dataset"] == dataset]
    wins: dict[str, list[str]] = {}
    tied_top: dict[str, list[str]] = {}
    no_diff: list[str] = []
    untested: list[str] = []
    for m in metrics:
        vb = versus_best[versus_best["metric"] == m]
        s = summ[summ["metric"] == m].set_index("explainer")
        if not len(vb) or not np.isfinite(s["mean"]).any():
            continue
        best = str(vb["best"].iloc[0])
        others = vb[~vb["is_best"] & s.loc[vb["explainer"], "mean"].notna().to_numpy()]
        tied = list(others.loc[~others["significant"], "explainer"])
        d = decimals_for(s[["mean", "ci_low", "ci_high"]].to_numpy())
        b = s.loc[best]
        ci = ""
        if np.isfinite(b["ci_low"]) and np.isfinite(b["ci_high"]):
            ci = f", 95% CI {fmt(b['ci_low'], d)} to {fmt(b['ci_high'], d)}"
        head = (
            f"{m} ({direction_words(bool(meta.get(m, {}).get('higher_is_better', True)))}): "
            f"{best} has the best mean ({fmt(b['mean'], d)}{ci})"
        )
        if not len(others):
            untested.append(m)
            continue
        if others["p_holm"].isna().all():
            untested.append(m)
            out.append(head + "; no paired test is available, so no difference can be claimed.")
            continue
        if not tied:
            wins.setdefault(best, []).append(m)
            out.append(head + " and is significantly better than every other explainer.")
        elif len(tied) == len(others):
            no_diff.append(m)
            out.append(head + ", but no explainer is significantly different from it.")
        else:
            tied_top.setdefault(best, []).append(m)
            for t in tied:
                tied_top.setdefault(t, []).append(m)
            verb = "is" if len(tied) == 1 else "are"
            out.append(head + f"; {_join(tied)} {verb} not significantly different from it.")
    summary_bits = []
    if wins:
        summary_bits.append(
            "Clear wins: "
            + "; ".join(
                f"{e} on {_join(ms)}" for e, ms in sorted(wins.items(), key=lambda kv: -len(kv[1]))
            )
            + "."
        )
    if no_diff:
        summary_bits.append(f"No significant differences between explainers on {_join(no_diff)}.")
    out = first + summary_bits + out + _learned_sentences(info)
    if untested and len(untested) == len(metrics):
        out.append("No paired tests were available, so no difference is claimed as significant.")
    return out


#: training masks keeping at least this fraction of the input barely moved from "keep everything";
#: at most MASKS_EMPTY, they kept (almost) nothing
MASKS_FULL, MASKS_EMPTY = 0.95, 0.02
#: DiET's seed check (docs/diet.md, "Seed check"): a median per-sample Spearman correlation between
#: two seeds' test-time maps below this says the maps depend on the seed as much as on the input
SEED_AGREEMENT_MIN = 0.5
#: run directories written before issue 23 report the share of test-time masks that converged
#: before a step horizon; fewer than this share means most maps were unfinished
HORIZON_SHARE = 0.5


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def learned_cautions(report: dict[str, Any]) -> list[str]:
    """Sentences warning that a DiET fit report shows maps that say little: training masks that kept
    (nearly) everything or nothing, test-time optimisations stopped by the safety limit rather than
    by their rule, and maps that depend on the seed (the seed check)."""
    out: list[str] = []
    unit = "words" if report.get("mask_unit") == "word" else "pixels"
    kept = report.get("train_mask_l0_fraction")
    if _finite(kept):
        if kept >= MASKS_FULL:
            hint = (
                "text_diet's lr_words gives the words of long texts the step of short ones"
                if unit == "words"
                else "a larger mask_lr moves each mask cell further per step"
            )
            out.append(
                f"Caution: DiET's training masks keep {fmt_percent(kept)} of the {unit}, so f_s "
                "was hardly trained on erased inputs (the masks barely moved from 'keep "
                f"everything'; {hint})."
            )
        elif kept <= MASKS_EMPTY:
            out.append(
                f"Caution: DiET's training masks keep only {fmt_percent(kept)} of the {unit}: they "
                "collapsed to (almost) nothing (a smaller mask_lr moves each mask unit less per "
                "step)."
            )
    at_limit = report.get("test_stopped_at_limit_fraction")
    time_info = report.get("test_time") if isinstance(report.get("test_time"), dict) else {}
    if _finite(at_limit) and at_limit > 0:
        steps = time_info.get("steps_max")
        where = f" ({int(steps)} steps)" if _finite(steps) else ""
        out.append(
            f"Caution: DiET's test-time optimisation reached its safety limit{where} before its "
            f"stopping rule for {fmt_percent(at_limit)} of the samples, so those maps are those of "
            "an unfinished optimisation (test_max_steps raises the limit)."
        )
    elif "test_stopped_at_limit_fraction" not in report and _finite(
        report.get("test_converged_fraction")
    ):
        conv = report["test_converged_fraction"]  # a run directory written before issue 23
        if conv < HORIZON_SHARE:
            out.append(
                f"Caution: DiET's test-time masks converged for only {fmt_percent(conv)} of the "
                "samples; the others stopped at the step horizon, so its maps are those of an "
                "unfinished optimisation."
            )
    agree = report.get("test_seed_agreement")
    if _finite(agree) and agree < SEED_AGREEMENT_MIN:
        check = (
            report.get("test_seed_check") if isinstance(report.get("test_seed_check"), dict) else {}
        )
        n = check.get("n_samples")
        whose = f"{int(n)} evaluation samples'" if _finite(n) else "the checked samples'"
        out.append(
            f"Caution: DiET's maps depend on its random seed: re-optimised with a second seed, "
            f"{whose} maps have a median per-sample Spearman correlation of {agree:.2f} with the "
            f"served ones (below {SEED_AGREEMENT_MIN:g}); differences between DiET and the other "
            "explainers may be the seed's."
        )
    return out


def learned_report(info: dict[str, Any]) -> dict[str, Any]:
    """The fit report of the (first) learned explainer of a dataset (run.json ``learned``; ``diet``
    in run directories written before learned explainers were keyed by label)."""
    learned = info.get("learned")
    if isinstance(learned, dict) and learned:
        first = next(iter(learned.values()))
        return first if isinstance(first, dict) else {}
    diet = info.get("diet")
    return diet if isinstance(diet, dict) else {}


def home_reading(adv: pd.DataFrame, learned: str, n_explainers: int) -> list[str]:
    """Sentences on a learned explainer's home advantage from :func:`xaiarena.views.home_advantage`
    (one learned explainer's rows): how far its maps move up when scored on its own f_s rather than
    on f_b, against how far the others move. Positions are descriptive (1 = best mean among the
    explainers scored on both models); the report's ranks count significant differences only."""
    mine = adv[adv["explainer"] == learned]
    others = adv[adv["explainer"] != learned]
    if not len(mine):
        return []
    r = mine.iloc[0]
    gain = float(r["mean_position_gain"])
    where = "up" if gain > 0 else "down" if gain < 0 else "neither up nor down"
    n = int(r["n_metrics"])
    pos_b, pos_s = fmt(r["mean_position_f_b"], 2), fmt(r["mean_position_f_s"], 2)
    rank_b, rank_s = fmt(r["mean_rank_f_b"], 2), fmt(r["mean_rank_f_s"], 2)
    out = [
        f"Scored on its own f_s instead of on f_b, {learned}'s maps move {where}"
        + (f" by {fmt(abs(gain), 2)} positions" if gain else "")
        + f" on average over {n} metric{'s' if n != 1 else ''} (mean position {pos_b} on f_b, "
        f"{pos_s} on f_s, among the {n_explainers} explainers scored on both; up on "
        f"{int(r['up'])}, unchanged on {int(r['same'])}, down on {int(r['down'])}); by the "
        f"report's rank (significant differences only) {rank_b} on f_b, {rank_s} on f_s."
    ]
    if len(others):
        g = others["mean_position_gain"]
        out.append(
            f"The other explainers move by {fmt_signed(g.mean())} positions on average "
            f"(from {fmt_signed(g.min())} to {fmt_signed(g.max())}); positions among the "
            "same explainers sum to the same total on both models, so one explainer's gain "
            "is the others' loss."
        )
        rank_gain = float(r["mean_rank_gain"])
        if gain <= 0:
            out.append(f"f_s does not favour {learned}'s maps over the others' here.")
        elif gain <= float(g.max()):
            out.append(
                f"Other explainers gain as much or more: f_s does not single out {learned}'s maps."
            )
        elif rank_gain > 0:
            out.append(
                f"f_s favours {learned}'s maps more than any other explainer's, by position "
                f"and by rank: judge {learned} against the others on f_b "
                f"({on_f_b_label(learned)}), the model being explained."
            )
        else:
            out.append(
                f"{learned}'s gain in position is the largest, but its rank (significant "
                "differences only) does not improve on f_s."
            )
    return out


def dataset_headline(ranks: pd.DataFrame, metrics: list[str]) -> str:
    """One sentence: which explainers are most often in the top group (rank 1)."""
    r = ranks[ranks["metric"].isin(metrics)].dropna(subset=["rank"])
    if not len(r):
        return "No metric results."
    n_metrics = r["metric"].nunique()
    top = r[r["rank"] == 1].groupby("explainer", sort=False).size()
    order = list(pd.unique(r["explainer"]))
    counts = sorted(
        ((int(top.get(e, 0)), e) for e in order), key=lambda t: (-t[0], order.index(t[1]))
    )
    if all(c == n_metrics for c, _ in counts):
        return (
            f"No explainer is significantly better than another on any of the {n_metrics} metrics."
        )
    parts = [f"{e} ({c} of {n_metrics})" for c, e in counts[:3] if c > 0]
    return "In the top group (no explainer significantly better) most often: " + _join(parts) + "."


def methods_sentence(alpha: float, test: str, replicates: int = 1) -> str:
    if replicates > 1:
        return (
            f"Significance: Holm-adjusted {_test_name(test)} between explainers on the same "
            f"samples and the same {replicates} retrained models (the t-test over samples × "
            f"replicates, the Wilcoxon test over replicates), alpha = {alpha:g}, separately "
            "for each dataset and metric."
        )
    return (
        f"Significance: Holm-adjusted {_test_name(test)} between explainers on the same "
        f"samples, alpha = {alpha:g}, separately for each dataset and metric."
    )


def combined_reading(comb: pd.DataFrame, n_datasets: int) -> list[str]:
    """Sentences about the mean ranks across datasets."""
    overall = comb[comb["metric"] == stats.ALL_METRICS]
    if not len(overall):
        return []
    parts = [f"{r.explainer} ({fmt(r.mean_rank, 2)})" for r in overall.head(3).itertuples()]
    where = f"across the {n_datasets} datasets" if n_datasets > 1 else "on this dataset"
    out = [f"Lowest mean rank over all metrics {where}: " + _join(parts) + "."]
    best = overall["mean_rank"].min()
    top = list(overall.loc[overall["mean_rank"] == best, "explainer"])
    if len(top) > 1:
        out.append(f"{_join(top)} share the lowest mean rank.")
    if n_datasets > 1:
        out.append(
            "Mean ranks summarise per-dataset results (rank 1 = nobody significantly "
            "better); no test pools samples from different datasets."
        )
    return out
