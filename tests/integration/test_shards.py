"""Sample shards (evaluation.shard_size, evaluation.map_dtype): maps and scores cached per shard,
results independent of the shard size, resume by shard."""

from __future__ import annotations

import json

import pytest
import torch

import xaiarena
from tests.support.runs import TINY_DIET
from tests.support.runs import config as _cfg
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


# --------------------------------------------------------------------------- resume by shard


class _Interrupted(Exception):
    pass


def _counting(monkeypatch, cls, method, fail_after=None):
    """Count the calls of ``cls.method`` (one per shard here: batch size = shard size); raise
    on call ``fail_after + 1`` (a run killed after ``fail_after`` shards)."""
    calls = []
    original = getattr(cls, method)

    def wrapped(self, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise _Interrupted(f"killed after {fail_after} shards")
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, wrapped)
    return calls


def test_a_run_killed_mid_explainer_resumes_with_its_unfinished_shards(tmp_path, monkeypatch):
    from xaiarena.explainers.gradients import SaliencyExplainer

    cfg = _cfg(["saliency"], ["sparseness"])
    over = {**TINY, "evaluation.shard_size": 3}  # 4 shards of one batch each
    ref = xaiarena.run(cfg, out=tmp_path / "ref", overrides=over, show_progress=False)
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        _counting(m, SaliencyExplainer, "explain", fail_after=2)
        with pytest.raises(_Interrupted):
            xaiarena.run(cfg, out=out, overrides=over, show_progress=False)
    done = sorted(p.name for p in (out / "cache" / "attributions" / "hard_mnist").glob("*.pt"))
    assert [n.rsplit(".", 2)[1] for n in done] == ["0-3", "3-6"]
    with monkeypatch.context() as m:
        calls = _counting(m, SaliencyExplainer, "explain")
        res = xaiarena.run(cfg, out=out, overrides=over, show_progress=False)
    assert len(calls) == 2  # shards 6-9 and 9-10 only
    st = res.info["stages"]["hard_mnist/explain/saliency"]
    assert (st["shards"], st["shards_cached"], st["cache_hit"]) == (4, 2, False)
    for name in ("per_sample.parquet", "curves.parquet"):
        assert (out / "results" / name).read_bytes() == (
            tmp_path / "ref" / "results" / name
        ).read_bytes()
    assert torch.equal(res.attributions("saliency"), ref.attributions("saliency"))


def test_a_run_killed_mid_metric_resumes_with_its_unfinished_shards(tmp_path, monkeypatch):
    from xaiarena.metrics.faithfulness import Deletion

    cfg = _cfg(["saliency", "random"], [{"name": "deletion", "steps": 4}])
    over = {**TINY, "evaluation.shard_size": 3}
    xaiarena.run(cfg, out=tmp_path / "ref", overrides=over, show_progress=False)
    out = tmp_path / "r"
    with monkeypatch.context() as m:
        _counting(m, Deletion, "evaluate", fail_after=3)
        with pytest.raises(_Interrupted):
            xaiarena.run(cfg, out=out, overrides=over, show_progress=False)
    with monkeypatch.context() as m:
        calls = _counting(m, Deletion, "evaluate")
        res = xaiarena.run(cfg, out=out, overrides=over, show_progress=False)
    assert len(calls) == 1  # the last shard only
    st = res.info["stages"]["hard_mnist/metric/deletion"]
    assert (st["shards"], st["shards_cached"]) == (4, 3)
    assert res.info["stages"]["hard_mnist/explain/saliency"]["cache_hit"]
    for name in ("per_sample.parquet", "curves.parquet"):
        assert (out / "results" / name).read_bytes() == (
            tmp_path / "ref" / "results" / name
        ).read_bytes()


def test_progress_lines_show_shards_done_and_total():
    from xaiarena.engine.context import StageRecorder

    lines: list[str] = []
    rec = StageRecorder(lines.append)
    for key, info in [
        ("u/explain/a", {"cache_hit": False, "shards": 4, "shards_cached": 1}),
        ("u/explain/b", {"cache_hit": True, "shards": 4, "shards_cached": 4}),
        ("u/metric/m", {"cache_hit": True, "shards": 1, "shards_cached": 1}),
        ("u/metric/n", {"cache_hit": False, "shards": 1, "shards_cached": 0}),
    ]:
        with rec.stage(key) as st:
            st.update(info)
    assert lines[0].endswith("(4/4 shards: 3 computed, 1 cached)")
    assert lines[1].endswith("(4/4 shards, cached)")
    assert lines[2].endswith("s (cached)") and lines[3].endswith("s")


