"""Write a study's results page (docs/results/<study>.md) from a finished run directory.

The page holds what a reader needs to judge the numbers: the question, the command, the
wall time and the machine, the protocol differences, the source's reported values beside
ours (with the agreement rule of the report), every output per dataset and explained
model (mean and 95% bootstrap CI), the pairs that differ after Holm correction, and the
run's key figures copied as PNG next to the page.

    python benchmarks/study_page.py RUN_DIR --command "xaiarena run ..." [--load "0.4 -> 0.6"]

Numbers come only from the run directory; the page is regenerated, never edited by hand
(the one paragraph of interpretation is given with --answer).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from xaiarena.report.html import diet_rows, home_section
from xaiarena.report.loading import load_run
from xaiarena.report.narrative import learned_report
from xaiarena.report.study import agreement_bands, improvement, reference_rows
from xaiarena.views import on_f_b_label, source_of

ROOT = Path(__file__).resolve().parents[1]
FIGURES = (
    "bars",
    "improvement",
    "accuracy",
    "preview",
    "overlays",
    "lime",
    "fgbg",
    "agreement",
    "heatmaps",
)


def _fmt(x: float, nd: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _table(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(out)


IMPROVEMENT = (
    "Once per model the maps are scored on; both maps of a comparison are always scored on the "
    "same model (on f_b, {a}'s maps computed on its f_s count as `{a_on_f_b}`). Per dataset: the "
    "difference of the two means and the paired t-test over images (Holm, d_z = mean difference "
    "/ SD of the differences). Across datasets: the source's paired t-test and pooled-SD Cohen's "
    "d over the per-dataset means (n = datasets, a separate and much weaker analysis: it asks "
    "whether the mean difference is consistent across datasets, not per image). The source "
    "paired maps scored on two different models (DiET on f_s, Grad-CAM on f_b); that pairing is "
    "not a comparison of explanations of one model and is not computed."
)


def home_lines(data, run: dict) -> list[str]:
    """The home-advantage section: how standings move between f_b and a learned explainer's f_s."""
    settings = run.get("stats") if isinstance(run.get("stats"), dict) else {}
    alpha, test = float(settings.get("alpha", 0.05)), str(settings.get("test", "t"))
    home = [
        (ds, home_section(data, ds, alpha, test)) for ds in data.datasets if len(data.views(ds)) > 1
    ]
    home = [(ds, h) for ds, h in home if h]
    if not home:
        return []
    lines = [
        "## Home advantage: how standings move between f_b and f_s",
        "",
        "Per metric, the explainers scored on both models are ranked on each: position = 1 + "
        "the number with a better mean; rank = 1 + the number significantly better "
        f"(Holm-adjusted paired tests, {test}, alpha {alpha:g}). Gain = position on f_b minus "
        "position on f_s (positive: better on f_s). The learned explainer's maps are the same "
        "maps on both models (its `@f_s` rows on f_b); the others explain each model with "
        "their own maps. Means over the metrics:",
        "",
    ]
    for ds, h in home:
        v = h["view"]
        lines += [
            f"**{ds}.** " + " ".join(h["reading"]),
            "",
            _table(
                [
                    [
                        r["explainer"],
                        r["n"],
                        r["position_f_b"],
                        r["position_f_s"],
                        r["gain"],
                        r["moves"],
                        r["rank_f_b"],
                        r["rank_f_s"],
                    ]
                    for r in h["rows"]
                ],
                [
                    "explainer",
                    "metrics",
                    "position on f_b",
                    f"on {v}",
                    "gain",
                    "up / same / down",
                    "rank on f_b",
                    f"on {v}",
                ],
            ),
            "",
            _table(
                [
                    [
                        f"{r['metric']} {r['arrow']}",
                        r["mean_f_b"],
                        r["position_f_b"],
                        r["rank_f_b"],
                        r["mean_f_s"],
                        r["position_f_s"],
                        r["rank_f_s"],
                        r["gain"],
                    ]
                    for r in h["metric_rows"]
                ],
                [
                    f"{h['learned']}'s maps",
                    "scored on f_b",
                    "position",
                    "rank",
                    f"scored on {v}",
                    "position",
                    "rank",
                    "gain",
                ],
            ),
            "",
        ]
    return lines


