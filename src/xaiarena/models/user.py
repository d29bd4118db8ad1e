"""The user's own PyTorch image model: ``torch_module``.

``factory`` names a function (or class) that returns an ``nn.Module``:
``"package.module:function"`` or ``"/path/to/file.py:function"`` (see
:func:`xaiarena.plugins.resolve_ref`). Every option that is not one of
``torch_module``'s own is passed to the factory as a keyword (``num_classes: 3``); a
factory parameter called ``num_classes`` that the config leaves out gets the dataset's
class count. Options the factory does not take are refused with the valid names.

``checkpoint`` (optional) is a state dict: ``.safetensors``, or a ``torch.save`` file
(``.pt``/``.pth``/``.bin``) read with ``torch.load(weights_only=True)``, so a file that
holds pickled Python objects (a whole pickled model, custom classes) is refused and never
unpickled. A ``{"state_dict": ...}`` (or ``model_state_dict``/``model``) wrapper is
unwrapped and a ``module.`` prefix on every key (DataParallel) removed; the keys must
then match the module exactly. **With a checkpoint the model is used as it is**: no
training, only its test accuracy is measured (like the pretrained models). Without one,
xaiarena trains it with the config's ``training`` section.

**Inputs.** The module receives ``(x - mean) / std`` for pixel-space ``x`` in [0, 1]
(``mean``/``std``: one value or one per channel). They default to the dataset's
per-channel statistics when xaiarena trains the model; with a checkpoint they are
required (the normalisation it was trained with; ``mean: 0, std: 1`` passes pixels in
[0, 1] unchanged). The wrapper hands the module a contiguous tensor (``channels_last:
true`` opts into channels-last memory, faster for CNNs on CPU, but a ``.view`` on conv
outputs then fails).

**CAM layer.** ``cam_layer`` is the dotted name of a module inside the user's module
(``layer4``, ``features.7``); CAM explainers use it unless their own ``layer`` option
is set (:meth:`UserImageClassifier.cam_layer`).

**Checks at build time** (:class:`~xaiarena.errors.ConfigError`, the CLI exits 2, keyed
``model.<option>``): the factory resolves and returns an ``nn.Module``, the checkpoint
loads, ``cam_layer`` exists, and one forward pass on a test image gives ``(1, K)`` logits
with ``K`` equal to the dataset's number of classes (otherwise the labels would lie
outside the model's classes: list the model's classes in output order with the dataset
option ``classes``).
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fingerprint import files_fingerprint
from ..ops.modes import eval_mode
from ..plugins import is_file_ref, resolve_ref, user_code
from ..registry import MODELS, suggest
from .vision import ImageClassifier

OWN_OPTIONS = ("factory", "checkpoint", "mean", "std", "cam_layer", "channels_last")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def _error(option: str, message: str) -> ConfigError:
    return ConfigError([(f"model.{option}" if option else "model", message)])


class UserImageClassifier(ImageClassifier):
    """A user's ``nn.Module`` on pixel-space inputs: ``net((x - mean) / std)``.

    ``pretrained`` is True when the weights came from a checkpoint (``train_model`` then
    measures test accuracy only).
    """

    def __init__(
        self,
        net: nn.Module,
        mean,
        std,
        *,
        pretrained: bool,
        cam_layer: str | None = None,
        channels_last: bool = False,
        source: dict[str, Any] | None = None,
    ):
        super().__init__(net, mean, std, cam_layer=cam_layer)
        self.pretrained = bool(pretrained)
        self.channels_last = bool(channels_last)
        self.source = dict(source or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return super().forward(x)
        return self.net((x - self.mean) / self.std)

    def describe(self) -> dict[str, Any]:
        return {"pretrained": self.pretrained, **self.source}


# --------------------------------------------------------------------------- checkpoints


def read_state_dict(path: str | Path, option: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling objects."""
    p = Path(path).expanduser()
    if p.is_dir():
        suffixes = (".pt", ".pth", ".bin", ".safetensors")
        files = sorted(q.name for q in p.iterdir() if q.suffix.lower() in suffixes)
        hint = f"; weight files in it: {', '.join(files[:5])}" if files else ""
        raise _error(
            option,
            f"'{path}' is a folder, not a checkpoint file: give the file of the "
            f"state dict (.pt/.pth/.bin or .safetensors){hint}",
        )
    if not p.is_file():
        raise _error(
            option, f"file '{path}' does not exist (relative paths are relative to {Path.cwd()})"
        )
    if p.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - installed with transformers
            raise _error(
                option, f"'{path}' is a safetensors file: pip install safetensors"
            ) from None
        try:
            return load_file(str(p))
        except Exception as exc:
            raise _error(option, f"cannot read '{path}': {type(exc).__name__}: {exc}") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f" (e.g. {found.group(1)})" if found else ""
        raise _error(
            option,
            f"'{path}' holds pickled Python objects{detail}, which xaiarena never unpickles; "
            "save only the weights: "
            "torch.save(model.state_dict(), path) or "
            "safetensors.torch.save_file(model.state_dict(), path)",
        ) from None
    except Exception as exc:
        raise _error(
            option, f"cannot read '{path}' as a torch.save file: {type(exc).__name__}: {exc}"
        ) from None
    return _unwrap(obj, str(path), option)