def test_a_long_stage_says_its_shards_done_every_so_often(monkeypatch):
    from xaiarena.engine import shards

    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0])
    monkeypatch.setattr(shards.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    tick = shards.ShardProgress("u/explain/a@f_b", 5, lines.append)
    for _ in range(4):
        tick.tick()
    assert lines == [
        "[xaiarena] u/explain/a@f_b: 2/5 shards done",
        "[xaiarena] u/explain/a@f_b: 4/5 shards done",
    ]


def _record_reads(monkeypatch, folder: str) -> list[tuple[str, int]]:
    """(file name, length) of every cached object read from the cache folder ``folder``."""
    reads: list[tuple[str, int]] = []
    original = Cache.load_torch

    def load_torch(self, path):
        obj = original(self, path)
        if folder in path.parts and obj is not None:
            reads.append((path.name, len(obj)))
        return obj

    monkeypatch.setattr(Cache, "load_torch", load_torch)
    return reads


def test_score_tasks_read_maps_one_shard_at_a_time(tmp_path, monkeypatch):
    """With 4 shards, no read of cached maps returns more than one shard's 3 maps, except for
    the metric that normalises over the set (it reads the set)."""
    reads = _record_reads(monkeypatch, "attributions")
    cfg = _cfg(["saliency", "random"], ["sparseness", {"name": "deletion", "steps": 4}])
    over = {**TINY, "evaluation.shard_size": 3}
    xaiarena.run(cfg, out=tmp_path / "r", overrides=over, show_progress=False)
    assert reads and max(n for _, n in reads) == 3
    assert {name.rsplit(".", 2)[1] for name, _ in reads} == {"0-3", "3-6", "6-9", "9-10"}


def test_a_shard_task_in_a_fresh_process_reads_only_its_shard(tmp_path, monkeypatch):
    """A shard task in a process that has not prepared its unit (a Ray worker) does not load the
    data: it reads the record and its own shard's inputs and masks from the run's cache (written
    by the process that selected the samples), and computes the map and score files the run
    computed, byte for byte."""
    from xaiarena.engine.context import Env, forget_contexts
    from xaiarena.engine.plan import plan_units
    from xaiarena.engine.tasks import TaskSpec, run_task

    cfg = _cfg(["saliency"], [{"name": "deletion", "steps": 4}])
    over = {**TINY, "evaluation.shard_size": 3}
    out = tmp_path / "r"
    xaiarena.run(cfg, out=out, overrides=over, show_progress=False)
    cache = out / "cache"
    # a local run keeps its samples in memory: nothing in the cache's samples folder
    assert not (cache / "samples").exists()
    # the train task of a Ray run (the Ray executor sets share_samples) writes them
    unit = plan_units(load_config(cfg, over))[0]
    forget_contexts(str(out))
    run_task(TaskSpec("train", unit), Env(str(out), share_samples=True))
    assert {p.name.split("-")[0] for p in (cache / "samples").rglob("*.pt")} == {
        "inputs",
        "masks",
        "unit",
    }
    # shard 2 (samples 6..8) of the maps and of the scores, removed to be computed again
    shard2 = [
        p
        for p in [*(cache / "attributions").rglob("*.6-9.*"), *(cache / "metrics").rglob("*.6-9.*")]
        if not p.name.endswith(".manifest.json")
    ]
    assert len(shard2) == 3  # the maps, the per-sample table, the curves
    before = {p: p.read_bytes() for p in shard2}
    for p in shard2:
        p.unlink()

    def no_data(*args, **kwargs):
        raise AssertionError("a shard task loaded the dataset")

    forget_contexts(str(out))
    monkeypatch.setattr("xaiarena.data.load_task", no_data)
    reads = _record_reads(monkeypatch, "samples")
    env = Env(str(out))
    try:
        run_task(TaskSpec("explain_shard", unit, "f_b", "saliency", shard=2), env)
        score = TaskSpec("score_shard", unit, "f_b", "deletion", explainers=("saliency",), shard=2)
        run_task(score, env)
    finally:
        forget_contexts(str(out))
    for p, data in before.items():
        assert p.read_bytes() == data, p.name
    samples = [(name, n) for name, n in reads if not name.startswith("unit-")]
    assert {name.split("-")[0] for name, _ in samples} == {"inputs", "masks"}
    assert {name.rsplit(".", 2)[1] for name, _ in samples} == {"6-9"}
    assert all(n == 3 for _, n in samples)


# --------------------------------------------------------------------------- Ray over shards


@pytest.mark.integration
def test_ray_with_two_workers_over_shards_gives_the_local_run(tmp_path, ray_instance):
    """Shards as Ray tasks on two workers (one CPU each): every result table byte-identical to
    the local executor's; explain and score tasks were split into their 4 shards."""
    over = {
        **TINY,
        "evaluation.shard_size": 3,
        "evaluation.meta": True,
        "evaluation.meta_samples": 4,
        "ray.num_cpus": 2,
        "ray.cpus_per_task": 1,
    }
    local = xaiarena.run(WIDE, out=tmp_path / "local", overrides=over, show_progress=False)
    ray_run = xaiarena.run(
        WIDE, out=tmp_path / "ray", overrides=over, show_progress=False, executor="ray"
    )
    for name in RESULTS:
        a = (tmp_path / "local" / "results" / name).read_bytes()
        assert a == (tmp_path / "ray" / "results" / name).read_bytes(), name
    assert torch.equal(local.attributions("saliency"), ray_run.attributions("saliency"))
    st = ray_run.info["stages"]
    assert not any("#shard" in k for k in st)
    for name in ("hard_mnist/explain/saliency", "hard_mnist/metric/deletion"):
        assert st[name]["shard_tasks"] == 4 and st[name]["shards_cached"] == 0, name
    # explainers and metrics that see the whole set are not split
    for name in (
        "hard_mnist/explain/sal_set",
        "hard_mnist/explain/diet",
        "hard_mnist/metric/sp_set",
    ):
        assert "shard_tasks" not in st[name], name
    workers = {w for v in st.values() for w in v.get("shard_workers", [])}
    assert len(workers) >= 2
    # the Ray run's train task wrote the samples for its workers; the local run did not
    assert any((tmp_path / "ray" / "cache" / "samples").rglob("inputs-*.pt"))
    assert not (tmp_path / "local" / "cache" / "samples").exists()


def test_shard_tasks_split_what_can_be_split():
    from xaiarena.engine.plan import plan_units
    from xaiarena.engine.tasks import plan_tasks, shard_tasks

    cfg = load_config(WIDE, {**TINY, "evaluation.shard_size": 3})
    tasks = plan_tasks(plan_units(cfg))
    split = shard_tasks(tasks)
    names = [t.name for t in split]
    assert len(set(names)) == len(names)
    assert {t.name for t in tasks} <= set(names)
    by_name = {t.name: t for t in split}
    for t in split:  # every dependency comes first
        assert all(names.index(d) < names.index(t.name) for d in t.deps), t.name
    sal = [n for n in names if n.startswith("hard_mnist/explain/saliency#shard")]
    assert sal == [f"hard_mnist/explain/saliency#shard{k}" for k in range(4)]
    assert set(sal) <= set(by_name["hard_mnist/explain/saliency"].deps)
    part = by_name["hard_mnist/metric/sparseness#shard2"]
    assert part.kind == "score_shard" and "hard_mnist/explain/saliency#shard2" in part.deps
    assert "hard_mnist/explain/diet" in by_name["hard_mnist/metric/sparseness@f_s#shard2"].deps
    for whole in ("explain/sal_set", "explain/diet", "metric/sp_set"):
        assert not any(n.startswith(f"hard_mnist/{whole}#") for n in names), whole
    one = plan_tasks(plan_units(load_config(WIDE, TINY)))  # 10 samples, shards of 512
    assert [t.name for t in shard_tasks(one)] == [t.name for t in one]
