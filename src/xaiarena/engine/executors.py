"""Executors of the stage graph (:mod:`xaiarena.engine.tasks`).

``local``
    Every task in this process, in graph order; a :class:`~xaiarena.engine.context.UnitContext`
    keeps data, models and maps in memory between tasks.
``ray``
    Every task is a Ray task (``pip install -e ".[ray]"``) with the resources of
    ``ray.cpus_per_task`` / ``ray.gpus_per_task``, started when its dependencies are done. It
    computes with the torch thread count a local run would use
    (:func:`~xaiarena.engine.context.thread_count`), because float sums (training above all)
    depend on it: a Ray run then gives a local run's numbers. ``cpus_per_task`` defaults to
    that thread count.
    Tasks exchange only small results (keys, timings, per-sample frames); artefacts go
    through the run's cache folder, which every worker must see (a shared disk on a
    cluster; see docs/distributed.md). A task whose worker dies is retried
    (``ray.max_retries``); tasks are idempotent (content-addressed cache), so a retry
    gives the same numbers.

Both report each finished task to ``on_result`` and print one progress line for the whole
graph (done / cached / running).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from ..errors import RunError
from ..files import writes_inside
from ..progress import progress
from .context import Env, thread_count
from .tasks import TaskResult, TaskSpec, run_task, shard_tasks

log = logging.getLogger(__name__)

OnResult = Callable[[TaskSpec, TaskResult], None]
#: seconds to wait for a Ray cluster to answer (``ray.connect_timeout``)
CONNECT_TIMEOUT = 30.0


class LocalExecutor:
    """This process, tasks in graph order."""

    name = "local"

    def __init__(self, show_progress: bool = True):
        self.show_progress = show_progress

    def run(self, tasks: list[TaskSpec], env: Env, on_result: OnResult) -> None:
        say = progress.write if self.show_progress else None
        for task in tasks:
            on_result(task, run_task(task, env, say))


class RayExecutor:
    """Ray tasks; see the module docstring."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: float | None = None,
        gpus_per_task: float = 0.0,
        max_retries: int = 3,
        show_progress: bool = True,
        connect_timeout: float = CONNECT_TIMEOUT,
    ):
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task
        self.max_retries, self.show_progress = max_retries, show_progress
        self.connect_timeout = connect_timeout

    def _ray(self):
        if self.address:  # Ray itself retries an unreachable cluster for minutes, silently
            probe_ray_address(self.address, self.connect_timeout)
        try:
            import ray
        except ImportError as exc:
            raise RunError(
                "executor 'ray' needs Ray: pip install -e \".[ray]\" (or pip install ray)"
            ) from exc
        if not ray.is_initialized():
            kwargs: dict = {
                "ignore_reinit_error": True,
                "include_dashboard": False,
                "log_to_driver": False,
            }
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.num_cpus or os.cpu_count()
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a cluster that cannot be reached
                raise RunError(
                    f"cannot start or reach Ray ({type(exc).__name__}: {exc}); check ray.address "
                    f"({self.address or 'local instance'})"
                ) from exc
        return ray

    def run(self, tasks: list[TaskSpec], env: Env, on_result: OnResult) -> None:
        ray = self._ray()
        tasks = shard_tasks(tasks)  # a unit's shards over the workers
        env = dataclasses.replace(env, share_samples=True)  # workers read samples from the cache
        base = ray.remote(_remote_task)

        def remote(cpus: float):
            return base.options(
                num_cpus=cpus,
                num_gpus=self.gpus_per_task,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )

        refs: dict[str, object] = {}
        pending: dict[object, TaskSpec] = {}
        asked: dict[object, float] = {}  # CPUs each pending task asked for
        total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        for task in tasks:  # graph order: dependencies are submitted first
            dep_refs = [refs[d] for d in task.deps if d in refs]
            # every task computes with the thread count a local run would use (float sums depend on
            # it); by default it also asks for that many CPUs, capped by the cluster's
            cpus = self.cpus_per_task or min(float(thread_count(task.unit, env)), total_cpus)
            ref = remote(cpus).remote(task, env, *dep_refs)
            refs[task.name] = ref
            pending[ref], asked[ref] = task, cpus
        done = cached = 0
        total = len(tasks)
        last = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in ready:
                task = pending.pop(ref)
                asked.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - surface the task's own error
                    cause = getattr(exc, "cause", None)
                    for r in pending:
                        ray.cancel(r)
                    if cause is not None:
                        raise cause from None
                    raise
                on_result(task, result)
                done += 1
                cached += int(
                    all(v.get("cache_hit") for k, v in result.stages.items() if k == task.name)
                )
            if self.show_progress and (ready or time.time() - last > 30):
                last = time.time()
                progress.write(
                    f"[xaiarena] ray: {done}/{total} tasks done ({cached} cached), "
                    f"{_running(ray, total_cpus, asked)} running"
                )


