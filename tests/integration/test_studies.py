"""Ready studies under configs/studies/: valid configs, documented, and their quick size runs
offline.

Each study's YAML header lists its quick size as ``# quick: key.path=value`` lines (one
``--set`` each). The quick size runs on the shared local Parquet files within minutes on
2 CPU cores; where a study's dataset is not in the shared folder, the quick lines swap
it explicitly, and the run must then name the dataset actually used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.support.paths import ROOT, SHARED
from xaiarena.config import load_config
from xaiarena.registry import EXPLAINERS

STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
EXPECTED = {
    "diet_vs_gradcam_images",
    "fashion_mnist_captum_quantus",
    "lime_vs_gradcam_agreement",
    "voc_foreground",
    "dissect_offline",
    "clip_dissect_resnet18",
    "diet_vs_ig_text",
}


def quick_overrides(path: Path) -> list[str]:
    """The ``# quick: key=value`` lines of a study's header, in order."""
    return [
        line.split("quick:", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# quick:")
    ]


def _id(p: Path) -> str:
    return p.stem


def test_every_study_is_there():
    assert {p.stem for p in STUDIES} >= EXPECTED


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_study_config_is_valid_full_and_quick(path):
    full = load_config(path)
    assert full.name == path.stem
    quick = quick_overrides(path)
    assert quick, f"{path.name} has no '# quick:' lines"
    cfg = load_config(path, quick)
    if _is_dissection(cfg):  # xaiarena dissect: the probe set is what must be small
        data = cfg.data[0].params
        size = cfg.dissect.n_images or data.get(f"n_{cfg.dissect.split}")
        assert size is not None and size <= 1000
    else:
        assert cfg.evaluation.n_samples <= 64  # the quick size is small


def medium_overrides(path: Path) -> list[str]:
    """The ``# medium: key=value`` lines of a study's header, in order."""
    return [
        line.split("medium:", 1)[1].strip()
        for line in path.read_text().splitlines()
        if line.startswith("# medium:")
    ]


SOURCE_STUDIES = {
    "000": "diet_vs_gradcam_images",
    "001": "diet_vs_ig_text",
    "002": "fashion_mnist_captum_quantus",
    "003": "lime_vs_gradcam_agreement",
    "004": "voc_foreground",
}


@pytest.mark.parametrize("sid, name", sorted(SOURCE_STUDIES.items()))
def test_source_study_states_its_protocol_and_medium_size(sid, name):
    """Each source study names itself, lists every difference from the source's protocol, and its
    medium lines (if any; else the full size is the medium size) give a valid config."""
    path = ROOT / "configs" / "studies" / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.study is not None and cfg.study.id == sid and cfg.study.question
    assert len(cfg.protocol) >= 3 and all(row.why for row in cfg.protocol)
    medium = medium_overrides(path)
    text = path.read_text()
    assert medium or "medium size is the full size" in " ".join(text.replace("#", " ").split())
    if medium:
        load_config(path, medium)


def _is_dissection(cfg) -> bool:
    """A study run by ``xaiarena dissect`` (a dissect: section and nothing to explain)."""
    return cfg.dissect is not None and not cfg.explainers


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_study_is_documented(path):
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "studies.md").read_text()
    assert path.name in readme and path.name in docs
    assert "Question:" in path.read_text()  # each header says what question it answers


def _quick_data_names(path: Path) -> list[str]:
    cfg = load_config(path, quick_overrides(path))
    return [d.key for d in cfg.data]


def test_quick_sizes_only_use_shared_datasets():
    """A dataset the shared folder lacks must have been swapped by the quick lines."""
    if not SHARED.exists():
        pytest.skip("shared datasets folder not found")
    import inspect

    from xaiarena.registry import DATASETS

    for path in STUDIES:
        for d in load_config(path, quick_overrides(path)).data:
            if "data_dir" not in inspect.signature(DATASETS.get(d.name)).parameters:
                continue  # built in (hard_mnist): generated, no files
            assert (SHARED / d.name).is_dir(), (
                f"{path.name}: quick size uses '{d.name}', not in {SHARED}"
            )


# --------------------------------------------------------------------------- integration


def _check_voc(run_dir: Path) -> None:
    fg = pd.read_csv(run_dir / "results" / "fg_bg_tests.csv")
    g = fg[fg["explainer"] == "gradcam"].set_index("test")
    # the source's area filter (aeroplane >= 20% of the image) keeps 10 of the 43 shared images
    assert set(g.index) == {"t", "wilcoxon"} and (g["n"] == 10).all()
    # measured (class 404 airliner, min-max maps): t(9) = 18.99, p = 1.4e-8; Wilcoxon W = 0,
    # p = 0.002 (the smallest p of 10 pairs); d_z = 6.0
    assert (
        g.loc["t", "statistic"] > 5
        and g.loc["t", "p_value"] < 1e-4
        and g.loc["wilcoxon", "p_value"] < 0.01
    )
    assert g.loc["t", "effect_size"] > 1.0
    r = fg[(fg["explainer"] == "random") & (fg["test"] == "t")].iloc[0]
    assert abs(r["effect_size"]) < 0.5  # the calibration baseline shows no object preference
    html = (run_dir / "report.html").read_text()
    assert "Object vs background" in html and "d_z" in html and "Wilcoxon" in html
    assert (run_dir / "figures" / "d1_voc2012_seg_overlays.png").exists()
    info = json.loads((run_dir / "run.json").read_text())["datasets"]["voc2012_seg"]
    assert info["pretrained"]["pretrained"] is True and info["train_history"] == []


