"""The HTML report, built from a synthetic run directory with the runner's layout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xaiarena import stats
from xaiarena.report import ReportError, build_report

XSS = "<script>alert(1)</script>"

METRICS_META = {
    "deletion_auc": {
        "category": "faithfulness",
        "higher_is_better": False,
        "value_range": [0.0, 1.0],
        "description": "Area under the deletion curve.",
    },
    "insertion_auc": {
        "category": "faithfulness",
        "higher_is_better": True,
        "value_range": [0.0, 1.0],
        "description": "Area under the insertion curve.",
    },
    "max_sensitivity": {
        "category": "robustness",
        "higher_is_better": False,
        "value_range": [0.0, float("inf")],
        "description": "Worst-case change.",
    },
    "sparseness": {
        "category": "complexity",
        "higher_is_better": True,
        "value_range": [0.0, 1.0],
        "description": "Gini index of the map.",
    },
    "pointing_game": {
        "category": "localisation",
        "higher_is_better": True,
        "value_range": [0.0, 1.0],
        "description": "Peak inside the mask & <b>bold</b>.",
    },
}
# explainer -> (quality shift, explains)
EXPLAINERS = {
    "gradcam": (0.25, "f_b", "cam"),
    "integrated_gradients": (0.2, "f_b", "gradient"),
    "saliency": (0.0, "f_b", "gradient"),
    "diet": (0.3, "f_s", "learned"),
    XSS: (0.05, "f_b", "other"),
}


AGREEMENT_META = {
    "agreement_spearman": {
        "category": "agreement",
        "higher_is_better": True,
        "value_range": [-1.0, 1.0],
        "description": "Rank correlation.",
    }
}


def _superpixel_maps(rng, k: int, h: int, w: int, n_positive: int = 12) -> np.ndarray:
    """LIME-like maps: 4x4 blocks of 7x7 pixels, each block one coefficient, ``n_positive`` of them
    > 0."""
    maps = np.empty((k, h, w), dtype=np.float32)
    for i in range(k):
        coef = -rng.uniform(0.1, 1.0, size=16)
        coef[rng.permutation(16)[:n_positive]] *= -1
        maps[i] = np.kron(coef.reshape(4, 4), np.ones((h // 4, w // 4)))
    return maps


def make_run_dir(
    root: Path, datasets=("hard_mnist", "toy_rgb"), n_eval=40, seed=0, agreement=False, lime=False
) -> Path:
    """A run directory as the runner writes it, filled with random (but structured) numbers.
    ``agreement``: add an agreement metric, scored per pair of explainers (``a~b``). ``lime``: add a
    superpixel LIME explainer (``lime_top10``, registered name ``lime``) and name the samples by
    file."""
    rng = np.random.default_rng(seed)
    explainers_of = dict(EXPLAINERS)
    if lime:
        explainers_of["lime_top10"] = (0.1, "f_b", "perturbation")
    meta = {**METRICS_META, **(AGREEMENT_META if agreement else {})}
    root.mkdir(parents=True, exist_ok=True)
    (root / "results" / "examples").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        "name: synthetic\nseed: 0\nexplainers:\n  - gradcam\n  - name: '" + XSS + "'\n"
    )
    rows, curves, ds_info = [], [], {}
    for di, ds in enumerate(datasets):
        rgb = ds == "toy_rgb"
        c, h, w = (3, 16, 16) if rgb else (1, 28, 28)
        metrics = [m for m in METRICS_META if not (rgb and m == "pointing_game")]
        base = rng.normal(size=n_eval)
        for e, (shift, _, _) in explainers_of.items():
            for m in metrics:
                hib = METRICS_META[m]["higher_is_better"]
                if m == "pointing_game":
                    v = (rng.uniform(size=n_eval) < 0.4 + shift).astype(float)
                else:
                    v = (
                        0.5
                        + 0.1 * base
                        + (shift if hib else -shift) * 0.3
                        + rng.normal(0, 0.08, n_eval)
                    )
                if m == "max_sensitivity" and e == "saliency":
                    v[:3] = np.nan  # a metric that failed on some samples
                rows.append(
                    pd.DataFrame(
                        {
                            "dataset": ds,
                            "explainer": e,
                            "metric": m,
                            "sample_id": np.arange(n_eval) + 1000 * di,
                            "value": v,
                        }
                    )
                )
            for m, hib in (("deletion", False), ("insertion", True)):
                x = np.linspace(0, 1, 11)
                y = np.exp(-3 * x * (1 + shift)) if not hib else 1 - np.exp(-3 * x * (1 + shift))
                se = 0.03 * np.ones_like(x)
                curves.append(
                    pd.DataFrame(
                        {
                            "dataset": ds,
                            "explainer": e,
                            "metric": m,
                            "x": x,
                            "mean": y,
                            "ci_low": y - se,
                            "ci_high": y + se,
                        }
                    )
                )
        if agreement:
            for pair, level in (("gradcam~saliency", 0.2), ("gradcam~integrated_gradients", 0.6)):
                rows.append(
                    pd.DataFrame(
                        {
                            "dataset": ds,
                            "explainer": pair,
                            "metric": "agreement_spearman",
                            "sample_id": np.arange(n_eval) + 1000 * di,
                            "value": level + rng.normal(0, 0.05, n_eval),
                        }
                    )
                )
        k = 8
        images = rng.integers(0, 256, size=(k, c, h, w), dtype=np.uint8)
        labels = rng.integers(0, 4, size=k)
        preds = labels.copy()
        preds[-2:] = (labels[-2:] + 1) % 4
        arrays = {
            "images": images,
            "labels": labels,
            "preds": preds,
            "sample_ids": np.arange(k) + 1000 * di,
            "class_names": np.array(["zero", "one", "two", "<three>"]),
        }
        if not rgb:
            masks = np.zeros((k, h, w), dtype=bool)
            masks[:, 8:18, 6:20] = True
            arrays["masks"] = masks
        for e in explainers_of:
            arrays[f"attr__{e}"] = rng.normal(size=(k, h, w)).astype(np.float32)
        if lime:
            arrays["attr__lime_top10"] = _superpixel_maps(rng, k, h, w)
            arrays["sample_names"] = np.array([f"img_{1000 * di + j:04d}.jpg" for j in range(k)])
        np.savez_compressed(root / "results" / "examples" / f"{ds}.npz", **arrays)
        info = {
            "model": "lenet" if not rgb else "resnet_tiny",
            "num_classes": 4,
            "input_shape": [c, h, w],
            "n_train": 3000,
            "n_test": 200,
            "n_eval": n_eval,
            "test_accuracy": 0.9 - 0.1 * di,
            "train_history": [
                {
                    "epoch": i + 1,
                    "loss": 1.0 / (i + 1),
                    "train_accuracy": 0.6 + 0.1 * i,
                    "val_accuracy": 0.55 + 0.1 * i,
                }
                for i in range(3)
            ],
            "explainers": {
                e: {"seconds": 0.5 + i, "explains": ex, "family": fam}
                for i, (e, (_, ex, fam)) in enumerate(explainers_of.items())
            },
        }
        if lime:
            info["explainers"]["lime_top10"]["name"] = "lime"
            info["sample_names"] = {
                str(1000 * di + j): f"img_{1000 * di + j:04d}.jpg" for j in range(n_eval)
            }
        if not rgb:
            info["diet"] = {
                "test_agreement_fs_fb": 0.953,
                "train_masked_accuracy_fs": 0.91,
                "test_accuracy_fs": 0.88,
                "test_accuracy_fb": 0.9,
                "train_mask_l0_fraction": 0.12,
                "n_train": 1000,
                "seed": 818069386,
            }
        ds_info[ds] = info
    per_sample = pd.concat(rows, ignore_index=True)
    per_sample.to_parquet(root / "results" / "per_sample.parquet", index=False)
    pd.concat(curves, ignore_index=True).to_parquet(
        root / "results" / "curves.parquet", index=False
    )
    hib = {m: v["higher_is_better"] for m, v in meta.items()}
    models = {d: v["model"] for d, v in ds_info.items()}
    stats.summarize(per_sample, hib, seed=seed, models=models, n_boot=500).to_csv(
        root / "results" / "summary.csv", index=False
    )
    stats.paired_tests(per_sample).to_csv(root / "results" / "tests.csv", index=False)
    run = {
        "name": "synthetic & <test>",
        "seed": seed,
        "device": "cpu",
        "versions": {"xaiarena": "0.1.0", "torch": "2.x"},
        "config_hash": "abc123",
        "stages": {
            f"{d}/{s}": {"seconds": 1.5 * (i + 1), "cache_hit": i == 0}
            for d in datasets
            for i, s in enumerate(("data", "train", "explain", "metrics"))
        },
        "datasets": ds_info,
        "metrics_meta": meta,
    }
    (root / "run.json").write_text(json.dumps(run, indent=2))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="module")
def built(run_dir):
    path = build_report(run_dir)
    return path, path.read_text(encoding="utf-8")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts += 1


def test_report_written_with_tables_and_figures(run_dir, built):
    path, html = built
    assert path == run_dir / "report.html"
    figs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    for k, ds in ((1, "hard_mnist"), (2, "toy_rgb")):
        for kind in ("bars", "radar", "curves", "heatmaps", "training"):
            assert f"d{k}_{ds}_{kind}.png" in figs
    assert all((run_dir / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)
    parser = _Collector()
    parser.feed(html)
    imgs = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(imgs) == len(figs) and all(s.startswith("data:image/png;base64,") for s in imgs)
    # the table: every metric with its direction arrow, every explainer
    summary = pd.read_csv(run_dir / "results" / "summary.csv")
    for m, v in METRICS_META.items():
        assert re.search(
            re.escape(m) + r' <span class="arrow"[^>]*>' + ("↑" if v["higher_is_better"] else "↓"),
            html,
        )
    for e in ("gradcam", "integrated_gradients", "saliency", "diet"):
        assert f"<th>{e}</th>" in html
    # numbers come from summary.csv: the best deletion_auc mean is shown with its CI
    sub = summary[(summary.dataset == "hard_mnist") & (summary.metric == "deletion_auc")]
    best = sub.loc[sub["mean"].idxmin()]
    assert f'<span class="mean">{best["mean"]:.3f}</span>'.replace("-", "−") in html
    assert f"[{best.ci_low:.3f}, {best.ci_high:.3f}]".replace("-", "−") in html
    assert 'class="cell best"' in html and "significantly worse than the best" in html
    assert "DiET model faithfulness" in html and "95.3%" in html
    assert (
        "Agreement of f_s with f_b" in html
        and "f_s agrees with f_b on 95.3% of predictions" in html
    )
    assert "test_agreement_fs_fb" not in html  # labelled, not the raw key
    assert "818069386" not in html  # bookkeeping (the fit seed) stays in run.json
    assert 'title="DiET&#39;s distilled model">f_s</span>' in html
    assert "Across datasets" in html and "all metrics" in html


def test_report_escapes_text_from_data(built):
    _, html = built
    parser = _Collector()
    parser.feed(html)
    assert parser.scripts == 0
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "synthetic &amp; &lt;test&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html


def test_report_is_self_contained(built):
    _, html = built
    parser = _Collector()
    parser.feed(html)
    for tag, attrs in parser.tags:
        for key in ("src", "href"):
            v = attrs.get(key) or ""
            assert not re.match(r"\s*(https?:)?//", v), (tag, key, v[:80])
            if key == "href" and key in attrs:
                assert v.startswith("#"), v
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html


def test_rebuild_is_deterministic(run_dir, built):
    _, first = built
    figs = {p.name: p.read_bytes() for p in (run_dir / "figures").glob("*.png")}
    second = build_report(run_dir).read_text(encoding="utf-8")
    assert first == second
    assert figs == {p.name: p.read_bytes() for p in (run_dir / "figures").glob("*.png")}


def test_reading_is_generated_from_numbers(run_dir, built):
    _, html = built
    summary = pd.read_csv(run_dir / "results" / "summary.csv")
    tests = pd.read_csv(run_dir / "results" / "tests.csv")
    sub = summary[summary.dataset == "hard_mnist"]
    ranks = stats.rank(sub, tests[tests.dataset == "hard_mnist"])
    for metric, grp in ranks.groupby("metric"):
        best = grp.iloc[0]["explainer"]
        if best == XSS:
            continue
        hib = METRICS_META[metric]["higher_is_better"]
        assert (
            f"{metric} ({'higher' if hib else 'lower'} is better): {best} has the best mean" in html
        )
    assert "lenet reaches 90.0% test accuracy" in html


@pytest.mark.integration
def test_single_dataset_minimal_run(tmp_path):
    """Optional files missing: no curves, examples, tests or config; one dataset."""
    root = make_run_dir(tmp_path / "run", datasets=("hard_mnist",))
    for p in ("results/curves.parquet", "results/tests.csv", "config.yaml"):
        (root / p).unlink()
    shutil.rmtree(root / "results" / "examples")
    html = build_report(root, test="both", alpha=0.01).read_text(encoding="utf-8")
    assert "paired tests were computed from" in html
    assert "Holm-adjusted paired t-test and Wilcoxon signed-rank test" in html
    assert "alpha = 0.01" in html
    assert "Across datasets" not in html
    names = {p.name for p in (root / "figures").glob("*.png")}
    assert "d1_hard_mnist_curves.png" not in names and "d1_hard_mnist_bars.png" in names


def test_missing_run_json(tmp_path):
    with pytest.raises(ReportError, match="no run.json"):
        build_report(tmp_path)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium available")
def test_renders_in_headless_chromium(run_dir, built, tmp_path):
    path, _ = built
    shot = tmp_path / "report.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        path.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("headless Chromium did not finish in 120 s")
    if not shot.exists() and proc.returncode != 0:  # the browser itself could not start here
        pytest.skip(f"headless Chromium failed to run: {proc.stderr[-500:]}")
    assert shot.stat().st_size > 10_000, proc.stderr[-2000:]
    # the report has no scripts: any console message or failed load is a defect
    problems = [
        line
        for line in proc.stderr.splitlines()
        if ":CONSOLE" in line or "Uncaught" in line or ("ERR_" in line and "report.html" in line)
    ]
    assert not problems, problems


def test_degenerate_run(tmp_path):
    """Sparse run.json, odd names, a metric with no finite score, a single-sample metric."""
    root = tmp_path / "odd"
    (root / "results").mkdir(parents=True)
    rows = []
    for i in range(6):
        rows += [
            ("d", "NA", "m", i, float(i)),
            ("d", "cost $5$", "m", i, float(i) + 0.5),
            ("d", "NA", "empty", i, np.nan),
            ("d", "cost $5$", "empty", i, 1.0),
        ]
    rows += [("d", "NA", "one", 0, 1.0), ("d", "cost $5$", "one", 0, 2.0)]
    ps = pd.DataFrame(rows, columns=stats.PER_SAMPLE_REQUIRED)
    ps.to_parquet(root / "results" / "per_sample.parquet", index=False)
    (root / "run.json").write_text(
        json.dumps({"name": "odd", "metrics_meta": {"m": {"higher_is_better": True}}})
    )
    with pytest.raises(ReportError, match="metric 'empty' has no entry"):
        build_report(root)
    meta = {
        m: {"higher_is_better": m != "one", "category": c}
        for m, c in (("m", "faithfulness"), ("empty", "robustness"), ("one", "complexity"))
    }
    (root / "run.json").write_text(json.dumps({"name": "odd", "metrics_meta": meta}))
    html = build_report(root).read_text(encoding="utf-8")
    assert "<th>NA</th>" in html and "cost $5$" in html
    summary = pd.read_parquet(root / "results" / "per_sample.parquet")  # inputs untouched
    assert len(summary) == len(ps)
    assert not (root / "results" / "summary.csv").exists()  # the report never writes results


@pytest.mark.integration
def test_agreement_pairs_get_their_own_table(tmp_path):
    """Pairs ("a~b") are not explainers: own table, not in the explainer card or the rankings."""
    run_dir = make_run_dir(tmp_path / "run", datasets=("hard_mnist",), agreement=True)
    html = build_report(run_dir).read_text(encoding="utf-8")
    main, rest = html.split("Agreement between explainers", 1)
    assert "<th>gradcam~saliency</th>" in rest and "<th>gradcam~integrated_gradients</th>" in rest
    assert "gradcam~saliency" not in main.split("<h3>Reading</h3>")[0]  # explainer card, summary
    assert "<th>gradcam~saliency</th>" not in main  # no empty rows in the main table
    assert re.search(r"<th>Pair</th>", rest) and "agreement_spearman" in rest
    lowest = re.search(r"Lowest mean rank over all metrics[^<]*", html).group(0)
    assert "~" not in lowest


def test_top_superpixels_picks_the_largest_positive_coefficients():
    from xaiarena.report.plots import top_superpixels

    coef = np.array([[0.5, -1.0, 0.2], [0.9, 0.0, 0.7]])
    a = np.kron(coef, np.ones((2, 2)))
    labels = top_superpixels(a, n_top=2)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[a == 0.9] == 1).all() and (labels[a == 0.7] == 2).all()
    assert (labels[(a != 0.9) & (a != 0.7)] == 0).all()
    assert top_superpixels(a, n_top=10).max() == 4  # only four are positive
    assert top_superpixels(-np.abs(a)).max() == 0


@pytest.mark.integration
def test_lime_superpixels_figure_and_per_image_names(tmp_path):
    """A run with a superpixel LIME entry gets the top-10 superpixel figure; the per-image agreement
    table names each image by its file where run.json has sample names."""
    from xaiarena.report.plots import lime_superpixels

    run_dir = make_run_dir(
        tmp_path / "run", datasets=("hard_mnist",), n_eval=10, agreement=True, lime=True
    )
    html = build_report(run_dir).read_text(encoding="utf-8")
    assert "LIME superpixels" in html and "top-10 positive superpixels" in html
    assert list((run_dir / "figures").glob("*lime_superpixels.png"))
    table = html.split("Agreement per image", 1)[1].split("</table>", 1)[0]
    assert "<th>Image</th>" in table and "img_0003.jpg" in table and table.count("img_00") == 10
    # without a LIME entry or names: no figure, ids only
    plain = make_run_dir(tmp_path / "plain", datasets=("hard_mnist",), n_eval=10, agreement=True)
    html = build_report(plain).read_text(encoding="utf-8")
    assert "LIME superpixels" not in html
    assert "<th>Image</th>" not in html.split("Agreement per image", 1)[1].split("</table>", 1)[0]
    # the figure draws yellow boundaries only where LIME selected superpixels
    ex = dict(np.load(run_dir / "results" / "examples" / "hard_mnist.npz"))
    assert lime_superpixels(ex, ["lime_top10"]) is not None
    assert lime_superpixels(ex, ["not_there"]) is None


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (
            {
                "mask_unit": "word",
                "train_mask_l0_fraction": 0.997,
                "test_stopped_at_limit_fraction": 0.0,
            },
            ["keep 99.7% of the words", "lr_words"],
        ),
        (
            {"train_mask_l0_fraction": 0.01, "test_stopped_at_limit_fraction": 0.0},
            ["keep only 1.0% of the pixels", "collapsed"],
        ),
        (
            {
                "train_mask_l0_fraction": 0.4,
                "test_stopped_at_limit_fraction": 0.25,
                "test_time": {"steps_max": 1980},
            },
            [
                "reached its safety limit (1980 steps) before its stopping rule for 25.0% of the "
                "samples"
            ],
        ),
        (
            {
                "train_mask_l0_fraction": 0.4,
                "test_stopped_at_limit_fraction": 0.0,
                "test_seed_agreement": 0.31,
                "test_seed_check": {"n_samples": 16},
            },
            [
                "depend on its random seed",
                "16 evaluation samples' maps",
                "Spearman correlation of 0.31",
            ],
        ),
        (
            {
                "train_mask_l0_fraction": 0.4,
                "test_stopped_at_limit_fraction": 0.0,
                "test_seed_agreement": 0.8,
            },
            [],
        ),
        # a run directory written before issue 23 (the old per-step rule and its horizon)
        (
            {"train_mask_l0_fraction": 0.4, "test_converged_fraction": 0.02},
            ["converged for only 2.0% of the samples"],
        ),
        ({"train_mask_l0_fraction": 0.4, "test_converged_fraction": 0.6}, []),
        ({}, []),
    ],
)
def test_diet_fit_reports_that_say_little_are_flagged(report, expected):
    """The report warns when DiET's training masks kept (nearly) everything or nothing, when
    test-time optimisations stopped at the safety limit instead of by their rule, or when two seeds'
    maps agree poorly; a sound fit gets no caution."""
    from xaiarena.report.narrative import learned_cautions

    text = " ".join(learned_cautions(report))
    assert all(e in text for e in expected) and (bool(text) is bool(expected)), text


def make_replicate_run(root: Path, seeds=(0, 7, 9), only_correct=True) -> Path:
    """The synthetic run of :func:`make_run_dir` as a replicated run: every seed scored the same
    samples (scores shifted per seed), with the tables the runner writes for replicates."""
    root = make_run_dir(root, datasets=("hard_mnist",))
    one = pd.read_parquet(root / "results" / "per_sample.parquet")
    rng = np.random.default_rng(1)
    parts = []
    for r, seed in enumerate(seeds):
        shift = {e: rng.normal(0, 0.02) for e in one.explainer.unique()}
        parts.append(one.assign(replicate=r, seed=seed, value=one.value + one.explainer.map(shift)))
    ps = pd.concat(parts, ignore_index=True)[
        ["dataset", "replicate", "seed", *stats.PER_SAMPLE_REQUIRED[1:]]
    ]
    ps.to_parquet(root / "results" / "per_sample.parquet", index=False)
    run = json.loads((root / "run.json").read_text())
    hib = {m: v["higher_is_better"] for m, v in run["metrics_meta"].items()}
    for name, frame in stats.result_tables(
        ps, hib, models={"hard_mnist": "lenet"}, replicates=True
    ).items():
        frame.to_csv(root / "results" / f"{name}.csv", index=False)
    info = run["datasets"]["hard_mnist"]
    run["replicate_seeds"] = list(seeds)
    run["units"] = {
        f"hard_mnist#r{r}": {
            **info,
            "replicate": r,
            "seed": s,
            **({"samples_correct_under_seeds": list(seeds)} if only_correct else {}),
        }
        for r, s in enumerate(seeds)
    }
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_replicated_run_says_what_its_intervals_count(tmp_path):
    root = make_replicate_run(tmp_path / "run")
    summary = pd.read_csv(root / "results" / "summary.csv")
    assert (summary.n_replicates == 3).all() and (summary.n == summary.n_samples).all()
    assert set(summary.n_samples) == {40, 37}  # saliency's max_sensitivity failed on 3 samples
    html = build_report(root).read_text(encoding="utf-8")
    text = " ".join(html.split())
    assert "3 replicates: the model was retrained with seeds [0, 7, 9]" in text
    assert "the same 40 evaluation samples" in text
    assert "classifies correctly" in text  # the only_correct rule is stated
    assert "counts both sources of variance" in text
    assert "95% intervals of the mean over evaluation samples × 3 retrained models" in text
    assert 'title="40 samples × 3 replicates' in html and 'title="n = ' not in html
    assert "Stability across retrained models" in text
    # the default test (t) can decide: no word about the Wilcoxon test
    assert "not informative" not in text
    # test both: a Wilcoxon over 3 replicates cannot reach alpha; the report says what decides
    from xaiarena.report.html import _test_notes
    from xaiarena.report.loading import load_run

    data = load_run(root)
    both = " ".join(_test_notes(data, 0.05, "both"))
    assert (
        "The Wilcoxon signed-rank test over replicates cannot give a p-value below 0.25 "
        "with 3 replicates" in both
    ) and "rests on the paired t-test alone" in both
    assert "no difference can be called significant by it" in " ".join(
        _test_notes(data, 0.05, "wilcoxon")
    )
    assert _test_notes(data, 0.05, "t") == [] and _test_notes(data, 0.3, "both") == []
    # without only_correct the note says nothing about correct predictions
    plain = make_replicate_run(tmp_path / "plain", only_correct=False)
    assert "classifies correctly" not in " ".join(load_run(plain).notes)


def test_a_wilcoxon_on_too_few_images_is_not_printed():
    from xaiarena.report import fgbg

    rows = []
    for e, shift in (("a", 1.0), ("b", 0.0)):
        for i in range(4):  # 4 images: the smallest possible two-sided Wilcoxon p is 0.125
            rows += [
                ("d", e, "fg_mean", i, 2.0 + shift + 0.1 * i),
                ("d", e, "bg_mean", i, 1.0 + 0.05 * i),
            ]
    ps = pd.DataFrame(rows, columns=stats.PER_SAMPLE_REQUIRED)
    sec = fgbg.section(ps, "d", None, ["a", "b"], lambda *a: None, "p", alpha=0.05)
    a = next(r for r in sec["rows"] if r["explainer"] == "a")
    assert (
        a["p_w"] == "–"
        and "not informative with 4 images (smallest possible p = 0.125" in a["w_note"]
    )
    assert a["significant"]  # the t-test decides alone
