"""Sample shards (evaluation.shard_size, evaluation.map_dtype): maps and scores cached per shard,
results independent of the shard size, resume by shard."""

from __future__ import annotations

import json

import pytest
import torch

import xaiarena
from xaiarena.config import load_config
from xaiarena.engine.cache import Cache
from xaiarena.engine.shards import ShardedMaps, shard_bounds, shard_name
from xaiarena.errors import ConfigError, RunError

TINY = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "training.num_threads": 1,
    "evaluation.n_samples": 10,
    "evaluation.batch_size": 3,
}
TINY_DIET = {
    "name": "diet",
    "n_train": 48,
    "rounds": 1,
    "mask_max_epochs": 1,
    "model_max_epochs": 1,
    "test_max_steps": 3,
}
#: every place where a metric or an explainer sees more than one sample: DiET's set (its
#: test-time masks of the whole set), an explainer's postprocess over the set, a metric that
#: normalises over the set, focus's mosaics (partners from the whole set), agreement across
#: explainers, a re-explaining metric, curves, and the meta-evaluation's sample choice
WIDE = {
    "name": "t",
    "data": "hard_mnist",
    "model": "lenet",
    "explainers": [
        "saliency",
        "random",
        {"name": "smoothgrad", "nt_samples": 3},
        {
            "name": "saliency",
            "label": "sal_set",
            "postprocess": ["normalise_by_max_over_set"],
            "reexplain_postprocess": [],
        },
        TINY_DIET,
    ],
    "metrics": [
        "sparseness",
        {"name": "deletion", "steps": 5},
        {"name": "sparseness", "label": "sp_set", "normalise": "normalise_by_max_over_set"},
        {"name": "max_sensitivity", "nr_samples": 2, "explainers": ["saliency", "random"]},
        {"name": "focus", "explainers": ["saliency", "random"]},
        {"name": "agreement_spearman", "reference": "saliency"},
    ],
}
RESULTS = ("per_sample.parquet", "curves.parquet", "meta_per_sample.parquet", "meta.csv")


def _cfg(explainers, metrics):
    return {
        "name": "t",
        "data": "hard_mnist",
        "model": "lenet",
        "explainers": explainers,
        "metrics": metrics,
    }


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "many"])
def test_shard_size_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="evaluation.shard_size") as err:
        load_config(None, {"evaluation.shard_size": bad})
    assert repr(bad) in str(err.value) and "integer >= 1" in str(err.value)


def test_shard_size_and_map_dtype_defaults():
    ev = load_config(None).evaluation
    assert ev.shard_size == 512 and ev.map_dtype == "float32"
    with pytest.raises(ConfigError, match="evaluation.map_dtype"):
        load_config(None, {"evaluation.map_dtype": "int8"})


# --------------------------------------------------------------------------- shards


def test_shard_bounds():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_bounds(10, 64) == [(0, 10)]
    assert shard_bounds(6, 3) == [(0, 3), (3, 6)]
    assert shard_bounds(0, 5) == [(0, 0)]
    with pytest.raises(ValueError):
        shard_bounds(5, 0)


def test_sharded_maps_read_like_the_tensor(tmp_path):
    cache = Cache(tmp_path / "cache", tmp_path)
    full = torch.randn(10, 4, 5)
    bounds = shard_bounds(10, 3)
    paths = []
    for b in bounds:
        path = cache.path("attributions", shard_name("x-0", b, ".pt"))
        cache.save_torch(path, full[b[0] : b[1]].clone())
        paths.append(path)
    maps = ShardedMaps(cache, paths, bounds, "'x' on f_b")
    assert len(maps) == 10 and maps.shape == full.shape
    assert torch.equal(maps.full(), full)
    assert torch.equal(maps[2:8], full[2:8]) and torch.equal(maps[7:7], full[7:7])
    assert torch.equal(maps[::4], full[::4])
    rows = torch.tensor([9, 0, 4, 3, 4])
    assert torch.equal(maps[rows], full[rows])
    with pytest.raises(IndexError):
        maps[rows > 3]  # a mask of another length than the maps'
    mask = torch.arange(10) % 3 == 0
    assert torch.equal(maps[mask], full[mask])
    assert torch.equal(maps[5], full[5]) and torch.equal(maps[-1], full[-1])
    assert torch.equal(maps[6, :2], full[6, :2]) and torch.equal(maps[1:5, 1], full[1:5, 1])
    paths[1].write_bytes(b"broken")
    with pytest.raises(RunError, match="samples 3..5"):
        maps[4]