def _check_agreement(run_dir: Path) -> None:
    ps = pd.read_parquet(run_dir / "results" / "per_sample.parquet")
    pairs = set(ps.loc[ps["metric"] == "iou_top20pct", "explainer"])
    assert {"lime~gradcam", "lime~ablationcam", "lime~scorecam", "gradcam~scorecam"} <= pairs
    assert "lime~lime_top10" not in pairs  # the metric's explainer subset holds
    for metric, ref in (("lime_top10_iou", "lime_top10"), ("lime_top10_pm_iou", "lime_top10_pm")):
        assert set(ps.loc[ps["metric"] == metric, "explainer"]) == {
            f"{ref}~gradcam",
            f"{ref}~ablationcam",
            f"{ref}~scorecam",
        }
    assert ps["value"].dropna().between(-1, 1).all()
    # the top-10 maps are selections of the full LIME map (same seed, superpixels, perturbations)
    import torch

    from xaiarena.results import load

    res = load(run_dir)
    full, top, pm = (res.attributions(e) for e in ("lime", "lime_top10", "lime_top10_pm"))
    kept = top != 0
    assert bool(kept.any()) and torch.equal(top[kept], full[kept]) and bool((top[kept] > 0).all())
    kept_pm = pm != 0
    assert torch.equal(pm[kept_pm], full[kept_pm])


def _check_dissect_offline(run_dir: Path) -> None:
    from xaiarena.dissect import load

    res = load(run_dir)
    layers = res.layers.set_index("layer")
    # the known answer: every output neuron of the LeNet gets its own digit (measured: 10 of 10)
    assert layers.loc["classifier.2", "own_class_rate"] >= 0.9
    assert set(res.neurons["layer"]) == {
        "features.1",
        "features.4",
        "features.7",
        "classifier.1",
        "classifier.2",
    }
    assert (run_dir / "dissect.html").exists() and len(
        list((run_dir / "figures").glob("dissect_*.png"))
    ) == 2


CHECKS = {
    "voc_foreground": _check_voc,
    "lime_vs_gradcam_agreement": _check_agreement,
    "dissect_offline": _check_dissect_offline,
}


def _run_dissection_study(path: Path, out: Path) -> None:
    from xaiarena.dissect import run as dissect
    from xaiarena.errors import ConfigError

    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        res = dissect(path, out=out, overrides=quick_overrides(path), show_progress=False)
    except ImportError as exc:  # e.g. torchvision for clip_dissect_resnet18
        pytest.skip(f"{path.name} needs a package that is not importable here: {exc}")
    except ConfigError as exc:
        if any(key == "dissect.scorer.model" for key, _ in exc.problems):
            pytest.skip(f"{path.name}: no CLIP model here ({exc.problems[0][1][:120]}...)")
        raise
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    print(f"\n{path.stem} quick size: {seconds:.1f} s")
    assert list(res.info["datasets"]) == _quick_data_names(path)
    assert len(res.neurons) and res.neurons["concept"].astype(str).str.len().gt(0).all()
    if path.stem in CHECKS:
        CHECKS[path.stem](res.run_dir)
    assert seconds < 600


@pytest.mark.parametrize("path", STUDIES, ids=_id)
def test_quick_study_runs_offline(path, tmp_path, monkeypatch):
    if not SHARED.exists():
        pytest.skip("shared datasets folder not found")
    raw = load_config(path)
    if _is_dissection(raw):
        monkeypatch.setenv("XAIARENA_DATA_DIR", str(SHARED))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        _run_dissection_study(path, tmp_path / "run")
        return
    pytest.importorskip("efficientnet_lite_pytorch")
    missing = [e.name for e in raw.explainers if e.name not in EXPLAINERS]
    if missing:
        pytest.skip(f"explainer(s) {missing} not registered")
    from xaiarena.runner import run

    monkeypatch.setenv("XAIARENA_DATA_DIR", str(SHARED))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = (
        torch.get_num_threads()
    )  # the quick sizes pin training.num_threads=1: restore afterwards
    start = time.perf_counter()
    try:
        res = run(path, out=tmp_path / "run", overrides=quick_overrides(path), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    print(f"\n{path.stem} quick size: {seconds:.1f} s")
    names = _quick_data_names(path)
    assert list(res.info["datasets"]) == names  # the datasets actually used, by their own names
    assert set(res.summary["dataset"]) == set(names)
    html = res.report_path.read_text()
    for n in names:
        assert n in html
    assert len(res.summary) and res.summary["n"].min() >= 1
    if path.stem in CHECKS:
        CHECKS[path.stem](res.run_dir)
    _check_results_page(path, res.run_dir, tmp_path / "page")
    assert seconds < 600


def _check_results_page(path: Path, run_dir: Path, out: Path) -> None:
    """benchmarks/study_page.py turns the run into a results page with the study's own analyses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "study_page", ROOT / "benchmarks" / "study_page.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.page(run_dir, "xaiarena run ...", "0.1 -> 0.2", out, "figs", answer="ours")
    cfg = load_config(path)
    assert "**What we found.** ours" in text and "## How this was run" in text
    assert ("## Protocol: the source and ours" in text) is bool(cfg.protocol)
    analyses = set(cfg.study.analyses) if cfg.study is not None else set()
    assert ("## Improvement:" in text) is ("improvement" in analyses)
    assert ("## Agreement bands" in text) is ("agreement_bands" in analyses)
    assert "= <" not in text
