"""Third-party components: plugins, and the user code that configs name.

A *plugin* is Python code that registers datasets, models, explainers or metrics in
xaiarena's registries (``@EXPLAINERS.register(...)`` etc., as the built-ins do). It is
loaded in one of three ways:

* **Entry points.** An installed distribution declares, in its ``pyproject.toml``::

      [project.entry-points."xaiarena.plugins"]
      my_plugin = "my_package.xaiarena_plugin"          # a module to import
      # or: my_plugin = "my_package:register"            # a function to call (no arguments)

  Every entry point of the group ``xaiarena.plugins`` is loaded the first time any
  registry is used (after the built-ins, so a clashing name is reported against the
  plugin). ``XAIARENA_NO_PLUGINS=1`` skips them (to get past a broken plugin).
* **Configs.** A top-level ``plugins: [my_package.xaiarena_plugin, ./my_methods.py]``
  imports those modules (by name, or by file path) before the config is validated, so
  their names validate like built-in ones.
* **The environment.** ``XAIARENA_PLUGINS=mod1,path/to/file.py`` imports them with the
  entry points (e.g. so that ``xaiarena list`` shows a config-only plugin).

Every registered component records its ``origin``: ``builtin``, the distribution name
(entry points), or the module name or file path (configs, environment); ``xaiarena
list`` shows it. A plugin that fails to import raises :class:`PluginError` naming it.

User code named in options (``factory: "package.module:function"`` or
``"/path/to/file.py:function"`` of the ``torch_module`` model) is resolved by
:func:`resolve_ref`. A file path is imported as a module of its own (its folder is
appended to ``sys.path`` so that it can import modules next to it); relative paths are
relative to the working directory. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ConfigError, suggest

ENTRY_POINT_GROUP = "xaiarena.plugins"
ENV_PLUGINS = "XAIARENA_PLUGINS"
ENV_NO_PLUGINS = "XAIARENA_NO_PLUGINS"


class PluginError(ConfigError):
    """A plugin (entry point, config ``plugins:`` item or ``$XAIARENA_PLUGINS`` item) failed to
    load."""

    def __init__(
        self, message: str, key: str = "plugins", more: list[tuple[str, str]] | None = None
    ):
        self.message = message
        super().__init__([(key, message), *(more or [])])

    @classmethod
    def of(cls, problems: list[tuple[str, str]]) -> PluginError:
        """One error holding every ``(key, message)`` problem (several broken plugins at once)."""
        (key, message), *more = problems
        return cls(message, key, more)


class _State:
    done = False
    error: PluginError | None = None


_installed = _State()


# --------------------------------------------------------------------------- importing user code


def is_file_ref(ref: str) -> bool:
    """Whether ``ref`` names a ``.py`` file (rather than a module)."""
    return ref.endswith(".py") or "/" in ref or os.sep in ref


class UserCodeExit(Exception):
    """User code (a plugin or factory module being imported, a factory being called) tried to end
    the process: ``sys.exit()``, or argparse on an argument list that is not its own."""


@contextmanager
def user_code(what: str) -> Iterator[None]:
    """The one guard around user code (importing plugins and factory modules, calling factories).

    Inside it, ``sys.argv`` is ``[what]`` (a module that parses arguments at import sees none, not
    xaiarena's ``run config.yaml ...``; restored afterwards) and what the code writes to stderr is
    held back: replayed when it succeeds, summed up in the error when it exits. A ``SystemExit``
    becomes :class:`UserCodeExit` (an ``Exception``), so callers turn it, like any exception the
    code raises, into one error line naming the module. ``KeyboardInterrupt`` passes through.
    """
    argv, stderr = sys.argv, sys.stderr
    held = io.StringIO()
    sys.argv, sys.stderr = [what], held
    failed = True
    try:
        yield
        failed = False
    except SystemExit as exc:
        said = [ln.strip() for ln in held.getvalue().splitlines() if ln.strip()]
        last = f": {said[-1][:300]}" if said else ""
        parsing = any(ln.startswith("usage:") for ln in said)
        how = (
            "parsed command-line arguments and exited"
            if parsing
            else f"called sys.exit({exc.code!r})"
        )
        raise UserCodeExit(
            f"{how}{last} (user code must not end the process: a module run as a "
            "script belongs under if __name__ == '__main__':)"
        ) from None
    finally:
        sys.argv, sys.stderr = argv, stderr
        if not failed and held.getvalue():
            stderr.write(held.getvalue())


def import_module_or_file(ref: str) -> types.ModuleType:
    """Import the module ``ref`` (``package.module``) or the Python file ``ref`` (``path/file.py``),
    under :func:`user_code`.

    A file is imported once per path as module ``_xaiarena_user_<stem>_<hash of path>``.
    Raises ``FileNotFoundError``/``ImportError``, :class:`UserCodeExit` or what the module raises.
    """
    if not is_file_ref(ref):
        with user_code(ref):
            return importlib.import_module(ref)
    path = Path(ref).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"file '{ref}' does not exist (relative paths are relative to {Path.cwd()})"
        )
    name = f"_xaiarena_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ImportError(f"cannot import '{path}'")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(
            str(path.parent)
        )  # sibling modules importable; appended, so it shadows nothing
    sys.modules[name] = module
    try:
        with user_code(ref):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def resolve_ref(ref: Any, key: str) -> Any:
    """The object ``ref`` names: ``"package.module:attr"`` or ``"/path/to/file.py:attr"``
    (``attr`` may be dotted). Problems raise :class:`ConfigError` at ``key``."""
    form = "'package.module:function' or '/path/to/file.py:function'"
    if not isinstance(ref, str) or ":" not in ref.strip(":"):
        raise ConfigError([(key, f"bad value {ref!r}: must look like {form}")])
    module_ref, _, attr = ref.rpartition(":")
    if (
        not module_ref or not attr or (len(module_ref) == 1 and module_ref.isalpha())
    ):  # "C:\\x.py" has no attr
        raise ConfigError([(key, f"bad value {ref!r}: must look like {form}")])
    try:
        module = import_module_or_file(module_ref)
    except Exception as exc:
        raise ConfigError(
            [(key, f"cannot import '{module_ref}' (from {ref!r}): {type(exc).__name__}: {exc}")]
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            hint = suggest(attr, names)
            did = f" (did you mean '{hint}'?)" if hint else ""
            raise ConfigError(
                [
                    (
                        key,
                        f"'{module_ref}' has no attribute '{attr}'{did}; its functions and "
                        f"classes: {', '.join(names) or '(none)'}",
                    )
                ]
            )
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- plugins


_ORIGIN: ContextVar[str | None] = ContextVar("xaiarena_registry_origin", default=None)


@contextmanager
def registering_as(origin: str) -> Iterator[None]:
    """Within the block, components registered are recorded as coming from ``origin`` (a plugin)."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def current_origin() -> str | None:
    """The plugin whose code is registering components now (:func:`registering_as`), else None;
    the registry records it as the entry's ``origin``."""
    return _ORIGIN.get()


def _nothing() -> None:
    pass


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen, out = set(), []
    for ep in sorted(eps, key=lambda e: (e.name, e.value)):
        if (ep.name, ep.value) not in seen:  # a distribution found twice on sys.path
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) if dist is not None else None


