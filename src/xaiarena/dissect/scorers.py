"""Concept scorers: the concept-image matrix ``P`` (probe images x concepts).

``clip``
    CLIP-Dissect's ``P``: cosine similarity of each probe image's CLIP image embedding and each
    concept's CLIP text embedding (both L2-normalised, then a dot product), from a
    transformers ``CLIPModel`` given by Hub id or local folder. The text of a concept is
    ``prompt.format(concept)``; the authors' code encodes the bare concept (``"{}"``, the
    default). Images go through the model's own ``CLIPImageProcessor`` (resize, centre crop,
    normalise); grey images are repeated to RGB.
``open_clip``
    The same with an ``open_clip`` model (optional: ``pip install open_clip_torch``).
``annotations``
    Ground truth instead of CLIP: ``P[i, c] = 1`` when image i carries concept c, else 0.
    Concepts come from what the dataset has: the class label of every image (``class``);
    for datasets that declare single-coloured objects with masks (hard_mnist:
    ``task.meta["single_colour_objects"]``), the colour name of the object (``colour``, see
    :func:`colour_name`); for datasets that list the classes present in each image (VOC:
    ``task.meta["image_classes"]``), those classes (``segmentation``). With the dataset's
    class names as concepts, output neuron k of a good classifier must be labelled k:
    a check of the whole pipeline with a known answer and no CLIP.

A scorer that cannot be loaded (no CLIP weights offline, optional package missing) raises
:class:`ScorerUnavailableError`, whose message says how to get one.
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import XaiArenaError
from ..ops.validation import (
    COUNT,
    ListOf,
    Null,
    OneOf,
    OptionError,
    Satisfies,
    set_options,
    validate_options,
)
from ..progress import progress
from ..registry import CONCEPT_SCORERS
from .probe import Probe

log = logging.getLogger(__name__)

#: ``cached(kind, inputs, compute)``: the artefact ``kind`` keyed by ``inputs`` from the run's
#: cache, else ``compute()`` (saved there); the dissect runner passes one built on the engine's
#: cache
Cached = Callable[[str, dict[str, Any], Callable[[], Any]], Any]


def _uncached(kind: str, inputs: dict[str, Any], compute: Callable[[], Any]) -> Any:
    return compute()


DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # the authors' default CLIP (ViT-B/16)
ANNOTATION_KINDS = ("class", "colour", "segmentation")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta", "white", "grey", "black")


class ScorerUnavailableError(XaiArenaError):
    """The scorer's model or package is not available here; ``option`` names the config option."""

    def __init__(self, message: str, option: str = "model"):
        self.option = option
        self.message = message
        super().__init__(message)


class ConceptScorer:
    """Base class: ``score(probe, concepts) -> (N, K)`` float32 tensor."""

    name: ClassVar[str] = ""

    def fingerprint(self) -> dict[str, Any]:
        """What the scores depend on besides the probe and the concepts (for cache keys)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def score(
        self,
        probe: Probe,
        concepts: list[str],
        *,
        device: torch.device | str = "cpu",
        cached: Cached | None = None,
        show_progress: bool = True,
    ) -> torch.Tensor:
        """``P`` for the probe images and ``concepts``; ``cached`` (see :data:`Cached`) stores what
        is expensive (embeddings), keyed by what it depends on; None computes everything."""
        raise NotImplementedError


#: the ``prompt`` option of the embedding scorers
PROMPT = Satisfies(
    lambda v: isinstance(v, str) and v.count("{}") == 1,
    "a text with one '{}' where the concept goes (the paper: '{}', the bare "
    "concept; e.g. 'a photo of a {}')",
    invalid=["a photo", "{} and {}"],
)


def _rgb_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 (N, C, H, W) -> list of (H, W, 3) uint8 arrays (grey repeated)."""
    x = images if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
    return list(x.permute(0, 2, 3, 1).contiguous().numpy())