def _running(ray, total_cpus: float, asked: dict[object, float]) -> int:
    """About how many pending tasks run now: the CPUs in use over the smallest pending request."""
    if not asked:
        return 0
    try:
        used = total_cpus - float(ray.available_resources().get("CPU", total_cpus))
    except Exception:  # noqa: BLE001 - the count is for the progress line only
        return 0
    return min(len(asked), int(used / min(asked.values()) + 1e-9))


def _remote_task(task: TaskSpec, env: Env, *deps: TaskResult) -> TaskResult:
    """What a Ray worker runs: one task (with the torch thread count of a local run, as every
    task)."""
    os.environ.setdefault("XAIARENA_QUIET", "1")
    _import_config_plugins(task)
    with writes_inside(env.run_dir):  # as in the driver: nothing written outside the run directory
        return run_task(task, env)


def _import_config_plugins(task: TaskSpec) -> None:
    """Import the config's ``plugins:`` in this worker, as the driver did when it validated the
    config (once per process: a plugin file is imported once per path), so that the names they
    register are known here too. A plugin named by a relative path must resolve from the worker's
    working directory; give absolute paths on a cluster."""
    from ..plugins import PluginError, config_plugin_problems
    from ..registry import load_builtins

    problems = config_plugin_problems(task.unit.config.get("plugins"), before=load_builtins)
    if problems:
        raise PluginError.of(problems)


#: an HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray Client
#: server) answers with a SETTINGS frame of its own
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``ray://host:port``, ``[v6]:port``; None for ``auto`` and
    other forms Ray resolves itself."""
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe_ray_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Check, within ``timeout`` seconds, that something at ``address`` answers as a Ray cluster (a
    TCP connection, then a gRPC/HTTP/2 greeting; TLS clusters, ``RAY_USE_TLS``: the connection
    only); else a :class:`RunError` naming the address. Ray's own client would retry for minutes
    without a word."""
    import socket

    hp = _host_port(address)
    if hp is None:
        return
    start = time.monotonic()
    fix = (
        f"start the cluster (ray start --head) or correct --address / ray.address; "
        f"ray.connect_timeout (now {timeout:g} s) sets how long to wait"
    )
    unreachable = f"cannot reach Ray at '{address}'"
    try:
        sock = socket.create_connection(hp, timeout=timeout)
    except TimeoutError:
        raise RunError(f"{unreachable}: no answer within {timeout:g} s; {fix}") from None
    except OSError as exc:
        raise RunError(f"{unreachable}: {exc.strerror or exc}; {fix}") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
            return
        try:
            sock.settimeout(max(0.1, timeout - (time.monotonic() - start)))
            sock.sendall(_HTTP2_HELLO)
            reply = sock.recv(9)
        except TimeoutError:
            reply = None
        except OSError as exc:
            raise RunError(f"{unreachable}: {exc.strerror or exc}; {fix}") from None
    if reply is None or len(reply) < 9 or reply[3] != 0x04:
        why = (
            f"no answer within {timeout:g} s"
            if reply is None
            else "the answer is not a gRPC server's"
        )
        raise RunError(f"'{address}' accepts connections but is not a Ray cluster ({why}); {fix}")


def make_executor(
    cfg, name: str | None = None, address: str | None = None, show_progress: bool = True
):
    """The executor a run uses: ``name`` (CLI ``--executor``) or ``cfg.executor``."""
    kind = name or cfg.executor
    if kind == "local":
        return LocalExecutor(show_progress)
    if kind == "ray":
        r = cfg.ray
        return RayExecutor(
            address or r.address,
            r.num_cpus,
            r.cpus_per_task,
            r.gpus_per_task,
            r.max_retries,
            show_progress,
            r.connect_timeout,
        )
    raise RunError(f"unknown executor '{kind}'; valid: local, ray")
