"""Cheap fingerprints of user files, for cache keys.

A component that reads files the user can change in place (an image folder, a CSV, a
checkpoint) registers ``fingerprint=`` (see :mod:`xaiarena.registry`); the runner puts the
fingerprint into the cache key of the data or model, so editing, adding or removing a
file invalidates what was computed from it. The fingerprint hashes every file's path
(relative to the folder given), size and modification time (``st_mtime_ns``), not the
contents: it is cheap on large folders, and copying files without keeping their times
(``cp`` without ``-p``) only costs a recomputation.

Models and tensors computed in memory (a learned explainer's ``f_s``) are fingerprinted by
content instead (:func:`fingerprint_module`, :func:`fingerprint_tensor`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn


def _entries(path: Path) -> Iterable[str]:
    if path.is_file():
        st = path.stat()
        yield f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}"
        return
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder) / name
            try:
                st = full.stat()
            except OSError:  # vanished or a broken link: still part of the listing
                yield f"{full.relative_to(path)}\t?\t?"
                continue
            yield f"{full.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}"


def files_fingerprint(*paths: str | os.PathLike | None) -> str:
    """A 16-hex-digit hash of the listing (relative path, size, mtime) of every file under
    ``paths`` (files or folders; None is skipped, a missing path counts as ``missing``)."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        path = Path(p).expanduser()
        h.update(f"## {path.resolve()}\n".encode())
        if not path.exists():
            h.update(b"missing\n")
            continue
        for line in _entries(path):
            h.update(line.encode() + b"\n")
    return h.hexdigest()[:16]


def fingerprint_module(model: nn.Module) -> str:
    """SHA-256 of a module's state (parameter and buffer values, names, dtypes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(
            t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        )  # 0-dim ok
    return h.hexdigest()


def fingerprint_tensor(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' values, dtypes and shapes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(
            t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        )  # 0-dim ok
    return h.hexdigest()


__all__ = ["files_fingerprint", "fingerprint_module", "fingerprint_tensor"]