def _is_state(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: str, option: str) -> dict[str, torch.Tensor]:
    if not _is_state(obj) and isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if _is_state(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state(obj):
        what = (
            f"a dict with keys {', '.join(map(str, list(obj)[:8]))}"
            if isinstance(obj, dict)
            else type(obj).__name__
        )
        raise _error(
            option,
            f"'{path}' holds {what}, not a state dict (names -> tensors, or one under "
            f"{', '.join(STATE_DICT_KEYS)})",
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(
    net: nn.Module, state: dict[str, torch.Tensor], path: str, option: str = "checkpoint"
) -> None:
    """``net.load_state_dict(state)`` (strict), errors naming missing/unexpected/mis-shaped keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(
                f"missing keys {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        if unexpected:
            parts.append(
                "unexpected keys "
                f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        if shapes:
            parts.append(f"shape mismatches (checkpoint vs module) {'; '.join(shapes[:3])}")
        raise _error(option, f"'{path}' does not fit the module: {'; '.join(parts)}")
    net.load_state_dict(state)


# --------------------------------------------------------------------------- the model


def _vector(value: Any, option: str, channels: int, positive: bool) -> tuple[float, ...]:
    vals = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    ok = (
        isinstance(vals, (list, tuple))
        and len(vals) in (1, channels)
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive)
            for v in vals
        )
    )
    if not ok:
        rule = "> 0" if positive else ""
        raise _error(
            option,
            f"bad value {value!r}: give one number{rule and ' ' + rule} or a list of {channels} "
            f"(one per channel of the dataset's images)",
        )
    return tuple(float(v) for v in vals) * (channels if len(vals) == 1 else 1)


def _factory_kwargs(fn: Any, factory: str, extra: dict[str, Any], task) -> dict[str, Any]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass the options as they are
        return dict(extra)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any:
        for key in extra:
            if key not in names:
                valid = list(OWN_OPTIONS) + names
                hint = suggest(key, valid)
                did = f" (did you mean '{hint}'?)" if hint else ""
                raise _error(
                    key,
                    f"unknown option '{key}'{did}: neither a torch_module option "
                    f"({', '.join(OWN_OPTIONS)}) nor a parameter of {factory} "
                    f"({', '.join(names) or 'none'})",
                )
    kwargs = dict(extra)
    if "num_classes" in names and "num_classes" not in kwargs:
        kwargs["num_classes"] = task.num_classes
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if required:
        raise _error(
            "factory",
            f"{factory} needs {', '.join(required)}; set {'them' if len(required) > 1 else 'it'} "
            "as model option(s) (they pass through to the factory)",
        )
    return kwargs


def _fingerprint(factory: str | None = None, checkpoint: str | None = None, **_: Any) -> str:
    """The checkpoint file and the factory's source file (a path, or the module's file)."""
    source = None
    if isinstance(factory, str) and ":" in factory:
        ref = factory.rpartition(":")[0]
        if is_file_ref(ref):
            source = ref
        else:
            import importlib.util

            try:
                spec = importlib.util.find_spec(ref)
                source = spec.origin if spec is not None else None
            except Exception:  # unresolvable: the build reports it
                source = None
    return files_fingerprint(source, checkpoint)


@MODELS.register(
    "torch_module",
    description="Your PyTorch image model: factory 'package.module:function' or "
    "'/path/file.py:function' returning an nn.Module (other options pass to it), optional "
    "checkpoint (state dict, .pt/.safetensors; then used as is, no training), input normalisation "
    "mean/std, CAM layer cam_layer",
    modality="image",
    fingerprint=_fingerprint,
    cam_layer_option="cam_layer",  # CAMs need it (or their own layer option): config-time check
)
def torch_module(
    task,
    factory: str | None = None,
    checkpoint: str | None = None,
    mean: float | list[float] | None = None,
    std: float | list[float] | None = None,
    cam_layer: str | None = None,
    channels_last: bool = False,
    **factory_options: Any,
) -> UserImageClassifier:
    """The user's module from ``factory`` (see the module docstring); other options go to the
    factory."""
    if getattr(task, "modality", "image") != "image":
        raise _error(
            "name",
            f"torch_module takes image datasets; '{task.name}' is {task.modality} (for text use "
            "model 'transformer' with name_or_path: <your fine-tuned model folder>)",
        )
    if not factory:
        raise _error(
            "factory",
            "required: the function that builds your model, 'package.module:function' or "
            "'/path/to/file.py:function'",
        )
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise _error("checkpoint", f"bad value {checkpoint!r}: a file path")
    if cam_layer is not None and not isinstance(cam_layer, str):
        raise _error(
            "cam_layer", f"bad value {cam_layer!r}: a module's dotted name inside your model"
        )
    channels = int(task.input_shape[0])
    if checkpoint is not None and (mean is None or std is None):
        raise _error(
            "mean" if mean is None else "std",
            "a model from a checkpoint needs the input normalisation it "
            "was trained with: set mean and std (e.g. ImageNet: mean: [0.485, 0.456, 0.406], std: "
            "[0.229, 0.224, 0.225]; pixels in [0, 1] unchanged: mean: 0, std: 1)",
        )
    mean_t = _vector(mean, "mean", channels, False) if mean is not None else tuple(task.mean)
    std_t = _vector(std, "std", channels, True) if std is not None else tuple(task.std)

    fn = resolve_ref(factory, "model.factory")
    if not callable(fn):
        raise _error("factory", f"'{factory}' is a {type(fn).__name__}, not a function or class")
    kwargs = _factory_kwargs(fn, factory, factory_options, task)
    try:
        with user_code(factory):
            net = fn(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise _error("factory", f"{factory}({args}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise _error("factory", f"{factory} returned a {type(net).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_weights(net, read_state_dict(checkpoint), checkpoint)
    if cam_layer is not None:
        try:
            net.get_submodule(cam_layer)
        except AttributeError:
            names = [n for n, _ in net.named_modules() if n]
            hint = suggest(cam_layer, names)
            did = f" (did you mean '{hint}'?)" if hint else ""
            convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
            raise _error(
                "cam_layer",
                f"'{cam_layer}' is not a module of your model{did}; its Conv2d layers: "
                f"{', '.join(convs) or '(none)'}",
            ) from None
    source = {"factory": factory, **({"checkpoint": str(checkpoint)} if checkpoint else {})}
    model = UserImageClassifier(
        net,
        mean_t,
        std_t,
        pretrained=checkpoint is not None,
        cam_layer=cam_layer,
        channels_last=channels_last,
        source=source,
    )
    _check_outputs(model, task, factory)
    return model


def _check_outputs(model: UserImageClassifier, task, factory: str) -> None:
    """One forward pass on a test image: logits ``(1, num_classes)``."""
    split = task.test if len(task.test) else task.train
    x = split.float_images(slice(0, 1)) if len(split) else torch.zeros(1, *task.input_shape)
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except Exception as exc:
        raise _error(
            "factory",
            f"the model from {factory} fails on the dataset's images, shape {tuple(x.shape)} "
            f"(N, C, H, W): {type(exc).__name__}: {exc}",
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _error(
            "factory",
            f"the model from {factory} returned {shape} for one image; it must return logits "
            "(N, num_classes)",
        )
    k, n = int(out.shape[1]), task.num_classes
    if k != n:
        names = ", ".join(task.class_names[:10]) + (" ..." if n > 10 else "")
        if k < n:
            msg = (
                f"the model has {k} outputs but dataset '{task.name}' has {n} classes ({names}): "
                f"labels {k}..{n - 1} lie outside the model's classes"
            )
        else:
            msg = f"the model has {k} outputs but dataset '{task.name}' has {n} classes ({names})"
        raise _error(
            "",
            msg + "; list the model's classes in output order with the dataset option classes, or "
            "build the model for this dataset (num_classes)",
        )
