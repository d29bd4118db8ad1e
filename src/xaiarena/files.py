"""Every file xaiarena writes, and reading back what it wrote.

Every write goes through the functions below: one check that the path stays inside the run
directory (:func:`check_inside`, also for symbolic links), a temporary file in the same folder
renamed over the target (a kill leaves the old file or the new one), permissions from the umask,
and one error naming the path and the cause when the disk says no (``WriteError``).
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

_WRITE_ROOT: ContextVar[Path | None] = ContextVar("xaiarena_write_root", default=None)

#: errno -> (cause, what to do) of the write errors a user can fix
_SPACE = "free some space, or give --out a folder on another disk"
_WRITABLE = "give --out a folder you can write to, or fix its permissions"
_WRITE_CAUSES = {
    errno.ENOSPC: ("no space left on the device", _SPACE),
    errno.EDQUOT: ("the disk quota is exceeded", _SPACE),
    errno.EFBIG: ("the file is larger than the file system allows", "give --out another folder"),
    errno.EROFS: ("the file system is read-only", "give --out a folder you can write to"),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("operation not permitted", _WRITABLE),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give --out a folder"),
    errno.ENAMETOOLONG: ("the path is too long", "give --out a shorter path"),
}


@contextmanager
def writes_inside(root: str | Path):
    """Within the block, every file written by xaiarena (the functions below) must resolve inside
    ``root`` (symbolic links followed): the run directory of ``run``, ``report``, ``dissect``, the
    output folder of ``score``. Blocks nest; the innermost root applies."""
    token = _WRITE_ROOT.set(Path(root))
    try:
        yield
    finally:
        _WRITE_ROOT.reset(token)


def check_inside(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` if it resolves inside ``root`` (default: the root of :func:`writes_inside`; no check
    without one), following symbolic links of every existing part; else :class:`WriteError` naming
    both. The one check every written path goes through."""
    from .errors import WriteError

    path = Path(path)
    root = _WRITE_ROOT.get() if root is None else Path(root)
    if root is None:
        return path
    root_r, path_r = root.resolve(), path.resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise WriteError(
            f"refusing to write '{path}': it resolves to '{path_r}', outside the run "
            f"directory '{root_r}' (a symbolic link leads out of it); remove the link "
            "or give another --out"
        )
    return path


def write_error(exc: OSError, path: str | Path):
    """The :class:`~xaiarena.errors.WriteError` of an ``OSError`` raised writing ``path``: the path,
    the cause in words (no space, read-only, permission) and what to do."""
    from .errors import WriteError

    cause, fix = _WRITE_CAUSES.get(exc.errno or 0, (exc.strerror or str(exc), "check the folder"))
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    return WriteError(
        f"cannot write '{path}': {cause}{code}; {fix}. No partial file was left; run "
        "the command again once that is fixed (finished stages are cached)"
    )


def is_write_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` a user fixes on their side (space, permissions, ...)."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_CAUSES


def make_dir(path: str | Path, root: str | Path | None = None) -> Path:
    """``mkdir -p path`` through :func:`check_inside`; an ``OSError`` becomes a ``WriteError``."""
    path = check_inside(path, root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        raise write_error(OSError(errno.ENOTDIR, "not a folder"), exc.filename or path) from None
    except OSError as exc:
        raise write_error(exc, exc.filename or path) from None
    return path


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and set it back at once)
    os.umask(mask)
    return mask


def _write_all(path: str | Path, data: bytes) -> None:
    """Write ``data`` to the (new, empty) file ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _stage(path: Path, data: bytes, root: str | Path | None) -> Path:
    """``data`` in a temporary file beside ``path`` (checked, permissions from the umask); the
    temporary path. Nothing is left behind when it fails."""
    check_inside(path, root)
    if not path.parent.is_dir():
        make_dir(path.parent, root)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        _write_all(tmp, data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: the umask's permissions instead
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path) from None


def atomic_write_bytes(path: str | Path, data: bytes, *, root: str | Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it), inside ``root``
    (default: the :func:`writes_inside` root). An ``OSError`` becomes a ``WriteError`` naming the
    path and the cause."""
    path = Path(path)
    _commit(_stage(path, data, root), path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_many(files: dict[Path, bytes]) -> None:
    """Write several files as one: every file is first written to a temporary name; only when all of
    them are written are they renamed into place. A failure (a full disk half-way) removes the
    temporary files and leaves every target as it was."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            staged.append((_stage(Path(path), data, None), Path(path)))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for i, (tmp, path) in enumerate(staged):
        try:
            _commit(tmp, path)
        except BaseException:
            for t, _ in staged[i + 1 :]:
                t.unlink(missing_ok=True)
            raise


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as bytes (serialised in memory: a full disk then fails as an ``OSError``
    naming the file, not inside torch's writer)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a half-written file behind (load with weights_only=True)."""
    atomic_write_bytes(path, torch_bytes(obj))


def load_torch(path: str | Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def parquet_bytes(df) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def csv_bytes(df) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def atomic_to_parquet(df, path: str | Path) -> None:
    atomic_write_bytes(path, parquet_bytes(df))


def atomic_to_csv(df, path: str | Path) -> None:
    atomic_write_bytes(path, csv_bytes(df))