def page(
    run_dir: Path,
    command: str,
    load: str | None,
    fig_dir: Path,
    fig_rel: str,
    answer: str | None = None,
) -> str:
    data = load_run(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    study = cfg.get("study") or {}
    run = data.run
    hw = run.get("hardware") or {}
    lines = [
        f"# {study.get('id', '')} {study.get('title', cfg.get('name', run_dir.name))}".strip(),
        "",
    ]
    if study.get("question"):
        lines += [f"**Question.** {' '.join(str(study['question']).split())}", ""]
    if answer:
        lines += [f"**What we found.** {answer}", ""]
    lines += [
        "## How this was run",
        "",
        "```bash",
        command,
        "```",
        "",
        f"* wall time: {run.get('total_seconds', float('nan')) / 60:.1f} min (whole run, report "
        "included)",
        f"* machine: {hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, "
        f"{hw.get('memory_gb', '?')} GB, torch threads {hw.get('torch_threads', '?')}"
        + (f", GPU {hw['gpu']}" if hw.get("gpu") else ""),
        f"* load average (uptime) before -> after: {load}" if load else "* load: not recorded",
        f"* versions: {', '.join(f'{k} {v}' for k, v in (run.get('versions') or {}).items())}",
        f"* written {dt.date.today().isoformat()} from `{run_dir.name}` by "
        "`benchmarks/study_page.py`",
        "",
    ]
    for ds in data.datasets:
        info = data.dataset_info(ds)
        acc = info.get("test_accuracy")
        if acc is not None:
            lines.append(
                f"* {ds}: test accuracy of the explained model {_fmt(acc)}"
                + (f", {info['n_samples']} evaluation samples" if info.get("n_samples") else "")
            )
    lines.append("")
    protocol = cfg.get("protocol") or []
    if protocol:
        lines += [
            "## Protocol: the source and ours",
            "",
            _table(
                [[p["setting"], p["source"], p["ours"], p.get("why", "")] for p in protocol],
                ["setting", "source", "ours", "why"],
            ),
            "",
        ]
    refs = cfg.get("reference") or []
    if refs:
        rows, orderings = reference_rows(data, refs)
        lines += [
            "## The source's numbers beside ours",
            "",
            "Agreement rule: a reported value agrees when it lies inside our 95% CI; a reported "
            "range when it overlaps our CI; a reported t or effect size when ours has the same "
            "sign and p < 0.05.",
            "",
            _table(
                [
                    [
                        r["metric"],
                        r["explainer"],
                        r["dataset"],
                        r["reported"],
                        r["ours"],
                        r["ci"],
                        r["agrees"],
                        r["source"],
                    ]
                    for r in rows
                ],
                [
                    "metric",
                    "explainer",
                    "dataset",
                    "source",
                    "ours",
                    "our CI / test",
                    "agrees",
                    "from",
                ],
            ),
            "",
        ]
        lines += [f"* {o}" for o in orderings] + [""]
    imp = improvement(data, study) if "improvement" in set(study.get("analyses") or []) else None
    if imp:
        lines += [
            f"## Improvement: {imp['a']} minus {imp['b']} on {imp['metric']} (the source's table)",
            "",
            IMPROVEMENT.format(a=imp["a"], a_on_f_b=on_f_b_label(imp["a"])),
            "",
        ]
        for v in imp["views"]:
            lines += [
                f"**{v['label']}**: {imp['a']} better on {v['wins']} datasets; across datasets "
                f"{v['across']}.",
                "",
                _table(
                    [
                        [r["dataset"], r["a"], r["b"], r["diff"], r["better"], r["test"]]
                        for r in v["rows"]
                    ],
                    [
                        "dataset",
                        imp["a"],
                        imp["b"],
                        "difference",
                        f"{imp['a']} better",
                        "per-image test",
                    ],
                ),
                "",
            ]
    if "agreement_bands" in set(study.get("analyses") or []):
        bands = agreement_bands(data)
        if bands:
            lines += [
                "## Agreement bands (the source's: >= 0.7 high, >= 0.4 moderate, else low)",
                "",
                _table(
                    [
                        [b["dataset"], b["view"], b["metric"], b["pair"], b["mean"], b["band"]]
                        for b in bands
                    ],
                    ["dataset", "maps of", "output", "pair", "mean", "band"],
                ),
                "",
            ]
    learned = [(ds, diet_rows(learned_report(data.dataset_info(ds)))) for ds in data.datasets]
    learned = [(ds, rows) for ds, rows in learned if rows]
    # how closely the learned explainer's f_s stands in for f_b, and whether its masks say anything
    if learned:
        keys = [r["label"] for r in learned[0][1]]
        lines += [
            "## The learned explainer's model (as in the report)",
            "",
            _table(
                [
                    [k]
                    + [
                        next((r["value"] for r in rows if r["label"] == k), "–")
                        for _, rows in learned
                    ]
                    for k in keys
                ],
                ["number"] + [ds for ds, _ in learned],
            ),
            "",
        ]
    lines += home_lines(data, run)
    meta = data.metrics_meta
    summary = data.summary
    for ds in data.datasets:
        for view in data.views(ds):
            sel = summary[summary["dataset"] == ds]
            if view is not None:
                sel = sel[sel["explained_model"] == view]
            ranked = list(
                pd.unique(sel["metric"])
            )  # descriptive (unranked) outputs are marked below
            explainers = list(pd.unique(sel["explainer"]))
            singles = [e for e in explainers if "~" not in e]
            title = f"## {ds}" + (f", maps of {view}" if view else "")
            lines += [title, ""]
            cross = [e for e in singles if source_of(e)]
            if cross:
                lines += [
                    f"{', '.join(f'`{e}`' for e in cross)}: DiET's maps (test-time masks "
                    "optimised against f_s) scored with f_b, like every other column here.",
                    "",
                ]
            for group in (singles, [e for e in explainers if "~" in e]):
                if not group:
                    continue
                metrics = [
                    m for m in ranked if len(sel[(sel.metric == m) & sel.explainer.isin(group)])
                ]
                rows = []  # one row per output, one column per explainer: mean [95% CI]
                for m in metrics:
                    arrow = "↑" if (meta.get(m) or {}).get("higher_is_better", True) else "↓"
                    row = [
                        f"{m} {arrow}"
                        + ("" if (meta.get(m) or {}).get("ranked", True) else " (not ranked)")
                    ]
                    for e in group:
                        r = sel[(sel.explainer == e) & (sel.metric == m)]
                        row.append(
                            "–"
                            if r.empty
                            else f"{_fmt(r.iloc[0]['mean'])} [{_fmt(r.iloc[0]['ci_low'])}, "
                            f"{_fmt(r.iloc[0]['ci_high'])}]"
                        )
                    rows.append(row)
                lines += [_table(rows, ["output"] + group), ""]
            tests = data.tests
            if tests is not None and len(tests):
                t = tests[(tests["dataset"] == ds) & (tests["test"] == "t")]
                if view is not None and "explained_model" in t.columns:
                    t = t[t["explained_model"] == view]
                sig = t[t["p_holm"] < 0.05]
                if len(t):
                    lines += [
                        f"Paired t-tests (Holm within each metric): {len(sig)} of {len(t)} pairs "
                        "differ at 0.05 (results/tests.csv has every pair, with Wilcoxon).",
                        "",
                    ]
    figs = []
    src = run_dir / "figures"
    if src.is_dir():
        fig_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted(src.glob("*.png")):
            if any(k in p.name for k in FIGURES):
                with Image.open(
                    p
                ) as im:  # at most 1000 px, 256 colours: the pages stay light in the repository
                    im.thumbnail((1000, 1000))
                    im.convert("RGB").quantize(256).save(fig_dir / p.name, optimize=True)
                figs.append(p.name)
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({fig_rel}/{f})" for f in figs] + [""]
    notes = data.notes
    if notes:
        lines += (
            ["## Notes from the run", ""]
            + [f"* {' '.join(str(n).split())}" for n in notes[:30]]
            + [""]
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--command", required=True, help="the command that produced the run")
    ap.add_argument("--load", default=None, help="load average before -> after, from uptime")
    ap.add_argument("--name", default=None, help="page name (default: the run's config name)")
    ap.add_argument(
        "--answer",
        default=None,
        help="what the numbers mean, in a few sentences (written by a person)",
    )
    args = ap.parse_args()
    cfg = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    name = args.name or cfg.get("name") or args.run_dir.name
    out = ROOT / "docs" / "results" / f"{name}.md"
    text = page(
        args.run_dir, args.command, args.load, ROOT / "docs" / "results" / name, name, args.answer
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(out)


if __name__ == "__main__":
    main()
