"""The ``dissect:`` section of an experiment config (neuron labelling, ``xaiarena dissect``).

::

    dissect:
      layers: [features.1, classifier.2]   # module paths (``net.`` prefix optional)
      split: test                          # which split of the (first) dataset is the probe set
      n_images: 1000                       # seeded subset of it; null = all
      concepts: dataset_classes            # words | imagenet_classes | dataset_classes |
                                           #   annotations | file | list
      scorer: annotations                  # clip | open_clip | annotations
      similarity: soft_wpmi                # soft_wpmi | wpmi | rank_reorder |
                                           #   cos_similarity_cubed | cos_similarity
      pool: avg                            # conv channels: spatial mean (the paper) or max
      top: 5                               # concepts per neuron in results/neurons.csv

Components take options like any other (``{name: soft_wpmi, top_k: 50}``), checked against
the registered function's signature and, for similarity functions, against their ranges.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.components import ComponentSpec, StrictModel, check_component
from ..registry import CONCEPT_SCORERS, CONCEPT_SETS, SIMILARITIES

DEFAULTS = {"concepts": "words", "scorer": "clip", "similarity": "soft_wpmi"}


def _with_default_names(section: dict[str, Any]) -> dict[str, Any]:
    """A component given only by options (``--set dissect.similarity.top_k=50``) keeps its default
    name."""
    out = dict(section)
    for key, name in DEFAULTS.items():
        if isinstance(out.get(key), dict) and "name" not in out[key]:
            out[key] = {"name": name, **out[key]}
    return out


class DissectConfig(StrictModel):
    layers: list[str] = Field(min_length=1)
    split: Literal["train", "test"] = "test"
    n_images: int | None = Field(None, ge=1)
    concepts: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="words"))
    scorer: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="clip"))
    similarity: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="soft_wpmi"))
    pool: Literal["avg", "max"] = "avg"
    top: int = Field(5, ge=1, le=50)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, value: Any) -> Any:
        return _with_default_names(value) if isinstance(value, dict) else value

    @field_validator("layers", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("layers")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise ValueError(f"layer '{seen[0]}' is listed twice")
        return value


def dissect_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Component names and options of the ``dissect:`` section, checked against the registries."""
    section = raw.get("dissect")
    if not isinstance(section, dict):
        return []
    section = _with_default_names(section)
    problems: list[tuple[str, str]] = []
    for key, reg in (
        ("concepts", CONCEPT_SETS),
        ("scorer", CONCEPT_SCORERS),
        ("similarity", SIMILARITIES),
    ):
        try:
            spec = ComponentSpec.model_validate(section.get(key, DEFAULTS[key]))
        except ValidationError:
            continue  # reported by the model validation
        n_before = len(problems)
        check_component(
            reg, spec, f"dissect.{key}", problems
        )  # name (did you mean), option names, types
        if spec.name not in reg:
            continue
        options_ok = len(problems) == n_before
        if key == "similarity":
            from .options import option_problems

            valid = reg.entry(spec.name).parameters()
            reported = {path for path, _ in problems}
            problems += [
                (f"dissect.similarity.{k}", m)
                for k, m in option_problems(spec.name, spec.params)
                if k in valid and f"dissect.similarity.{k}" not in reported
            ]
        elif key == "scorer":
            from .options import OptionError
            from .scorers import build_scorer

            try:  # construction checks options and loads nothing
                build_scorer(spec.name, spec.params)
            except OptionError as exc:
                problems.append((f"dissect.scorer.{exc.option}", exc.message))
            except (ValueError, TypeError):
                pass  # unknown options or bad types: reported by check_component above
        elif key == "concepts" and spec.name == "file" and "path" in spec.params:
            from pathlib import Path

            path = Path(str(spec.params["path"])).expanduser()
            if not path.is_file():
                problems.append(
                    (
                        "dissect.concepts.path",
                        f"bad value {str(spec.params['path'])!r}: no such file",
                    )
                )
            elif options_ok:
                problems += _concept_problems(spec)
        elif key == "concepts" and options_ok and reg.entry(spec.name).meta.get("from_options"):
            problems += _concept_problems(spec)
    return problems


def _concept_problems(spec: ComponentSpec) -> list[tuple[str, str]]:
    """A concept set whose concepts come from its options (``list``, ``file``: registry meta
    ``from_options``) is built at config time: an empty or one-concept set fails before any model
    work."""
    from .concepts import build_concepts, too_few

    try:
        concepts = build_concepts(spec.name, spec.params, None)
    except (ValueError, TypeError, OSError, UnicodeDecodeError) as exc:
        return [("dissect.concepts", f"concept set '{spec.name}': {exc}")]
    why = too_few(spec.name, concepts)
    return [("dissect.concepts", why)] if why else []
