"""Claiming a run directory: one run at a time (:func:`run_lock`), and never over the user's own
``config.yaml`` (:func:`check_config_file`), which a run replaces by its resolved configuration
(:func:`config_yaml`). Used by ``xaiarena run`` and ``xaiarena dissect``."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..config import ExperimentConfig
from ..errors import RunError
from ..files import check_inside, write_error

log = logging.getLogger(__name__)

LOCK_FILE = ".xaiarena.lock"
#: first line of the config.yaml a run writes: marks the file as xaiarena's (see check_config_file)
CONFIG_HEADER = "# xaiarena: the resolved configuration of this run (rewritten by every run here)"


def config_yaml(cfg: ExperimentConfig) -> str:
    """The ``config.yaml`` of a run directory: the header line, then the resolved configuration."""
    return f"{CONFIG_HEADER}\n{cfg.to_yaml()}"


def check_config_file(run_dir: Path, source: str | Path | None) -> None:
    """Refuse a run directory whose ``config.yaml`` is the user's own file, which the run would
    replace by the resolved configuration: the config file given (``xaiarena run config.yaml --out
    .``), or any ``config.yaml`` that xaiarena did not write (no header line, no ``run.json`` beside
    it). Checked before any work."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            ours = f.readline().rstrip("\n") == CONFIG_HEADER
    except OSError:
        return  # unreadable: the write will say why
    if ours:
        return
    same = False
    if source is not None:
        try:
            same = os.path.samefile(source, path)
        except OSError:
            same = False
    if same or not (run_dir / "run.json").exists():
        what = (
            "is the config file you gave"
            if same
            else "was not written by xaiarena (no run.json beside it)"
        )
        raise RunError(
            f"'{path}' {what}; a run writes its resolved configuration to "
            "RUN_DIR/config.yaml and would replace it (comments and all). Give --out "
            "another folder (default: runs/<name>), or move the file"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path):
    """Hold ``RUN_DIR/.xaiarena.lock`` for the duration: one run per directory.

    A second run exits with a :class:`RunError` naming the holder (pid, host, start time,
    command). A lock left by a killed run (same host, process gone) is taken over, with a
    log line; a lock from another host is never taken over (delete it if that run is gone).
    """
    path = run_dir / LOCK_FILE
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    check_inside(path)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if not holder and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # the holder is writing its record
                continue
            if not holder or (host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)):
                log.warning(
                    "taking over the lock of a run that is gone (%s)", holder or "empty lock file"
                )
                path.unlink(missing_ok=True)
                continue
            raise RunError(
                f"'{run_dir}' is in use by another run (pid {pid} on {host}, started "
                f"{holder.get('started')}: {holder.get('command', '?')}). Wait for it to finish or "
                f"choose another --out; if that run is gone, delete '{path}'."
            ) from None
        except OSError as exc:  # a read-only or foreign folder, a full disk
            raise write_error(exc, path) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise write_error(exc, path) from None
        break
    else:
        raise RunError(f"cannot take the lock '{path}' of the run directory")
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


__all__ = ["CONFIG_HEADER", "LOCK_FILE", "check_config_file", "config_yaml", "run_lock"]
