"""The dissection run: config -> data -> concepts -> model -> acts -> P -> similarity -> labels.

``xaiarena dissect CONFIG`` and :func:`run` get the data and the model from the stages of
``xaiarena run`` (:func:`xaiarena.engine.stages.data_stage`,
:func:`xaiarena.engine.stages.train_stage`): the same cache keys (fingerprints of user files and
``amp`` included), checkpoint verification and checks, so a model trained by ``run`` in the same run
directory is reused and a changed image folder retrains. Torch computes with
``training.num_threads`` threads (restored afterwards). Then the ``dissect:`` section. Every
expensive artefact is cached under ``RUN_DIR/cache`` by the run's cache
(:class:`xaiarena.engine.cache.Cache`: atomic, checksummed, keys from
:func:`xaiarena.engine.cache.dissect_key`): activations per layer (model, probe images, layer,
pooling), CLIP image and text embeddings or the annotation matrix, and each layer's top concepts
(activations, P, similarity function and options, seed). ``run.json`` gets a ``dissect`` entry with
the timings and cache hits of every stage (a ``run`` result already in the folder is kept).

Outputs: ``results/neurons.csv`` (one row per neuron: dataset, layer, neuron, concept,
similarity, ``top1``..``topN`` with their similarities, and for output layers the neuron's
own class and whether the label matches it), ``results/dissect_layers.csv`` (per layer),
``figures/dissect_*.png`` and ``dissect.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import DataConfig, ExperimentConfig, load_config
from ..engine import cache as ck
from ..engine.context import StageRecorder
from ..engine.lock import check_config_file, config_yaml
from ..engine.stages import Settings, data_stage, train_stage
from ..environment import resolve_device, torch_threads, versions
from ..errors import ConfigError
from ..files import atomic_to_csv, atomic_write_text, make_dir, writes_inside
from ..hashing import stable_hash, stable_seed
from ..ops.seeding import seed_everything
from ..registry import MODELS
from ..runner import _say
from ..strict_json import dumps_json
from .activations import LayerNotFoundError, is_output_layer, record_activations, resolve_layer
from .concepts import build_concepts, too_few
from .options import OptionError
from .probe import Probe, select_probe
from .results import read_layers, read_neurons
from .scorers import ScorerUnavailableError, build_scorer
from .similarity import compute as compute_similarity

NEURON_COLUMNS = ["dataset", "layer", "neuron", "concept", "similarity"]
TOP_STORED = 50  # concepts kept per neuron in the cache (dissect.top may be up to this)


def _norm(name: str) -> str:
    return str(name).replace("_", " ").strip().lower()


def label_neurons(similarity: torch.Tensor, concepts: list[str], *, top: int = 5) -> pd.DataFrame:
    """One row per neuron (row of ``similarity``): ``neuron, concept, similarity, top1..topN``
    (concepts by decreasing similarity) and ``top1_similarity..``. Ties go to the earlier
    concept."""
    top = min(top, similarity.shape[1])
    values, idx = _top_concepts(similarity, top)
    return _rows(values, idx, concepts, top)


def _top_concepts(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, sim.shape[1])
    # stable descending sort: ties keep concept order, so labels do not depend on topk's tie rule
    order = torch.sort(sim.float(), dim=1, descending=True, stable=True)
    return order.values[:, :k].contiguous(), order.indices[:, :k].contiguous()


def _rows(values: torch.Tensor, idx: torch.Tensor, concepts: list[str], top: int) -> pd.DataFrame:
    top = min(top, values.shape[1])
    data: dict[str, Any] = {"neuron": np.arange(len(values))}
    names = np.asarray(concepts, dtype=object)
    data["concept"] = names[idx[:, 0].numpy()]
    data["similarity"] = values[:, 0].numpy().astype(np.float64)
    for j in range(top):
        data[f"top{j + 1}"] = names[idx[:, j].numpy()]
    for j in range(top):
        data[f"top{j + 1}_similarity"] = values[:, j].numpy().astype(np.float64)
    return pd.DataFrame(data)


class DissectRunner:
    """Runs the ``dissect:`` section of one :class:`ExperimentConfig` into a run directory."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: str | Path | None = None,
        show_progress: bool = True,
        source: str | Path | None = None,
    ):
        if cfg.dissect is None:
            raise ConfigError(
                [
                    (
                        "dissect",
                        "this config has no 'dissect:' section; add one (layers, concepts, "
                        "scorer, similarity; see docs/dissect.md)",
                    )
                ]
            )
        self.cfg = cfg
        self.dcfg = cfg.dissect
        self.run_dir = Path(out or cfg.output or Path("runs") / cfg.name)
        self.device = resolve_device(cfg.device)
        self.show_progress = show_progress
        self.source = source  # the config file cfg was read from (never overwritten)
        self.log = StageRecorder(_say)
        self.info: dict[str, Any] = {"datasets": {}}
        # the run's data and train stages (xaiarena.engine.stages), its cache and keys: a checkpoint
        # trained by `xaiarena run` in the same folder is reused, and the other way round
        self.settings = Settings(
            cfg=cfg,
            cache=ck.Cache(self.run_dir / "cache", self.run_dir),
            device=self.device,
            amp=bool(cfg.amp) and self.device.type == "cuda",
            show_progress=show_progress,
        )
        self.hits: list[str] = []  # the current dataset's dissection artefacts, for run.json
        self.computed: list[str] = []

    # ------------------------------------------------------------------ stages
    def run(self) -> Path:
        check_config_file(self.run_dir, self.source)
        make_dir(self.run_dir)
        # every file below: inside the run dir (links followed); training.num_threads threads, as
        # a run's tasks (restored afterwards)
        with writes_inside(self.run_dir), torch_threads(self.cfg.training.num_threads):
            return self._run()

    def _run(self) -> Path:
        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", config_yaml(cfg))
        seed_everything(cfg.seed)
        started = time.perf_counter()
        frames, layer_rows = [], []
        for dcfg in cfg.data:
            neurons, layers = self._dataset(dcfg)
            frames.append(neurons)
            layer_rows += layers
        neurons = pd.concat(frames, ignore_index=True)
        results = self.run_dir / "results"
        atomic_to_csv(neurons, results / "neurons.csv")
        atomic_to_csv(pd.DataFrame(layer_rows), results / "dissect_layers.csv")
        self._write_run_json(time.perf_counter() - started)
        with self.log.stage("dissect/report"):
            from .report import build_dissect_report

            build_dissect_report(self.run_dir)
        self._write_run_json(time.perf_counter() - started)
        return self.run_dir

    def _dataset(self, dcfg: DataConfig) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """The neuron labels of one dataset: its data, concept set, model, activations, concept
        scores and similarities, each a logged stage. Longer than 80 lines because it is the
        dissection's sequence of logged, cached stages, each feeding the next its cache key."""
        cfg, d, name = self.cfg, self.dcfg, dcfg.key
        task, dkey = data_stage(self.settings, dcfg, self.log.stage, name)
        if task.modality != "image":
            raise ConfigError(
                [("data", f"dataset '{dcfg.name}' is {task.modality}; dissection needs images")]
            )
        # before any model work: a bad concept set fails in seconds
        with self.log.stage(f"{name}/concepts") as info:
            concepts = self._concepts(task)
            info["n_concepts"] = len(concepts)
        model, mkey, tr = train_stage(
            self.settings, task, dkey, self.log.stage, name
        )  # eval mode, frozen
        model_hash, pretrained = (
            mkey.hash,
            bool(MODELS.entry(cfg.model.name).meta.get("pretrained")),
        )
        for i, layer in enumerate(d.layers):
            try:
                resolve_layer(model, layer)
            except LayerNotFoundError as exc:
                raise ConfigError(
                    [(f"dissect.layers.{i}", f"bad value '{layer}': {exc}")]
                ) from None

        try:
            probe = select_probe(task, d.split, d.n_images, cfg.seed)
        except ValueError as exc:
            raise ConfigError([("dissect.split", str(exc))]) from None
        probe.key = ck.probe_key(dkey, d.split, probe.ids.tolist()).hash
        self.hits, self.computed = [], []

        with self.log.stage(f"{name}/activations") as info:
            acts, outputs = self._activations(model, model_hash, probe)
            info["cache_hit"] = not self.computed
        scorer = self._scorer()
        with self.log.stage(f"{name}/scores") as info_scores:
            concepts, scores = self._scores(scorer, probe, concepts, info_scores)
        scores_key = {
            "scorer": scorer.fingerprint(),
            "probe": probe.key,
            "concepts": stable_hash(concepts),
        }

        frames, layer_rows = [], []
        model_classes = list(getattr(model, "class_names", None) or task.class_names)
        for li, layer in enumerate(d.layers):
            with self.log.stage(f"{name}/similarity/{layer}") as info:
                n_before = len(self.computed)
                values, idx = self._similarity(
                    acts[layer], scores, layer, li, model_hash, probe, scores_key
                )
                info["cache_hit"] = len(self.computed) == n_before
            df = _rows(values, idx, concepts, d.top)
            a = acts[layer]
            df["constant"] = (a.amax(0) - a.amin(0) <= 1e-12 * a.abs().amax(0).clamp_min(1)).numpy()
            output_layer = is_output_layer(a, outputs) and a.shape[1] == len(model_classes)
            if output_layer:
                own = [str(c) for c in model_classes]
                known = {_norm(c) for c in concepts}
                df["own_class"] = own
                df["matches_own_class"] = [
                    (_norm(o) == _norm(c)) if _norm(o) in known else None
                    for o, c in zip(own, df["concept"], strict=True)
                ]
            df.insert(0, "layer", layer)
            df.insert(0, "dataset", name)
            frames.append(df)
            layer_rows.append(self._layer_summary(name, layer, df, output_layer, a))
        self.info["datasets"][name] = {
            "model": cfg.model.name,
            "model_hash": model_hash,
            "pretrained": pretrained,
            "test_accuracy": tr.test_accuracy,
            "split": d.split,
            "n_images": len(probe),
            "probe_accuracy": _probe_accuracy(model, outputs, probe, task),
            "n_concepts": len(concepts),
            "dropped_constant_concepts": info_scores["dropped_constant_concepts"],
            "concepts": d.concepts.hash_dict(),
            "scorer": d.scorer.hash_dict(),
            "similarity": d.similarity.hash_dict(),
            "pool": d.pool,
            "layers": {r["layer"]: r for r in layer_rows},
            "cache": {"hits": list(self.hits), "computed": list(self.computed)},
        }
        out = pd.concat(frames, ignore_index=True)
        return out, layer_rows

    # ------------------------------------------------------------------ helpers
    def _cached(self, kind: str, inputs: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """The dissection artefact ``kind`` keyed by ``inputs``
        (:func:`xaiarena.engine.cache.dissect_key`) from the run's cache (``cache/dissect/<kind>/``,
        checksummed), else computed and saved; counted in :attr:`hits` or :attr:`computed`."""
        key = ck.dissect_key(kind, inputs)
        path = self.settings.cache.path("dissect", kind, f"{key.hash}.pt")
        value, hit = self.settings.cache.torch_artefact(path, key, compute)
        (self.hits if hit else self.computed).append(f"{kind}/{path.name}")
        return value

    def _activations(self, model, model_hash: str, probe: Probe):
        d = self.dcfg
        keys = {
            layer: {"model": model_hash, "probe": probe.key, "layer": layer, "pool": d.pool}
            for layer in d.layers
        }
        out_key = {"model": model_hash, "probe": probe.key, "outputs": True}
        recorded: dict[str, Any] = {}

        def record() -> None:
            if not recorded:
                acts, outputs = record_activations(
                    model,
                    probe.images,
                    list(d.layers),
                    pool=d.pool,
                    batch_size=d.batch_size,
                    device=self.device,
                    show_progress=self.show_progress,
                )
                recorded.update(acts)
                recorded["__outputs__"] = outputs

        def getter(layer: str):
            def compute():
                record()
                return recorded[layer]

            return compute

        acts = {
            layer: self._cached("activations", keys[layer], getter(layer)) for layer in d.layers
        }
        outputs = self._cached("activations", out_key, getter("__outputs__"))
        return acts, outputs

    def _concepts(self, task) -> list[str]:
        spec = self.dcfg.concepts
        try:
            concepts = build_concepts(spec.name, spec.params, task)
        except OptionError as exc:
            raise ConfigError([(_key("concepts", exc.option), exc.message)]) from None
        except (ValueError, FileNotFoundError, ImportError) as exc:
            raise ConfigError([("dissect.concepts", f"concept set '{spec.name}': {exc}")]) from None
        why = too_few(spec.name, concepts)
        if why:
            raise ConfigError([("dissect.concepts", why)])
        return concepts

    def _scores(self, scorer, probe: Probe, concepts: list[str], info: dict[str, Any]):
        """P for the probe images and concepts, without the concepts that do not vary (see
        below)."""
        n_before = len(self.computed)
        try:
            scores = scorer.score(
                probe,
                concepts,
                device=self.device,
                cached=self._cached,
                show_progress=self.show_progress,
            )
        except ScorerUnavailableError as exc:
            raise ConfigError([(f"dissect.scorer.{exc.option}", exc.message)]) from None
        except OptionError as exc:
            raise ConfigError([(_key("scorer", exc.option), exc.message)]) from None
        info["cache_hit"] = len(self.computed) == n_before
        # a concept scored the same on every probe image (e.g. an annotation no probe image has)
        # says nothing about any neuron, yet soft_wpmi gives it 0, above the negative values of
        # concepts that do vary: such columns are dropped (CLIP scores are never constant)
        varies = (scores.amax(0) > scores.amin(0)).tolist()
        dropped = [c for c, v in zip(concepts, varies, strict=True) if not v]
        info["dropped_constant_concepts"] = dropped
        if dropped:
            concepts = [c for c, v in zip(concepts, varies, strict=True) if v]
            scores = scores[:, torch.tensor(varies)]
            _say(
                f"[xaiarena] {probe.task.name}: {len(dropped)} concept(s) scored the same on every "
                "probe image are left out: "
                f"{', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}"
            )
        if len(concepts) < 2:
            raise ConfigError(
                [
                    (
                        "dissect.concepts",
                        f"only {len(concepts)} concept(s) vary over the "
                        f"{len(probe)} probe images; labelling needs at least 2",
                    )
                ]
            )
        return concepts, scores

    def _scorer(self):
        spec = self.dcfg.scorer
        try:
            return build_scorer(spec.name, spec.params)
        except OptionError as exc:
            raise ConfigError([(_key("scorer", exc.option), exc.message)]) from None

    def _similarity(self, acts, scores, layer, li, model_hash, probe, scores_key):
        spec, seed = self.dcfg.similarity, stable_seed(self.cfg.seed, li)
        key = {
            "model": model_hash,
            "probe": probe.key,
            "layer": layer,
            "pool": self.dcfg.pool,
            "scores": scores_key,
            "similarity": spec.hash_dict(),
            "seed": seed,
            "top": TOP_STORED,
        }

        def compute():
            try:
                sim = compute_similarity(
                    spec.name,
                    acts.to(self.device),
                    scores.to(self.device),
                    seed=seed,
                    **spec.params,
                )
            except OptionError as exc:
                raise ConfigError([(_key("similarity", exc.option), exc.message)]) from None
            values, idx = _top_concepts(sim.cpu(), TOP_STORED)
            return {"values": values, "indices": idx}

        got = self._cached("similarity", key, compute)
        return got["values"], got["indices"]

    def _layer_summary(
        self, dataset: str, layer: str, df: pd.DataFrame, output_layer: bool, acts
    ) -> dict[str, Any]:
        from .plots import top_concepts

        live = df[~df["constant"]]
        counts = top_concepts(df, 1)  # most frequent label of the live neurons (ties: alphabetical)
        row: dict[str, Any] = {
            "dataset": dataset,
            "layer": layer,
            "neurons": len(df),
            "constant_neurons": int(df["constant"].sum()),
            "distinct_concepts": int(live["concept"].nunique()),
            "top_concept": str(counts.index[0]) if len(counts) else "",
            "top_concept_neurons": int(counts.iloc[0]) if len(counts) else 0,
            "mean_similarity": float(live["similarity"].mean()) if len(live) else float("nan"),
            "median_similarity": float(live["similarity"].median()) if len(live) else float("nan"),
            "output_layer": output_layer,
        }
        if output_layer:
            m = df["matches_own_class"].dropna()
            row["own_class_matches"] = int(m.sum())
            row["own_class_defined"] = int(len(m))
            row["own_class_rate"] = float(m.mean()) if len(m) else float("nan")
        return row

    def _write_run_json(self, seconds: float) -> None:
        cfg, path = self.cfg, self.run_dir / "run.json"
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
        if "datasets" not in data:  # no xaiarena run result here: this is a dissection-only run
            data.update(
                {
                    "name": cfg.name,
                    "seed": cfg.seed,
                    "device": str(self.device),
                    "kind": "dissect",
                    "versions": versions(),
                    "config_hash": stable_hash(cfg.to_dict()),
                }
            )
        data["dissect"] = {
            "total_seconds": round(seconds, 3),
            "config_hash": stable_hash(cfg.to_dict()),
            "seed": cfg.seed,
            "device": str(self.device),
            "stages": self.log.stages,
            **self.info,
        }
        atomic_write_text(path, dumps_json(data))


def _key(component: str, option: str) -> str:
    return option if option.startswith("dissect.") else f"dissect.{component}.{option}"


def _probe_accuracy(model, outputs: torch.Tensor, probe: Probe, task) -> float | None:
    """Accuracy on the probe images where the model's classes are the task's (else None)."""
    from ..models.training import correct_predictions

    if outputs.ndim != 2 or len(outputs) == 0:
        return None
    ok = correct_predictions(model, outputs.argmax(1), probe.labels, task)
    return None if ok is None else float(ok.float().mean())


# ---------------------------------------------------------------------- public API


class DissectResult:
    """A finished dissection: ``neurons`` (results/neurons.csv), ``layers``, ``info``,
    ``report_path``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "results" / "neurons.csv").exists():
            raise FileNotFoundError(
                f"'{self.run_dir}' holds no dissection (no results/neurons.csv)"
            )
        self.info = json.loads((self.run_dir / "run.json").read_text()).get("dissect", {})

    @property
    def neurons(self) -> pd.DataFrame:
        return read_neurons(self.run_dir / "results" / "neurons.csv")

    @property
    def layers(self) -> pd.DataFrame:
        return read_layers(self.run_dir / "results" / "dissect_layers.csv")

    @property
    def report_path(self) -> Path:
        return self.run_dir / "dissect.html"

    def __repr__(self) -> str:
        return f"DissectResult('{self.run_dir}')"


def run(
    config: str | Path | dict | ExperimentConfig,
    *,
    out: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    show_progress: bool = True,
) -> DissectResult:
    """Dissect the model of ``config`` (which must have a ``dissect:`` section); see the module
    docstring."""
    cfg = load_config(config, overrides or None)
    source = config if isinstance(config, (str, Path)) else None
    runner = DissectRunner(cfg, out=out, show_progress=show_progress, source=source)
    return DissectResult(runner.run())


def load(run_dir: str | Path) -> DissectResult:
    return DissectResult(run_dir)
