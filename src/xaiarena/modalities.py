"""What the runner needs to know about a modality (image or text).

The runner is modality generic: it asks a :class:`Modality` for the model's
predictions on a split, the evaluation inputs (a float image tensor, or a
:class:`~xaiarena.data.text.TextBatch`), their ground truth (image masks, or
word rationales) and the report's example file. Both kinds of evaluation
inputs support ``inputs[i:j]``, ``.to(device)`` and ``len()``, which is all the
runner's batching uses.

:func:`check_modalities` rejects, before anything runs, a config that combines
a dataset with a model, explainer or metric of another modality, naming the
item and the valid choices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .registry import DATASETS, EXPLAINERS, METRICS, MODELS, Registry
from .utils import atomic_write_text

N_TEXT_EXAMPLES = 8


class ImageModality:
    """Images: float pixel tensors ``(N, C, H, W)`` in [0, 1]; ``(N, H, W)`` maps."""

    name = "image"

    def predict(self, model, split, index: torch.Tensor, device) -> torch.Tensor:
        from .models.training import predict

        return predict(model, split.images[index], device)

    def eval_inputs(self, task, index: torch.Tensor, model) -> torch.Tensor:
        return task.test.float_images(index)

    def eval_masks(self, task, index: torch.Tensor, inputs) -> torch.Tensor | None:
        return task.test.masks[index] if task.test.masks is not None else None

    def describe(self, task, inputs, model) -> dict[str, Any]:
        return {}  # run.json already records the input shape

    # the runner writes the image examples itself (Runner._write_examples: results/examples/<dataset>.npz)


class TextModality:
    """Texts: :class:`TextBatch` inputs; ``(N, L)`` word maps; ``results/examples/<dataset>.json``."""

    name = "text"

    def predict(self, model, split, index: torch.Tensor, device) -> torch.Tensor:
        return model.predict_texts([split.texts[i] for i in index.tolist()], device)

    def eval_inputs(self, task, index: torch.Tensor, model):
        if not hasattr(model, "encode"):
            raise ConfigError([("model", f"model '{type(model).__name__}' cannot read texts; use a text model "
                                         f"({', '.join(names_for(MODELS, 'text'))})")])
        return model.encode([task.test.texts[i] for i in index.tolist()])

    def eval_masks(self, task, index: torch.Tensor, inputs) -> torch.Tensor | None:
        from .data.text import rationale_matrix

        rats = task.test.rationales
        if rats is None:
            return None
        return rationale_matrix([rats[i] for i in index.tolist()], inputs.n_words, inputs.max_words)

    def describe(self, task, inputs, model) -> dict[str, Any]:
        n_words = inputs.n_words.float()
        tokens = inputs.attention_mask.sum(1).float()
        return {
            "max_length": int(getattr(model, "max_length", 0) or 0),
            "mean_words": round(float(n_words.mean()), 2) if len(n_words) else 0.0,
            "mean_tokens": round(float(tokens.mean()), 2) if len(tokens) else 0.0,
            "truncated": int((tokens >= getattr(model, "max_length", 10**9)).sum()),
        }

    def write_examples(self, runner, name, task, index, preds, attributions, inputs) -> None:
        write_text_examples(runner.run_dir / "results" / "examples" / f"{name}.json", task, index, preds,
                            attributions, inputs)


def write_text_examples(path: Path, task, index: torch.Tensor, preds: torch.Tensor,
                        attributions: dict[str, torch.Tensor], inputs, n_examples: int = N_TEXT_EXAMPLES) -> None:
    """A few correct and incorrect predictions: words, rationale and every explainer's word scores."""
    labels = task.test.labels[index]
    correct = torch.nonzero(preds == labels).flatten()
    wrong = torch.nonzero(preds != labels).flatten()
    n_wrong = min(len(wrong), n_examples // 4 if len(correct) else n_examples)
    pick = torch.cat([correct[: n_examples - n_wrong], wrong[:n_wrong]]).tolist()
    rationales = task.test.rationales
    samples = []
    for j in pick:
        n = int(inputs.n_words[j])
        i = int(index[j])
        sample: dict[str, Any] = {
            "sample_id": int(task.test.ids[i]),
            "label": int(labels[j]),
            "pred": int(preds[j]),
            "words": list(inputs.words[j]),
            "n_words_total": len(task.test.texts[i].split()),
            "scores": {k: [round(float(v), 6) for v in a[j, :n].tolist()] for k, a in attributions.items()},
        }
        if rationales is not None:
            sample["rationale"] = [bool(v) for v in rationales[i][:n].tolist()]
        samples.append(sample)
    doc = {"modality": "text", "class_names": list(task.class_names), "explainers": list(attributions),
           "samples": samples}
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False))


MODALITIES = {"image": ImageModality(), "text": TextModality()}


def modality_for(task) -> ImageModality | TextModality:
    kind = getattr(task, "modality", "image")
    try:
        return MODALITIES[kind]
    except KeyError:
        raise ValueError(f"dataset '{getattr(task, 'name', '?')}' has modality '{kind}'; supported: "
                         f"{', '.join(MODALITIES)}") from None


# --------------------------------------------------------------------------- config checks


def _modalities_of(reg: Registry, name: str) -> tuple[str, ...]:
    if name not in reg:
        return ()  # unknown names are reported by the config validator
    value = reg.entry(name).meta.get("modality", "image")
    return (value,) if isinstance(value, str) else tuple(value)


def names_for(reg: Registry, modality: str) -> list[str]:
    return [e.name for e in reg if modality in _modalities_of(reg, e.name)]


def check_modalities(cfg) -> None:
    """Raise :class:`ConfigError` naming every model/explainer/metric that cannot handle a dataset's modality."""
    problems: list[tuple[str, str]] = []
    for di, d in enumerate(cfg.data):
        kinds = _modalities_of(DATASETS, d.name)
        if not kinds:
            continue
        kind = kinds[0]
        where = f"dataset '{d.name}' (data.{di}) is {kind}"
        items = [("model", MODELS, cfg.model)]
        items += [(f"explainers.{i}", EXPLAINERS, s) for i, s in enumerate(cfg.explainers)]
        items += [(f"metrics.{i}", METRICS, s) for i, s in enumerate(cfg.metrics)]
        for path, reg, spec in items:
            supported = _modalities_of(reg, spec.name)
            if supported and kind not in supported:
                kind_noun = reg.kind[:-1]
                hint = ""
                if reg is EXPLAINERS and spec.name == "diet" and kind == "text":
                    hint = " (DiET for text is 'text_diet')"
                problems.append((f"{path}.name", f"{kind_noun} '{spec.name}' supports {', '.join(supported)} "
                                 f"inputs only, but {where}{hint}; {kind} {reg.kind}: "
                                 f"{', '.join(names_for(reg, kind))}"))
    if problems:
        seen, unique = set(), []
        for p in problems:
            if p not in seen:
                seen.add(p)
                unique.append(p)
        raise ConfigError(unique)


__all__ = ["ImageModality", "TextModality", "modality_for", "check_modalities", "names_for",
           "write_text_examples"]
