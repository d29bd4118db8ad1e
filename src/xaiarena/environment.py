"""The machine a run runs on: the torch device and thread count to use, the hardware and library
versions a run records, and the folder of caches shared across runs."""

from __future__ import annotations

import os
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


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
            why = (
                "this PyTorch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
            )
            raise RunError(
                f"device: '{name}' was asked for, but {why} (torch {torch.__version__}); "
                "use device: auto (CUDA when available, else CPU) or device: cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise RunError(
                f"device: '{name}' does not exist; this machine has {n} CUDA device(s): "
                f"{', '.join(f'cuda:{i}' for i in range(n))}"
            )
    return dev


@contextmanager
def torch_threads(n: int | None):
    """Compute with ``n`` torch threads inside the block (the process' count when None); the count
    from before is restored afterwards. Float sums, training above all, depend on it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def user_cache_dir() -> Path:
    """Folder for caches shared across runs (``XAIARENA_CACHE_DIR``, default
    ``~/.cache/xaiarena``)."""
    return Path(os.environ.get("XAIARENA_CACHE_DIR", Path.home() / ".cache" / "xaiarena"))


def versions() -> dict[str, str]:
    from . import __version__

    out = {
        "xaiarena": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for mod in ("torch", "numpy", "captum", "scipy", "pandas"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out


def hardware(device: torch.device | str | None = None) -> dict[str, Any]:
    """What the run ran on: CPU model and count, memory, and for CUDA the device name, memory, CUDA
    and driver versions (``nvidia-smi`` when present). Every field is best effort."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
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
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            gpu_count=torch.cuda.device_count(),
        )
        try:
            import subprocess

            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                info["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return info
