"""Small shared helpers: devices, seeding, atomic writes, progress bars."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU. A CUDA device that this machine does not have
    raises :class:`~xaiarena.errors.RunError` naming what is available (the config validator and
    the runner call this before any work)."""
    from .errors import RunError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RunError(f"device: '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)")
            raise RunError(f"device: '{name}' was asked for, but {why} (torch {torch.__version__}); "
                           "use device: auto (CUDA when available, else CPU) or device: cpu")
        if dev.index is not None and dev.index >= n:
            raise RunError(f"device: '{name}' does not exist; this machine has {n} CUDA device(s): "
                           f"{', '.join(f'cuda:{i}' for i in range(n))}")
    return dev


def user_cache_dir() -> Path:
    """Folder for caches shared across runs (``XAIARENA_CACHE_DIR``, default ``~/.cache/xaiarena``)."""
    return Path(os.environ.get("XAIARENA_CACHE_DIR", Path.home() / ".cache" / "xaiarena"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    from . import __version__

    out = {"xaiarena": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "numpy", "captum", "scipy", "pandas"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out


def hardware(device: torch.device | str | None = None) -> dict[str, Any]:
    """What the run ran on: CPU model and count, memory, and for CUDA the device name, memory, CUDA
    and driver versions (``nvidia-smi`` when present). Every field is best effort."""
    info: dict[str, Any] = {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        if model:
            info["cpu"] = model
    except OSError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    gpu_count=torch.cuda.device_count())
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                info["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag afterwards.

    ``model.train(was_training)`` would set all submodules to the root's flag, losing, for
    example, a frozen BatchNorm kept in eval mode inside a training model.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def json_safe(obj: Any) -> Any:
    """Turn ``obj`` into strict JSON data: NaN and +-inf become ``null``; numpy/torch scalars
    and tensors become Python numbers and lists; anything else unknown becomes its ``str``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` data; always valid strict JSON (no NaN/Infinity)."""
    kwargs.setdefault("indent", 2)
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


@contextmanager
def _atomic_path(path: str | Path):
    """Yield a temporary path in the same folder; rename over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file behind (load with weights_only=True)."""
    with _atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def atomic_to_parquet(df, path: str | Path) -> None:
    with _atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def atomic_to_csv(df, path: str | Path) -> None:
    with _atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


class _Progress:
    """``progress(iterable, desc=...)`` is a tqdm bar (quiet when not a TTY and XAIARENA_QUIET)."""

    def __call__(self, iterable=None, **kwargs):
        kwargs.setdefault("leave", False)
        kwargs.setdefault("dynamic_ncols", True)
        if os.environ.get("XAIARENA_QUIET"):
            kwargs["disable"] = True
        elif not kwargs.get("disable"):
            kwargs["disable"] = None  # tqdm: hide the bar when stderr is not a terminal
        return tqdm(iterable, **kwargs)

    @staticmethod
    def write(msg: str) -> None:
        if not os.environ.get("XAIARENA_QUIET"):
            tqdm.write(msg, file=sys.stderr)


progress = _Progress()
