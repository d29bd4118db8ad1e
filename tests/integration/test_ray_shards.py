"""A Ray worker killed in the middle of an explain shard: Ray retries that shard task, and only
that shard is computed again (a local Ray instance started by the test itself)."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

import xaiarena

#: 12 samples in 3 shards of 4, explained in batches of 2: 6 explain calls, 2 per shard
OVER = {
    "data.n_train": 300,
    "data.n_test": 80,
    "training.epochs": 1,
    "model.channels": [4, 8, 8],
    "training.num_threads": 1,
    "evaluation.n_samples": 12,
    "evaluation.batch_size": 2,
    "evaluation.shard_size": 4,
    "ray.num_cpus": 2,
    "ray.cpus_per_task": 1,
    "ray.max_retries": 2,
}

#: a saliency that logs every call (``<pid> <hash of the batch>``) and, while ``fired`` does not
#: exist, kills its own process at its second call: the second batch of the first shard that
#: process explains, i.e. in the middle of a shard, after one batch was computed
PLUGIN = """
import hashlib
import os
from pathlib import Path

from xaiarena.explainers.gradients import SaliencyExplainer
from xaiarena.registry import EXPLAINERS

LOG, FIRED = Path({log!r}), Path({fired!r})
_calls = []


@EXPLAINERS.register("dies_once", description="test plugin: saliency that kills its worker once")
class DiesOnce(SaliencyExplainer):
    name = "dies_once"

    def explain(self, model, inputs, targets, generator=None):
        digest = hashlib.sha256(inputs.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        with open(LOG, "a") as f:
            f.write(f"{{os.getpid()}} {{digest}}\\n")
        _calls.append(digest)
        if len(_calls) == 2 and not FIRED.exists():
            FIRED.write_text(str(os.getpid()))
            os._exit(1)
        return super().explain(model, inputs, targets, generator=generator)
"""


def _calls(log) -> list[tuple[int, str]]:
    return [(int(p), h) for p, h in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.integration
def test_a_worker_killed_mid_shard_recomputes_only_its_shard(tmp_path, ray_instance):
    log, fired = tmp_path / "calls.log", tmp_path / "fired"
    plugin = tmp_path / "dies_once_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN.format(log=str(log), fired=str(fired))))
    cfg = {
        "name": "t",
        "data": "hard_mnist",
        "model": "lenet",
        "plugins": [str(plugin)],
        "explainers": ["dies_once"],
        "metrics": ["sparseness"],
    }
    fired.write_text("not in the local run")
    local = xaiarena.run(cfg, out=tmp_path / "local", overrides=OVER, show_progress=False)
    batches = [h for _, h in _calls(log)]
    assert len(batches) == len(set(batches)) == 6  # 3 shards x 2 batches, each computed once
    log.unlink()
    fired.unlink()

    res = xaiarena.run(
        cfg, out=tmp_path / "ray", overrides=OVER, show_progress=False, executor="ray"
    )
    assert fired.exists(), "no worker was killed"
    victim = int(fired.read_text())
    calls = _calls(log)
    killed = [h for pid, h in calls if pid == victim]
    assert len(killed) == 2  # the first batch of its shard, then the one it died in
    counts = Counter(h for _, h in calls)
    assert set(counts) == set(batches)
    # the killed shard's two batches twice (before the kill and in the retry), every other
    # shard's batches once
    assert {h: n for h, n in counts.items() if n != 1} == dict.fromkeys(killed, 2)
    assert (tmp_path / "ray" / "results" / "per_sample.parquet").read_bytes() == (
        tmp_path / "local" / "results" / "per_sample.parquet"
    ).read_bytes()
    st = res.info["stages"]["hard_mnist/explain/dies_once"]
    assert st["shard_tasks"] == 3 and st["shards_cached"] == 0
    assert local.per_sample.equals(res.per_sample)