# --------------------------------------------------------------------------- identity


@pytest.mark.integration
def test_results_do_not_depend_on_the_shard_size(tmp_path):
    """10 samples in 4 shards of 3 or in one of 64: every result table byte-identical, with
    every metric and explainer that sees more than one sample (WIDE)."""
    over = {**TINY, "evaluation.meta": True, "evaluation.meta_samples": 4}
    runs = {}
    for size in (3, 64):
        runs[size] = xaiarena.run(
            WIDE,
            out=tmp_path / str(size),
            overrides={**over, "evaluation.shard_size": size},
            show_progress=False,
        )
    for name in RESULTS:
        a = (tmp_path / "3" / "results" / name).read_bytes()
        b = (tmp_path / "64" / "results" / name).read_bytes()
        assert a == b, name
    sharded, whole = runs[3].info, runs[64].info
    assert sharded["datasets"]["hard_mnist"]["evaluation_shard_size"] == 3
    st = sharded["stages"]
    assert st["hard_mnist/explain/saliency"]["shards"] == 4
    assert st["hard_mnist/metric/sparseness"]["shards"] == 4
    assert st["hard_mnist/metric/sp_set"]["shards"] == 1  # normalises over the set: one call
    assert whole["stages"]["hard_mnist/explain/saliency"]["shards"] == 1
    files = sharded["datasets"]["hard_mnist"]["explainers"]["saliency"]["views"]["f_b"]["files"]
    assert [f.rsplit(".", 2)[1] for f in files] == ["0-3", "3-6", "6-9", "9-10"]
    assert torch.equal(runs[3].attributions("diet"), runs[64].attributions("diet"))


def test_shard_size_is_rounded_up_to_whole_batches(tmp_path):
    res = xaiarena.run(
        _cfg(["saliency"], ["sparseness"]),
        out=tmp_path / "r",
        overrides={**TINY, "evaluation.batch_size": 4, "evaluation.shard_size": 5},
        show_progress=False,
    )
    assert res.info["datasets"]["hard_mnist"]["evaluation_shard_size"] == 8
    assert res.info["stages"]["hard_mnist/explain/saliency"]["shards"] == 2


def test_half_precision_maps_are_stored_and_scored_rounded(tmp_path):
    cfg = _cfg(["saliency"], ["sparseness"])
    full = xaiarena.run(cfg, out=tmp_path / "f32", overrides=TINY, show_progress=False)
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        out = tmp_path / dtype
        half = xaiarena.run(
            cfg, out=out, overrides={**TINY, "evaluation.map_dtype": dtype}, show_progress=False
        )
        entry = half.info["datasets"]["hard_mnist"]["explainers"]["saliency"]["views"]["f_b"]
        stored = torch.load(out / entry["files"][0], weights_only=True)
        assert stored.dtype == torch_dtype
        maps = half.attributions("saliency")
        assert maps.dtype == torch.float32
        assert torch.equal(maps, full.attributions("saliency").to(torch_dtype).float())
        manifest = json.loads((out / (entry["files"][0] + ".manifest.json")).read_text())
        assert manifest["inputs"]["map_dtype"] == dtype
        a, b = full.per_sample["value"], half.per_sample["value"]
        assert len(a) == len(b) and ((a - b).abs() < 1e-2).all()