class _EmbeddingScorer(ConceptScorer):
    """Cosine similarity of image and text embeddings; subclasses load a model and embed."""

    model: str
    prompt: str
    batch_size: int

    def _load(self, device: torch.device) -> None:
        raise NotImplementedError

    def _embed_images(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def _embed_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def image_embeddings(self, probe: Probe, device, show_progress: bool = True) -> torch.Tensor:
        self._load(device)
        out = []
        images = probe.images
        for i in progress(
            range(0, len(images), self.batch_size),
            desc=f"{self.name} images",
            disable=not show_progress,
        ):
            with torch.no_grad():
                out.append(
                    self._embed_images(images[i : i + self.batch_size], device).float().cpu()
                )
        return torch.cat(out)

    def text_embeddings(
        self, concepts: list[str], device, show_progress: bool = True
    ) -> torch.Tensor:
        self._load(device)
        texts = [self.prompt.format(c) for c in concepts]
        out = []
        for i in progress(
            range(0, len(texts), self.batch_size),
            desc=f"{self.name} texts",
            disable=not show_progress,
        ):
            with torch.no_grad():
                out.append(self._embed_texts(texts[i : i + self.batch_size], device).float().cpu())
        return torch.cat(out)

    def score(
        self,
        probe: Probe,
        concepts: list[str],
        *,
        device="cpu",
        cached: Cached | None = None,
        show_progress: bool = True,
    ) -> torch.Tensor:
        device = torch.device(device)
        cached = cached or _uncached
        model_key = self.fingerprint()
        model_key.pop("batch_size", None)  # batching does not change the embeddings
        text_key = dict(model_key)
        model_key.pop("prompt", None)
        img = cached(
            "image_embeddings",
            {"scorer": model_key, "probe": probe.key},
            lambda: self.image_embeddings(probe, device, show_progress),
        )
        txt = cached(
            "text_embeddings",
            {"scorer": text_key, "concepts": concepts},
            lambda: self.text_embeddings(concepts, device, show_progress),
        )
        img = img / img.norm(dim=1, keepdim=True).clamp_min(1e-12)
        txt = txt / txt.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return img @ txt.T


def _clip_missing(model: str, exc: BaseException) -> ScorerUnavailableError:
    return ScorerUnavailableError(
        f"CLIP model '{model}' could not be loaded ({type(exc).__name__}: "
        f"{str(exc).strip()[:300]}). Get one of: (1) a Hugging Face Hub id such as "
        f"'{DEFAULT_CLIP}' (the paper's ViT-B/16), downloaded once into the Hugging Face cache on "
        "a machine online (unset HF_HUB_OFFLINE), then usable offline; (2) a local folder written "
        "by CLIPModel.save_pretrained plus the processor's save_pretrained (config.json, the "
        "weights, tokenizer and preprocessor_config.json), given as dissect.scorer.model; (3) pip "
        "install open_clip_torch and scorer 'open_clip'. Without CLIP, the 'annotations' scorer "
        "dissects offline with the dataset's ground truth."
    )


@CONCEPT_SCORERS.register(
    "clip",
    description="CLIP-Dissect's P: cosine similarity of CLIP image and text embeddings "
    f"(transformers CLIPModel by Hub id or local folder; default {DEFAULT_CLIP}); prompt '{{}}' = "
    "the bare concept as in the paper",
    needs_model=True,
)
class ClipScorer(_EmbeddingScorer):
    """transformers ``CLIPModel`` + its tokenizer and image processor, by Hub id or local folder."""

    name = "clip"
    option_constraints: ClassVar[dict] = {
        "model": Satisfies(
            lambda v: isinstance(v, str) and bool(v.strip()),
            "a Hugging Face Hub id or a local folder",
            invalid=[" "],
        ),
        "prompt": PROMPT,
        "batch_size": COUNT,
    }

    def __init__(self, model: str = DEFAULT_CLIP, prompt: str = "{}", batch_size: int = 64):
        set_options(self, model=model, prompt=prompt, batch_size=batch_size)
        self._loaded: tuple | None = None

    def _load(self, device: torch.device) -> None:
        if self._loaded is not None:
            return
        try:
            from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        except ImportError as exc:  # pragma: no cover - transformers is a dependency
            raise ScorerUnavailableError(
                f"scorer 'clip' needs transformers: pip install transformers ({exc})"
            ) from exc
        try:
            net = CLIPModel.from_pretrained(self.model)
            tokenizer = AutoTokenizer.from_pretrained(self.model)
            processor = AutoImageProcessor.from_pretrained(self.model)
        except (OSError, ValueError) as exc:
            raise _clip_missing(self.model, exc) from exc
        net.eval().to(device)
        for p in net.parameters():
            p.requires_grad_(False)
        max_len = getattr(net.config.text_config, "max_position_embeddings", 77)
        self._loaded = (net, tokenizer, processor, max_len)

    def _embed_images(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        net, _, processor, _ = self._loaded
        pixels = processor(images=_rgb_arrays(images), return_tensors="pt")["pixel_values"]
        return _features(net.get_image_features(pixel_values=pixels.to(device)))

    def _embed_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        net, tokenizer, _, max_len = self._loaded
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return _features(
            net.get_text_features(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
            )
        )


def _features(out: Any) -> torch.Tensor:
    """transformers < 5 returns the projected features, >= 5 an output whose pooler_output they
    are."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@CONCEPT_SCORERS.register(
    "open_clip",
    description="CLIP-Dissect's P from an open_clip model (optional: pip install open_clip_torch; "
    "model and pretrained tag, e.g. ViT-B-16 / openai)",
    needs_model=True,
)
class OpenClipScorer(_EmbeddingScorer):
    """``open_clip.create_model_and_transforms(model, pretrained=pretrained)``."""

    name = "open_clip"
    option_constraints: ClassVar[dict] = {"prompt": PROMPT, "batch_size": COUNT}

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str = "openai",
        prompt: str = "{}",
        batch_size: int = 64,
    ):
        self.model = model
        self.pretrained = pretrained
        set_options(self, prompt=prompt, batch_size=batch_size)
        self._loaded: tuple | None = None

    def _load(self, device: torch.device) -> None:
        if self._loaded is not None:
            return
        try:
            import open_clip
        except (
            Exception
        ) as exc:  # not installed, or it fails to import (e.g. a torchvision mismatch)
            raise ScorerUnavailableError(
                "scorer 'open_clip' needs the open_clip package, which could not be imported "
                f"({type(exc).__name__}: {exc}); pip install open_clip_torch, or use scorer 'clip' "
                "(transformers) or 'annotations'"
            ) from exc
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                self.model, pretrained=self.pretrained
            )
            tokenizer = open_clip.get_tokenizer(self.model)
        except Exception as exc:
            raise ScorerUnavailableError(
                f"open_clip model '{self.model}' with pretrained '{self.pretrained}' could not be "
                f"loaded ({type(exc).__name__}: {str(exc)[:300]}); check "
                "open_clip.list_pretrained(), and that the weights were downloaded once online (or "
                "give a local checkpoint path as pretrained)"
            ) from exc
        net.eval().to(device)
        self._loaded = (net, tokenizer, preprocess)

    def _embed_images(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        from PIL import Image

        net, _, preprocess = self._loaded
        batch = torch.stack([preprocess(Image.fromarray(a)) for a in _rgb_arrays(images)])
        return net.encode_image(batch.to(device))

    def _embed_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        net, tokenizer, _ = self._loaded
        return net.encode_text(tokenizer(texts).to(device))


# --------------------------------------------------------------------------- annotations


def colour_name(rgb) -> str:
    """Name of an RGB colour in [0, 1]: by HSV, saturation < 0.25 is white (value >= 0.75), grey
    (>= 0.25) or black; otherwise the nearest of six hues: red 0, yellow 60, green 120, cyan 180,
    blue 240, magenta 300 degrees (each bin +-30 degrees)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if s < 0.25:
        return "white" if v >= 0.75 else ("grey" if v >= 0.25 else "black")
    return ("red", "yellow", "green", "cyan", "blue", "magenta")[int(((h * 360 + 30) % 360) // 60)]


def object_colours(images: torch.Tensor, masks: torch.Tensor) -> list[str | None]:
    """Colour name of the masked object in each image: the median colour of its brightest masked
    pixels (maximum channel within 5% of the object's brightest), so anti-aliased edges blended with
    the background do not count; None for an empty mask."""
    out: list[str | None] = []
    x = images.float() / 255.0
    for img, m in zip(x, masks.bool(), strict=True):
        px = img[:, m]  # (3, P)
        if px.shape[1] == 0:
            out.append(None)
            continue
        bright = px.amax(0)
        keep = px[:, bright >= 0.95 * bright.max()]
        out.append(colour_name(keep.median(dim=1).values.tolist()))
    return out


def _kinds_available(task) -> list[str]:
    kinds = ["class"]
    if task.meta.get("single_colour_objects"):
        kinds.append("colour")
    if task.meta.get("image_classes"):
        kinds.append("segmentation")
    return kinds


def available_annotations(task, kinds: list[str] | None = None) -> list[str]:
    """Concept names the dataset's ground truth can give (for the kinds it has)."""
    have = _kinds_available(task)
    out: list[str] = []
    for kind in kinds or have:
        if kind not in have:
            continue
        if kind == "class":
            out += list(task.class_names)
        elif kind == "colour":
            out += list(COLOURS)
        else:
            out += [c for c in task.class_names if c != "background"]
    return list(dict.fromkeys(out))


@CONCEPT_SCORERS.register(
    "annotations",
    description="P from the probe dataset's ground truth, offline: 1 where the image has the "
    "concept (its class label; hard_mnist's digit colour; VOC classes present in the image), else "
    "0",
    needs_model=False,
)
class AnnotationScorer(ConceptScorer):
    """0/1 concept matrix from ground truth; ``kinds`` limits it to some of class, colour,
    segmentation."""

    name = "annotations"
    option_constraints: ClassVar[dict] = {
        "kinds": [ListOf(OneOf(ANNOTATION_KINDS)), Null("all the dataset has")],
    }

    def __init__(self, kinds: list[str] | None = None):
        validate_options(self.name, self.option_constraints, {"kinds": kinds})
        self.kinds = None if kinds is None else list(dict.fromkeys(kinds))

    def _kinds(self, task) -> list[str]:
        have = _kinds_available(task)
        kinds = list(self.kinds or have)
        missing = [k for k in kinds if k not in have]
        if missing:
            raise OptionError(
                self.name,
                "kinds",
                f"{self.name}: dataset '{task.name}' has no "
                f"'{missing[0]}' annotations; it has: {', '.join(have)}",
                self.kinds,
            )
        return kinds

    def image_concepts(self, probe: Probe) -> list[set[str]]:
        """The set of concept names each probe image carries."""
        task = probe.task
        kinds = self._kinds(task)
        sets: list[set[str]] = [set() for _ in range(len(probe))]
        if "class" in kinds:
            for s, y in zip(sets, probe.labels.tolist(), strict=True):
                s.add(task.class_names[int(y)])
        if "colour" in kinds:
            if probe.masks is None:
                raise ValueError(
                    f"dataset '{task.name}' declares object colours but its '{probe.split}' split "
                    "has no masks"
                )
            for s, c in zip(sets, object_colours(probe.images, probe.masks), strict=True):
                if c is not None:
                    s.add(c)
        if "segmentation" in kinds:
            per_image = task.meta["image_classes"].get(probe.split)
            if per_image is None:
                splits = ", ".join(task.meta["image_classes"])
                raise OptionError(
                    self.name,
                    "dissect.split",
                    f"dataset '{task.name}' lists the classes in its images for "
                    f"split(s) {splits}, not '{probe.split}'",
                )
            for s, i in zip(sets, probe.index.tolist(), strict=True):
                s.update(
                    task.class_names[int(c)]
                    for c in per_image[i]
                    if task.class_names[int(c)] != "background"
                )
        return sets

    def score(
        self,
        probe: Probe,
        concepts: list[str],
        *,
        device="cpu",
        cached: Cached | None = None,
        show_progress: bool = True,
    ) -> torch.Tensor:
        known = available_annotations(probe.task, self._kinds(probe.task))
        unknown = [c for c in concepts if c not in known]
        if unknown:
            shown = ", ".join(unknown[:10]) + (
                f", ... ({len(unknown)} in all)" if len(unknown) > 10 else ""
            )
            raise OptionError(
                self.name,
                "dissect.concepts",
                "the annotations scorer has no ground truth for concept(s) "
                f"{shown} in dataset '{probe.task.name}'; it knows: "
                f"{', '.join(known)} "
                "(use concepts: annotations or dataset_classes, or a CLIP scorer for "
                "open vocabularies)",
            )
        col = {c: j for j, c in enumerate(concepts)}

        def compute() -> torch.Tensor:
            p = torch.zeros(len(probe), len(concepts))
            for i, s in enumerate(self.image_concepts(probe)):
                for c in s:
                    if c in col:
                        p[i, col[c]] = 1.0
            return p

        cached = cached or _uncached
        return cached(
            "annotation_scores",
            {"scorer": self.fingerprint(), "probe": probe.key, "concepts": concepts},
            compute,
        )


def build_scorer(name: str, params: dict[str, Any]) -> ConceptScorer:
    return CONCEPT_SCORERS.create(name, **params)
