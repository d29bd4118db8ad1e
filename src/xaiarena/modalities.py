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

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .files import atomic_write_bytes, atomic_write_text
from .ops.modes import eval_mode
from .ops.prediction import on_cpu, predict_in_batches
from .registry import DATASETS, EXPLAINERS, METRICS, MODELS, Registry

N_TEXT_EXAMPLES = 8
#: examples kept by a study with the per_image analysis (the LIME/Grad-CAM study shows 10 images)
N_PER_IMAGE_EXAMPLES = 12
N_IMAGE_EXAMPLES = 8


class ImageModality:
    """Images: float pixel tensors ``(N, C, H, W)`` in [0, 1]; ``(N, H, W)`` maps;
    ``results/examples/<dataset>.npz``."""

    name = "image"
    #: inputs that additive noise perturbs meaningfully (the input test of ``evaluation.meta``)
    continuous_inputs = True

    @torch.no_grad()
    def logits(
        self, model, split, index: torch.Tensor, device, batch_size: int = 512
    ) -> torch.Tensor:
        """The model's outputs ``(n, classes)`` (float32, CPU) on ``split[index]``."""
        with eval_mode(model):
            return predict_in_batches(
                model,
                index,
                batch_size,
                prepare=lambda idx: split.float_images(idx).to(device),
                keep=on_cpu,
            )

    def eval_inputs(self, task, index: torch.Tensor, model) -> torch.Tensor:
        return task.test.float_images(index)

    def eval_masks(self, task, index: torch.Tensor, inputs) -> torch.Tensor | None:
        return task.test.masks[index] if task.test.masks is not None else None

    def describe(self, task, inputs, model) -> dict[str, Any]:
        return {}  # run.json already records the input shape

    def write_examples(
        self,
        path: Path,
        task,
        index,
        preds,
        correct,
        attributions,
        inputs,
        model,
        n_examples: int = N_IMAGE_EXAMPLES,
    ) -> None:
        """A few correct and incorrect predictions with every explainer's map (``<path>.npz``); the
        samples' names (``sample_names``) where the dataset provides them."""
        labels = task.test.labels[index]
        pick = _example_rows(correct, n_examples)
        arrays: dict[str, np.ndarray] = {
            "images": task.test.images[index][pick].numpy(),
            "labels": labels[pick].numpy(),
            "preds": preds[pick].numpy(),
            "sample_ids": task.test.ids[index][pick].numpy(),
            "class_names": np.array(task.class_names),
        }
        if task.test.masks is not None:
            arrays["masks"] = task.test.masks[index][pick].numpy()
        names = task.test_names(torch.as_tensor(index)[pick])
        if names is not None:
            arrays["sample_names"] = np.array(names)
        arrays["correct"] = correct[pick].numpy()
        model_classes = getattr(model, "class_names", None)
        if model_classes is not None and list(model_classes) != list(task.class_names):
            arrays["pred_class_names"] = np.array(
                model_classes
            )  # predictions are in the model's classes
        for k, a in attributions.items():
            arrays[f"attr__{k}"] = a[pick].numpy().astype(np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())


