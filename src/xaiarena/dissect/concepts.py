"""Concept sets: the words a neuron can be labelled with.

``words``
    The ``n`` most common English words (CLIP-Dissect's default concept set is the 20,000
    most common English words). Taken offline from the ``wordfreq`` package
    (``pip install wordfreq``, in the ``dissect`` extra): ``wordfreq.top_n_list("en", ...)``
    in frequency order, keeping alphabetic entries only (it also lists digits and
    contractions such as "don't"), until ``n`` words. This is not the authors' file (theirs
    comes from the google-10000-english lists) but the same kind of list.
``imagenet_classes``
    The 1,000 ImageNet-1k class names shipped with xaiarena (``models/imagenet_classes.txt``),
    underscores read as spaces.
``dataset_classes``
    The probe dataset's class names (for hard_mnist the digits "0" to "9").
``annotations``
    Every concept the ``annotations`` scorer can read from the probe dataset's ground truth
    (class names, hard_mnist colours, VOC classes present in the image).
``file``
    One concept per line of a UTF-8 text file; blank lines and lines starting with ``#`` are
    skipped.
``list``
    The concepts given inline (``items: [dog, cat, ...]``).

Every set is stripped of surrounding white space and of repeats (first occurrence kept), so
no two columns of the concept matrix share a name.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import CONCEPT_SETS


def unique(concepts) -> list[str]:
    """Concepts stripped, without empty entries and repeats, in first-seen order."""
    seen: dict[str, None] = {}
    for c in concepts:
        c = str(c).strip()
        if c and c not in seen:
            seen[c] = None
    return list(seen)


@CONCEPT_SETS.register(
    "words",
    description="The n most common English words (CLIP-Dissect's default, n=20000), "
    "offline from the wordfreq package (pip install wordfreq); alphabetic words only",
)
def words(n: int = 20000) -> list[str]:
    """The ``n`` most frequent alphabetic English words of ``wordfreq``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is not valid; give an integer >= 1 (the paper: 20000)")
    try:
        import wordfreq
    except ImportError as exc:
        raise ImportError(
            "concept set 'words' needs the wordfreq package: pip install wordfreq "
            "(or pip install 'xaiarena[dissect]'); or use another concept set "
            "(imagenet_classes, dataset_classes, file)"
        ) from exc
    size = max(2 * n, 1000)
    while True:
        ranked = wordfreq.top_n_list("en", size)
        kept = [w for w in ranked if w.isalpha()]
        if len(kept) >= n or len(ranked) < size:
            break
        size *= 2
    if len(kept) < n:
        raise ValueError(
            f"wordfreq lists only {len(kept)} alphabetic English words; n={n} is too large"
        )
    return unique(kept[:n])


@CONCEPT_SETS.register(
    "imagenet_classes", description="The 1,000 ImageNet-1k class names (shipped with xaiarena)"
)
def imagenet_classes() -> list[str]:
    from ..models.pretrained import imagenet_classes as names

    return unique(n.replace("_", " ") for n in names())


@CONCEPT_SETS.register("dataset_classes", description="The probe dataset's class names")
def dataset_classes(task) -> list[str]:
    return unique(task.class_names)


@CONCEPT_SETS.register(
    "annotations",
    description="Every concept the probe dataset's ground truth gives the "
    "annotations scorer (class names; hard_mnist colours; VOC classes in the image)",
)
def annotations(task) -> list[str]:
    from .scorers import available_annotations

    return unique(available_annotations(task))


@CONCEPT_SETS.register(
    "file",
    description="A text file with one concept per line (# comments and blank lines skipped)",
    from_options=True,
)
def file(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"concept file '{p}' does not exist")
    lines = [
        ln for ln in p.read_text(encoding="utf-8").splitlines() if not ln.strip().startswith("#")
    ]
    out = unique(lines)
    if not out:
        raise ValueError(f"concept file '{p}' holds no concepts")
    return out


@CONCEPT_SETS.register(
    "list", description="Concepts given inline (items: [...])", from_options=True
)
def list_(items: list[str]) -> list[str]:
    out = unique(items)
    if not out:
        raise ValueError("concept set 'list' needs at least one item")
    return out


#: the fewest concepts a set must hold (labelling picks one of them per neuron)
MIN_CONCEPTS = 2


def too_few(name: str, concepts: list[str]) -> str | None:
    """Why the concept set ``name`` cannot label neurons (fewer than :data:`MIN_CONCEPTS`)."""
    if len(concepts) < MIN_CONCEPTS:
        return (
            f"concept set '{name}' has {len(concepts)} concept(s); labelling needs at least "
            f"{MIN_CONCEPTS}"
        )
    return None


def build_concepts(name: str, params: dict, task) -> list[str]:
    """The registered concept set ``name`` with ``params`` (``task`` passed to those that need
    it)."""
    entry = CONCEPT_SETS.entry(name)
    kwargs = dict(params)
    if "task" in _params(entry.factory):
        kwargs["task"] = task
    return entry.factory(**kwargs)


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)
