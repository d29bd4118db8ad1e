"""What a config expands to: units, and the views of each unit.

A config expands into **units**: one per (grid point, replicate seed, dataset entry)
(:func:`plan_units`). Each unit has **views**, the models whose decisions maps explain: ``f_b``,
the trained model, and one ``f_s`` per learned explainer (its distilled model;
:mod:`xaiarena.views` has the vocabulary). :func:`home_views` says which view each explainer
is reported under, :func:`view_members` which explainers explain each view,
:func:`scored_maps` which maps each view's metrics score and :func:`scored_labels` which of
them one metric scores. The tasks of a unit (:mod:`xaiarena.engine.tasks`) are planned from
these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ExperimentConfig, grid_points
from ..registry import EXPLAINERS
from ..views import F_B, on_f_b_label, source_of

# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One dataset entry of one grid point, trained with one replicate seed."""

    id: str  # unique within the run; prefixes its stage names ("hard_mnist", "hard_mnist@g#r1")
    dataset: str  # the data entry's key (label or name)
    data_index: int
    grid: str  # "" without a grid
    replicate: int
    seed: int  # the model's seed (training, explainers, metrics)
    config: dict[str, Any]  # the point's full config (seed = this replicate's seed), JSON-able
    data_seed: int = (
        0  # the data's and the evaluation samples' seed: the config's seed for every replicate
    )
    replicate_seeds: tuple[int, ...] = ()  # all replicates' model seeds (only_correct uses them)

    def experiment(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.config)

    def columns(self, with_grid: bool, with_replicates: bool) -> dict[str, Any]:
        """The result columns that identify this unit beyond ``dataset``."""
        out: dict[str, Any] = {}
        if with_grid:
            out["grid"] = self.grid
        if with_replicates:
            out.update(replicate=self.replicate, seed=self.seed)
        return out


def plan_units(cfg: ExperimentConfig) -> list[Unit]:
    """Every (grid point, replicate, dataset entry) of ``cfg``, in that nesting order."""
    seeds = cfg.replicate_seeds()
    units = []
    for label, raw in grid_points(cfg):
        point = ExperimentConfig.model_validate(raw)
        for r, seed in enumerate(seeds):
            conf = point.model_copy(update={"seed": seed, "replicates": 1, "seeds": None}).to_dict()
            for i, d in enumerate(point.data):
                uid = d.key + (f"@{label}" if label else "") + (f"#r{r}" if len(seeds) > 1 else "")
                units.append(
                    Unit(
                        uid,
                        d.key,
                        i,
                        label,
                        r,
                        seed,
                        conf,
                        cfg.seed,
                        tuple(seeds) if len(seeds) > 1 else (),
                    )
                )
    return units


# --------------------------------------------------------------------------- views


def home_views(cfg: ExperimentConfig) -> dict[str, str]:
    """``{explainer label: the view it is reported under}``: f_b for the plain explainers, its own
    f_s (``f_s``, or ``f_s:<label>`` with several) for a learned explainer."""
    learned = [s.key for s in cfg.explainers if EXPLAINERS.get(s.name).family == "learned"]
    out = {s.key: F_B for s in cfg.explainers}
    for k in learned:
        out[k] = "f_s" if len(learned) == 1 else f"f_s:{k}"
    return out


def view_members(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """``{view: [explainer labels]}``: f_b holds the plain explainers; each learned explainer's f_s
    holds it and, with ``evaluation.also_explain_f_s`` (default), the plain explainers too."""
    home = home_views(cfg)
    plain = [k for k, v in home.items() if v == F_B]
    members = {F_B: plain}
    for k, v in home.items():
        if v != F_B:
            members[v] = [k] + (plain if cfg.evaluation.also_explain_f_s else [])
    return members


def scored_maps(cfg: ExperimentConfig) -> dict[str, dict[str, tuple[str, str]]]:
    """``{view: {result label: (view the maps were computed on, explainer label)}}``: the maps
    each view's metrics score. A view scores its own members' maps and, in f_b with
    ``evaluation.score_learned_on_f_b`` (default), each learned explainer's maps of its f_s as
    ``<label>@f_s`` (:mod:`xaiarena.views`)."""
    home = home_views(cfg)
    out = {v: {k: (v, k) for k in labels} for v, labels in view_members(cfg).items()}
    if cfg.evaluation.score_learned_on_f_b:
        out[F_B].update({on_f_b_label(k): (v, k) for k, v in home.items() if v != F_B})
    return out


def scored_labels(spec, metric, labels: list[str]) -> list[str]:
    """The maps (result labels, of one view) a metric scores: those its ``explainers:`` names
    (all by default; ``diet`` also selects ``diet@f_s``, DiET's maps scored on f_b); none where
    the metric does not apply to them (an agreement metric needs two maps)."""
    keys = [
        k
        for k in labels
        if spec.explainers is None or k in spec.explainers or source_of(k) in spec.explainers
    ]
    return keys if metric.applies_to(keys) else []


__all__ = ["Unit", "home_views", "plan_units", "scored_labels", "scored_maps", "view_members"]