def _example_rows(correct: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Rows of the examples: mostly correct predictions, a quarter incorrect ones where there are
    any."""
    right = torch.nonzero(correct).flatten()
    wrong = torch.nonzero(~correct).flatten()
    n_wrong = min(len(wrong), n_examples // 4 if len(right) else n_examples)
    return torch.cat([right[: n_examples - n_wrong], wrong[:n_wrong]])


class TextModality:
    """Texts: :class:`TextBatch` inputs; ``(N, L)`` word maps;
    ``results/examples/<dataset>.json``."""

    name = "text"
    continuous_inputs = (
        False  # token ids take no additive noise: evaluation.meta tests the model only
    )

    def logits(self, model, split, index: torch.Tensor, device) -> torch.Tensor:
        return model.predict_texts(
            [split.texts[i] for i in index.tolist()], device, return_logits=True
        )

    def eval_inputs(self, task, index: torch.Tensor, model):
        if not hasattr(model, "encode"):
            raise ConfigError(
                [
                    (
                        "model",
                        f"model '{type(model).__name__}' cannot read texts; use a text model "
                        f"({', '.join(names_for(MODELS, 'text'))})",
                    )
                ]
            )
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

    def write_examples(
        self,
        path: Path,
        task,
        index,
        preds,
        correct,
        attributions,
        inputs,
        model,
        n_examples: int = N_TEXT_EXAMPLES,
    ) -> None:
        write_text_examples(
            path.with_suffix(".json"),
            task,
            index,
            preds,
            attributions,
            inputs,
            n_examples,
            correct=correct,
        )


def write_text_examples(
    path: Path,
    task,
    index: torch.Tensor,
    preds: torch.Tensor,
    attributions: dict[str, torch.Tensor],
    inputs,
    n_examples: int = N_TEXT_EXAMPLES,
    correct: torch.Tensor | None = None,
) -> None:
    """A few correct and incorrect predictions: words, rationale and every explainer's word
    scores."""
    labels = task.test.labels[index]
    pick = _example_rows(preds == labels if correct is None else correct, n_examples).tolist()
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
            "scores": {
                k: [round(float(v), 6) for v in a[j, :n].tolist()] for k, a in attributions.items()
            },
        }
        if rationales is not None:
            sample["rationale"] = [bool(v) for v in rationales[i][:n].tolist()]
        samples.append(sample)
    doc = {
        "modality": "text",
        "class_names": list(task.class_names),
        "explainers": list(attributions),
        "samples": samples,
    }
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False))


MODALITIES = {"image": ImageModality(), "text": TextModality()}


def modality_for(task) -> ImageModality | TextModality:
    kind = getattr(task, "modality", "image")
    try:
        return MODALITIES[kind]
    except KeyError:
        raise ValueError(
            f"dataset '{getattr(task, 'name', '?')}' has modality '{kind}'; supported: "
            f"{', '.join(MODALITIES)}"
        ) from None


# --------------------------------------------------------------------------- config checks


def _modalities_of(reg: Registry, name: str) -> tuple[str, ...]:
    if name not in reg:
        return ()  # unknown names are reported by the config validator
    value = reg.entry(name).meta.get("modality", "image")
    return (value,) if isinstance(value, str) else tuple(value)


def names_for(reg: Registry, modality: str) -> list[str]:
    return [e.name for e in reg if modality in _modalities_of(reg, e.name)]


def modality_problems(
    kind: str, items: list[tuple[str, Registry, Any]], where: str
) -> list[tuple[str, str]]:
    """``(path, message)`` for every ``(path, registry, spec)`` whose component cannot handle
    ``kind`` (image or text) inputs; ``where`` says whose inputs they are
    (``dataset 'x' (data.0) is text``)."""
    problems = []
    for path, reg, spec in items:
        supported = _modalities_of(reg, spec.name)
        if supported and kind not in supported:
            kind_noun = reg.kind[:-1]
            hint = ""
            if reg is EXPLAINERS and spec.name == "diet" and kind == "text":
                hint = " (DiET for text is 'text_diet')"
            problems.append(
                (
                    f"{path}.name",
                    f"{kind_noun} '{spec.name}' supports {', '.join(supported)} "
                    f"inputs only, but {where}{hint}; {kind} {reg.kind}: "
                    f"{', '.join(names_for(reg, kind))}",
                )
            )
    return problems


def check_modalities(cfg) -> None:
    """Raise :class:`ConfigError` naming every model/explainer/metric that cannot handle a dataset's
    modality."""
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
        problems += modality_problems(kind, items, where)
    if problems:
        seen, unique = set(), []
        for p in problems:
            if p not in seen:
                seen.add(p)
                unique.append(p)
        raise ConfigError(unique)


__all__ = [
    "ImageModality",
    "TextModality",
    "modality_for",
    "check_modalities",
    "modality_problems",
    "names_for",
    "write_text_examples",
]