def load_entry_point(ep: metadata.EntryPoint) -> str:
    """Load one entry point (a module is imported, a callable called); returns its origin."""
    origin = _dist_name(ep) or ep.value
    with registering_as(origin):
        try:
            with user_code(ep.value):
                obj = ep.load()
                if not isinstance(obj, types.ModuleType):
                    if not callable(obj):
                        raise TypeError(
                            f"it names a {type(obj).__name__}, not a module or a function"
                        )
                    obj()
        except Exception as exc:
            dist = _dist_name(ep)
            fix = f"fix or uninstall it (pip uninstall {dist})" if dist else "fix or remove it"
            raise PluginError(
                f"plugin '{ep.name}' (entry point '{ep.name} = {ep.value}' of group "
                f"{ENTRY_POINT_GROUP}{f', distribution {dist}' if dist else ''}) failed: "
                f"{type(exc).__name__}: {exc}; {fix}, or set {ENV_NO_PLUGINS}=1 to skip installed "
                "plugins"
            ) from exc
    return origin


def load_installed_plugins(before: Callable[[], None] = _nothing) -> None:
    """Load the entry-point plugins and ``$XAIARENA_PLUGINS`` once per process.

    Called by every registry on first use, with ``before`` (the registries' ``load_builtins``)
    to run before the first plugin is imported: the built-in components are registered first,
    so a plugin that takes a built-in's name is the one reported. This module never imports the
    registries. A failure is remembered and raised again (as :class:`PluginError`) on every
    later call.
    """
    if _installed.done:
        if _installed.error is not None:
            raise PluginError.of(_installed.error.problems)
        return
    _installed.done = True
    if os.environ.get(ENV_NO_PLUGINS, "").strip() not in ("", "0"):
        return
    eps = _entry_points()
    env = [r.strip() for r in os.environ.get(ENV_PLUGINS, "").split(",") if r.strip()]
    if not eps and not env:
        return
    before()
    failed: list[PluginError] = []
    for ep in eps:
        try:
            load_entry_point(ep)
        except PluginError as exc:
            failed.append(exc)
    for ref in env:
        try:
            import_plugin(ref, key=ENV_PLUGINS, before=before)
        except PluginError as exc:
            failed.append(exc)
    if failed:  # every broken plugin at once, not one per attempt
        _installed.error = PluginError.of([p for e in failed for p in e.problems])
        raise PluginError.of(_installed.error.problems)


def import_plugin(
    ref: str, key: str = "plugins", before: Callable[[], None] = _nothing
) -> types.ModuleType:
    """Import the plugin module (or ``.py`` file) ``ref``; its registrations get origin ``ref``.
    ``before`` runs first (config validation passes the registries' ``load_builtins``, see
    :func:`load_installed_plugins`)."""
    before()
    with registering_as(ref):
        try:
            return import_module_or_file(ref)
        except Exception as exc:
            raise PluginError(
                f"cannot import plugin '{ref}': {type(exc).__name__}: {exc}", key
            ) from exc


def config_plugin_problems(
    refs: Any, before: Callable[[], None] = _nothing
) -> list[tuple[str, str]]:
    """Import a config's ``plugins:`` list; ``(key, message)`` for each one that fails. ``before``:
    see :func:`import_plugin`.

    Values that are not a list of strings are left to the config's type validation.
    """
    if not isinstance(refs, list):
        return []
    problems = []
    for i, ref in enumerate(refs):
        if isinstance(ref, str):
            try:
                import_plugin(ref, key=f"plugins.{i}", before=before)
            except PluginError as exc:
                problems += exc.problems
    return problems


__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "config_plugin_problems",
    "current_origin",
    "import_module_or_file",
    "import_plugin",
    "load_installed_plugins",
    "registering_as",
    "resolve_ref",
]
