"""The perturbation tests of the metric meta-evaluation (``evaluation.meta: true``; docs/meta.md).

MetaQuantus (Hedström et al. 2023) asks whether a metric's scores stay put under perturbations
of the evaluation problem that leave the model's predictions unchanged (*minor*), and move
under perturbations that change them (*disruptive*). :func:`perturbed_scores` builds these
problems for ``evaluation.meta_samples`` evaluation samples of one view and scores them with
every metric of that view; :mod:`xaiarena.meta` turns the scores into ``results/meta.csv``.

The four tests and their noise levels are MetaQuantus's suite for MNIST, fMNIST and cMNIST
(``helpers/configs.py``, ``setup_test_suite``; :data:`NOISE`), each drawn
``evaluation.meta_perturbations`` times:

* **model** (MetaQuantus's ``ModelPerturbationTest``): a copy of the view's model with every
  parameter multiplied by noise from N(1, sigma); every explainer re-explains the samples on
  it and the metric scores those maps on it (re-explaining metrics re-explain the perturbed
  model).
* **input** (``InputPerturbationTest``): the samples plus uniform noise U(-a, a), clipped to
  the pixel range [0, 1]; as in MetaQuantus's code, the maps are those of the unperturbed
  inputs and the metric scores them on the perturbed inputs (no re-explanation). Images only
  (a modality declares ``continuous_inputs``): token ids cannot take additive noise.

Which samples' predictions changed is recorded per draw (``same_prediction``, against the
view's own predictions). Randomness: the samples are chosen by the data seed; the noise of a
draw, and the explainers' and metrics' random streams on its problem, are seeded by the run
seed and (test, strength, draw); input noise per sample by its id, so nothing depends on the
batch size. Explainers and metrics draw fresh streams on each perturbed problem, as MetaQuantus
does (its tests draw from numpy's global state): their own sampling noise counts against
resilience. Scores and re-explained maps are cached (:func:`xaiarena.engine.cache.meta_score_key`,
:func:`xaiarena.engine.cache.meta_maps_key`): a rerun loads them, an added metric scores only
itself.

Cost per view, with M samples and K draws: the model tests re-explain 2·K·M samples with
every explainer (the run explains N), all four tests score 4·K·M samples with every metric
(the run scores N), and 4·K forward passes of M samples give the perturbed predictions.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pandas as pd
import torch

from .. import postprocess
from ..meta import DISRUPTIVE, MINOR, PERTURBED_COLUMNS
from . import cache as ck
from .batching import Attribution, Compute, EvalSamples, View, explain_in_batches, score_in_batches
from .stages import PreparedUnit, Settings

#: MetaQuantus's test suite for MNIST, fMNIST and cMNIST: sigma of the multiplicative model noise
#: N(1, sigma) and half-width a of the additive input noise U(-a, a), per (test, strength)
NOISE: dict[tuple[str, str], float] = {
    ("model", MINOR): 0.001,
    ("model", DISRUPTIVE): 2.0,
    ("input", MINOR): 0.001,
    ("input", DISRUPTIVE): 5.0,
}
#: version of the perturbation scheme (part of the cache keys)
SCHEME = 1


def meta_positions(n: int, n_meta: int, data_seed: int) -> torch.Tensor:
    """Positions (sorted) of the ``n_meta`` evaluation samples the perturbation tests use, chosen
    by the data seed (replicates share them); all ``n`` when ``n_meta >= n``."""
    gen = torch.Generator().manual_seed(ck.stable_seed(data_seed, "meta_samples"))
    return torch.randperm(n, generator=gen)[: min(n, n_meta)].sort().values


def perturbed_model(model: torch.nn.Module, sigma: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every parameter multiplied by noise from N(1, sigma) (drawn on the
    CPU from ``seed``, parameter by parameter in ``parameters()`` order); ``model`` is
    unchanged."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * sigma + 1.0
            p.mul_(noise.to(device=p.device, dtype=p.dtype))
    return out.eval()


def perturbed_inputs(
    inputs: torch.Tensor, sample_ids: torch.Tensor, half_width: float, seed: int
) -> torch.Tensor:
    """``inputs`` plus noise from U(-a, a), clipped to [0, 1]; each sample's noise drawn from
    (``seed``, its id), so a sample's perturbation does not depend on its batch."""
    noise = torch.empty_like(inputs, device="cpu", dtype=torch.float32)
    for i, sid in enumerate(sample_ids.tolist()):
        gen = torch.Generator().manual_seed(ck.stable_seed(seed, int(sid)))
        noise[i] = torch.rand(inputs.shape[1:], generator=gen) * (2 * half_width) - half_width
    return (inputs.float() + noise.to(inputs.device)).clamp(0.0, 1.0)


