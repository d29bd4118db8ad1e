"""One generic name -> factory registry for datasets, models, explainers and metrics.

Every pluggable component registers itself with a decorator::

    @EXPLAINERS.register("gradcam", description="Grad-CAM (Selvaraju et al. 2017)")
    class GradCAM(Explainer): ...

Metadata given to ``register`` (or read from class attributes named in
``meta_attrs``) is what ``xaiarena list --json`` prints, with the entry's ``origin``:
``builtin``, or the plugin that registered it (see :mod:`xaiarena.plugins`). Unknown
names raise a :class:`~xaiarena.errors.UnknownNameError` with a "did you mean" suggestion.

A component that reads user files declares ``fingerprint=`` (a function of its options
returning a string that changes when those files change); the runner puts it into the
component's cache key (:meth:`Entry.fingerprint_of`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import UnknownNameError, suggest  # noqa: F401  (suggest: re-exported)
from .plugins import current_origin, load_installed_plugins


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    meta: dict[str, Any] = field(default_factory=dict)
    reserved: tuple[str, ...] = ()
    origin: str = "builtin"
    fingerprint: Callable[..., str | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            **self.meta,
            "origin": self.origin,
        }

    def fingerprint_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"files": <fingerprint>}`` of the user files the component reads with ``params``, for
        cache keys; ``{}`` when it declares no ``fingerprint`` (keys of built-ins stay as they
        were)."""
        if self.fingerprint is None:
            return {}
        return {"files": self.fingerprint(**params)}

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword parameters the factory accepts (used to validate config options)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        params = inspect.signature(target).parameters
        return {
            n: p
            for n, p in params.items()
            if n != "self"
            and n not in self.reserved
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def accepts_any_kwargs(self) -> bool:
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def _origin_of(factory: Callable[..., Any]) -> str:
    origin = current_origin()
    if origin:
        return origin
    module = getattr(factory, "__module__", "") or ""
    return "builtin" if module == "xaiarena" or module.startswith("xaiarena.") else module


class Registry:
    """A named collection of factories.

    ``kind`` is the plural noun used in messages ("explainers"). ``modules`` are
    imported lazily on first lookup so that registering happens on import of the
    implementation modules without import cycles.
    """

    def __init__(
        self,
        kind: str,
        modules: tuple[str, ...] = (),
        meta_attrs: tuple[str, ...] = (),
        reserved: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.reserved = reserved  # arguments the framework passes, never set from a config
        self._entries: dict[str, Entry] = {}
        self._modules = modules
        self._meta_attrs = meta_attrs
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._modules:
                importlib.import_module(mod)
        # entry points (group xaiarena.plugins) and $XAIARENA_PLUGINS, once per process, after every
        # registry's built-ins (so that a name clash is reported against the plugin)
        load_installed_plugins(before=load_builtins)

    def register(
        self,
        name: str,
        *,
        description: str = "",
        fingerprint: Callable[..., str | None] | None = None,
        **meta: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            origin = _origin_of(factory)
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(
                    f"{self.kind[:-1]} '{name}' is registered twice (by "
                    f"{self._entries[name].origin} and by {origin}); rename one"
                )
            desc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            full_meta = {a: getattr(factory, a) for a in self._meta_attrs if hasattr(factory, a)}
            full_meta.update(meta)
            self._entries[name] = Entry(
                name, factory, desc, full_meta, self.reserved, origin, fingerprint
            )
            return factory

        return deco

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._load()
        return iter(self._entries[n] for n in sorted(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                self.kind, name, self.names(), suggest(name, self.names())
            ) from None

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).factory

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def describe(self) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self]


DATASETS = Registry("datasets", modules=("xaiarena.data",), reserved=("seed", "data_dir"))
MODELS = Registry("models", modules=("xaiarena.models",), reserved=("task",))
EXPLAINERS = Registry(
    "explainers",
    modules=("xaiarena.explainers",),
    meta_attrs=("family", "modality", "needs_layer", "explains"),
)
METRICS = Registry(
    "metrics",
    modules=("xaiarena.metrics",),
    meta_attrs=(
        "category",
        "higher_is_better",
        "modality",
        "value_range",
        "requires",
        "default_outputs",
    ),
)

REGISTRIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "models": MODELS,
    "explainers": EXPLAINERS,
    "metrics": METRICS,
}


def load_builtins() -> None:
    """Import every registry's built-in components (before plugins, so clashes name the plugin)."""
    for reg in REGISTRIES.values():
        reg._load()


# neuron dissection (xaiarena.dissect): listed under "dissect" by ``xaiarena list``
_DISSECT_MODULES = (
    "xaiarena.dissect.concepts",
    "xaiarena.dissect.scorers",
    "xaiarena.dissect.similarity",
)
CONCEPT_SETS = Registry("concept sets", modules=_DISSECT_MODULES, reserved=("task",))
CONCEPT_SCORERS = Registry("concept scorers", modules=_DISSECT_MODULES)
SIMILARITIES = Registry(
    "similarity functions",
    modules=_DISSECT_MODULES,
    reserved=("activations", "scores", "generator"),
)

DISSECT_REGISTRIES: dict[str, Registry] = {
    "concept_sets": CONCEPT_SETS,
    "scorers": CONCEPT_SCORERS,
    "similarities": SIMILARITIES,
}