def _predictions(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    from ..metrics.core import eval_mode, predict

    with eval_mode(model) as m:
        return predict(m, inputs.to(device), batch_size).argmax(1).cpu()


def settings_of(s: Settings) -> dict[str, Any]:
    """What the perturbed problems depend on besides the model, maps and seed (cache keys)."""
    ev = s.cfg.evaluation
    return {
        "samples": ev.meta_samples,
        "draws": ev.meta_perturbations,
        "scheme": SCHEME,
        "noise": {f"{t}_{st}": v for (t, st), v in NOISE.items()},
    }


def perturbed_scores(
    s: Settings,
    prep: PreparedUnit,
    view: View,
    attrs: dict[str, Attribution],
    explainers: dict[str, tuple[Any, Any]],
    jobs: list[tuple[Any, Any, list[str]]],
    sinfo: dict,
) -> pd.DataFrame:
    """Every metric's scores of every perturbed evaluation problem of one view (cached per metric).

    ``attrs``: the view's maps per explainer label; ``explainers``: per label ``(spec, explainer)``
    (its config entry and built explainer); ``jobs``: ``(metric spec, metric, explainer labels it
    scores)``. Returns :data:`xaiarena.meta.PERTURBED_COLUMNS`."""
    ev = s.cfg.evaluation
    pos = meta_positions(len(prep.sample_ids), ev.meta_samples, s.dseed)
    ids = prep.sample_ids[pos]
    ids_hash = ck.stable_hash(ids.tolist())
    settings = settings_of(s)
    folder = s.cache.path("meta", prep.dataset)
    done: list[pd.DataFrame] = []
    pending = []
    for spec, metric, labels in jobs:
        key = ck.meta_score_key(
            spec.hash_dict(),
            {k: attrs[k].key for k in labels},
            ids_hash,
            s.seed,
            view.key,
            settings,
        )
        path = folder / f"{spec.key}-{key.hash}.parquet"
        frame = s.cache.load_frame(path)
        if frame is not None:
            done.append(frame)
        else:
            pending.append((spec, metric, labels, key, path, []))
    sinfo["cache_hit"] = not pending
    sinfo["meta_samples"] = len(pos)
    if pending:
        needed = list(dict.fromkeys(k for job in pending for k in job[2]))
        tests = [t for t in NOISE if t[0] == "model" or prep.mod.continuous_inputs]
        for test, strength in tests:
            for draw in range(ev.meta_perturbations):
                _score_problem(
                    s,
                    prep,
                    view,
                    attrs,
                    explainers,
                    pending,
                    needed,
                    pos,
                    ids,
                    ids_hash,
                    test,
                    strength,
                    draw,
                )
        for _spec, _metric, _labels, key, path, parts in pending:
            frame = (
                pd.concat(parts, ignore_index=True)
                if parts
                else pd.DataFrame(columns=PERTURBED_COLUMNS)
            )
            s.cache.save_frame(path, frame, key)
            done.append(frame)
    out = pd.concat(done, ignore_index=True) if done else pd.DataFrame(columns=PERTURBED_COLUMNS)
    return out[PERTURBED_COLUMNS]


def _score_problem(
    s: Settings,
    prep: PreparedUnit,
    view: View,
    attrs: dict[str, Attribution],
    explainers: dict[str, tuple[Any, Any]],
    pending: list,
    needed: list[str],
    pos: torch.Tensor,
    ids: torch.Tensor,
    ids_hash: str,
    test: str,
    strength: str,
    draw: int,
) -> None:
    """Build one perturbed evaluation problem and score it with every pending metric.
    Longer than 80 lines because its signature passes the meta stage's state (15 parameters); the
    body is one cached scoring step."""
    noise = NOISE[(test, strength)]
    seed = ck.stable_seed(s.seed, "meta", test, strength, draw)
    compute = Compute(
        device=s.device, seed=seed, batch_size=s.batch_size, amp=s.amp, show_progress=False
    )
    inputs = prep.inputs[pos]
    if test == "model":
        model = perturbed_model(view.model, noise, seed)
        preds = prep.mod.logits(model, prep.task.test, prep.index[pos], s.device).argmax(1).cpu()
        pert = {
            "test": test,
            "strength": strength,
            "noise": noise,
            "draw": draw,
            "seed": s.seed,
            "scheme": SCHEME,
        }
        maps = {}
        for k in needed:
            spec, explainer = explainers[k]
            mkey = ck.meta_maps_key(attrs[k].key, ids_hash, pert)
            path = s.cache.path("meta", prep.dataset, f"{k}-{mkey.hash}.pt")
            m = s.cache.load_torch(path)
            if m is None:
                m = explain_in_batches(
                    compute, explainer, model, inputs, view.targets[pos], k, seed_name=spec.name
                )
                m = postprocess.apply(m, list(getattr(spec, "postprocess", None) or []))
                s.cache.save_torch(path, m, mkey)
            maps[k] = m
        problem = {
            k: Attribution(
                k,
                view.name,
                maps[k],
                attrs[k].key,
                functools.partial(attrs[k].explain_fn, model=model),
            )
            for k in needed
        }
    else:
        model = view.model
        inputs = perturbed_inputs(inputs, ids, noise, seed)
        preds = _predictions(model, inputs, s.batch_size, s.device)
        problem = {
            k: Attribution(k, view.name, attrs[k].maps[pos], attrs[k].key, attrs[k].explain_fn)
            for k in needed
        }
    same = dict(zip(ids.tolist(), (preds == view.preds[pos].cpu()).tolist(), strict=True))
    samples = EvalSamples(
        dataset=prep.dataset,
        inputs=inputs,
        labels=prep.labels[pos],
        masks=None if prep.masks is None else prep.masks[pos],
        sample_ids=ids,
    )
    pview = View(view.name, model, view.key, view.targets[pos], preds)
    for spec, metric, labels, _key, _path, parts in pending:
        ps, _ = score_in_batches(
            compute, samples, pview, spec, metric, {k: problem[k] for k in labels}
        )
        parts.append(
            ps.assign(
                perturbation=test,
                strength=strength,
                draw=draw,
                same_prediction=ps["sample_id"].map(same).astype(bool),
            )
        )


__all__ = [
    "NOISE",
    "meta_positions",
    "perturbed_inputs",
    "perturbed_model",
    "perturbed_scores",
    "settings_of",
]
