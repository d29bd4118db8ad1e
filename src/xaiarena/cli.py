"""Command line interface: a thin layer over the Python API.

``xaiarena run [CONFIG] [--out DIR] [--set key.path=value ...] [--executor local|ray] [--address
ADDR]`` ``xaiarena list [--json]``
``xaiarena report RUN_DIR``
``xaiarena dissect CONFIG [--out DIR] [--set key.path=value ...]``
``xaiarena score RUN_DIR|CONFIG MAPS_DIR [--out DIR] [--metric SPEC ...] [--dataset NAME] [--set
...]``

A bad configuration exits with code 2 and a message naming the key, the bad
value and the valid choices.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from .errors import ConfigError, RunError, UnknownNameError, XaiArenaError
from .files import is_write_error, write_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="xaiarena: compare feature-attribution methods with numbers that hold up.",
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2


def _fail(msg: str, code: int = EXIT_CONFIG) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors(optional_imports: bool = False):
    """What a long command (run, dissect) turns into one-line exits: configuration and other
    user-fixable errors exit 2, a missing optional package exits 1 (``optional_imports``), and an
    interrupt says that finished stages are cached."""
    try:
        yield
    except ConfigError as exc:
        _fail(exc.format())
    except UnknownNameError as exc:
        _fail(exc.message)
    except XaiArenaError as exc:  # data, training, lock, environment, writing: the user can fix it
        _fail(" ".join(str(exc).split()))
    except OSError as exc:  # a write that went around xaiarena's writers: no space, read-only, ...
        if not is_write_error(exc):
            raise
        _fail(str(write_error(exc, exc.filename or "?")))
    except ImportError as exc:
        if not optional_imports:
            raise
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; finished stages are cached, run the same command again to resume",
            err=True,
        )
        raise typer.Exit(130) from None


@app.command()
def run(
    config: Optional[Path] = typer.Argument(
        None, help="Experiment YAML; omit for the built-in offline benchmark."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/<name>)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: key.path=value (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or stage lines."),
    executor: Optional[str] = typer.Option(
        None, "--executor", help="local (default) or ray (overrides the config's executor)."
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="Ray cluster address (with --executor ray); default: a local instance.",
    ),
) -> None:
    """Run an experiment: train/load the model, explain, score, test, report."""
    from .config import load_config
    from .results import RunResult
    from .runner import Runner

    if quiet:
        os.environ["XAIARENA_QUIET"] = "1"
    try:
        cfg = load_config(config, set_ or None)
    except ConfigError as exc:
        _fail(exc.format())
    except UnknownNameError as exc:
        _fail(exc.message)
    if executor is not None and executor not in ("local", "ray"):
        _fail(f"--executor: bad value '{executor}'; valid: local, ray")
    if out is not None and out.exists() and not out.is_dir():
        _fail(f"--out '{out}' is a file; give a folder for the run directory")
    if cfg.dissect is not None:
        typer.echo(
            "note: the config's 'dissect:' section is run by `xaiarena dissect CONFIG`, not by "
            "`run`",
            err=True,
        )
    with _user_errors():
        run_dir = Runner(
            cfg, out=out, show_progress=not quiet, executor=executor, address=address, source=config
        ).run()
    res = RunResult(run_dir)
    typer.echo(f"run directory: {run_dir}")
    summary = res.summary
    if len(summary):
        # which model the maps explain (f_b or f_s), when both occur: else their rows look alike
        both = "explained_model" in summary.columns and summary["explained_model"].nunique() > 1
        views = ["explained_model"] if both else []
        many = "n_replicates" in summary.columns and summary["n_replicates"].max() > 1
        reps = ["n_replicates"] if many else []  # a run with replicates: n is distinct samples
        cols = ["dataset", *views, "explainer", "metric", "mean", "ci_low", "ci_high", "n", *reps]
        typer.echo(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if res.report_path.exists():
        typer.echo(f"report: {res.report_path}")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List registered datasets, models, explainers and metrics (with plugins' ones and their
    origin)."""
    from .registry import DISSECT_REGISTRIES, REGISTRIES

    try:
        data = {kind: reg.describe() for kind, reg in REGISTRIES.items()}
    except ConfigError as exc:  # a plugin failed to import
        _fail(exc.format())
    dissect = {kind: reg.describe() for kind, reg in DISSECT_REGISTRIES.items()}
    if as_json:
        from .strict_json import dumps_json

        typer.echo(dumps_json({**data, "dissect": dissect}))
        return
    data.update({f"dissect {kind.replace('_', ' ')}": entries for kind, entries in dissect.items()})
    for kind, entries in data.items():
        typer.echo(f"{kind}:")
        for e in entries:
            extra = ""
            if kind == "metrics":
                arrow = "higher is better" if e.get("higher_is_better") else "lower is better"
                extra = f" [{e.get('category', '')}, {arrow}]"
            elif kind == "explainers":
                extra = f" [{e.get('family', '')}]"
            if e.get("origin", "builtin") != "builtin":
                extra += f" (from {e['origin']})"
            typer.echo(f"  {e['name']:<26} {e['description']}{extra}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run directory.")) -> None:
    """Rebuild report.html and figures from a run's saved results (nothing recomputed)."""
    if not (run_dir / "run.json").exists():
        _fail(f"'{run_dir}' is not a run directory (no run.json)")
    dissected = (run_dir / "results" / "neurons.csv").exists()  # xaiarena dissect wrote here
    with _user_errors():
        if not dissected or (run_dir / "results" / "summary.csv").exists():
            from .report import build_report

            try:
                typer.echo(f"report: {build_report(run_dir)}")
            except XaiArenaError as exc:
                if isinstance(exc, RunError):  # writing (a full disk, a link out): said as it is
                    raise
                _fail(f"cannot build the report of '{run_dir}': {exc}")
        if dissected:
            from .dissect.report import build_dissect_report

            typer.echo(f"dissection report: {build_dissect_report(run_dir)}")


@app.command()
def dissect(
    config: Path = typer.Argument(..., help="Experiment YAML with a 'dissect:' section."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory (default: runs/<name>)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: key.path=value (repeatable)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or stage lines."),
) -> None:
    """Label neurons with concepts (CLIP-Dissect): results/neurons.csv, figures, dissect.html."""
    from .config import load_config
    from .dissect.runner import DissectResult, DissectRunner

    if quiet:
        os.environ["XAIARENA_QUIET"] = "1"
    with _user_errors(
        optional_imports=True
    ):  # an optional package a model or concept set needs: exit 1
        cfg = load_config(config, set_ or None)
        run_dir = DissectRunner(cfg, out=out, show_progress=not quiet, source=config).run()
    res = DissectResult(run_dir)
    typer.echo(f"run directory: {run_dir}")
    layers = res.layers
    cols = [
        c
        for c in (
            "dataset",
            "layer",
            "neurons",
            "distinct_concepts",
            "top_concept",
            "mean_similarity",
            "own_class_rate",
        )
        if c in layers
    ]
    typer.echo(layers[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"neurons: {run_dir / 'results' / 'neurons.csv'}")
    typer.echo(f"report: {res.report_path}")


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        return "invalid configuration: " + "; ".join(
            f"{p or '<root>'}: {m}" for p, m in exc.problems
        )
    if isinstance(exc, UnknownNameError):
        return exc.message
    return " ".join(str(exc).split())


@app.command()
def score(
    source: Path = typer.Argument(
        ..., help="A finished run directory, or a run config (YAML) for its data and model."
    ),
    maps: Path = typer.Argument(
        ..., help="A folder of saved maps: <label>.npy or <label>.pt, shape (N, H, W) each."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Where the CSVs go (default: MAPS/scores)."
    ),
    metric: list[str] = typer.Option(
        [],
        "--metric",
        "-m",
        help="A metric: a name or a YAML mapping such as "
        "'{name: deletion, steps: 10}' (repeatable; default: the config's metrics).",
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Which data entry (default: the first)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: key.path=value (repeatable)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Evaluation batch size (default: the config's)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Score saved maps of a run's evaluation samples (in the run's sample order) with xaiarena's
    metrics: per_sample.csv, summary.csv, tests.csv (the same code and statistics as `run`). Maps
    named like an explainer of the config are re-explained by it where a metric needs that
    (robustness metrics).
    Longer than 80 lines because its signature declares every command-line option (typer reads them
    from the parameters)."""
    import yaml

    from .api import evaluate, load_maps
    from .config import load_config, yaml_load
    from .engine.lock import run_lock
    from .files import make_dir, writes_inside
    from .registry import EXPLAINERS
    from .results import evaluation_samples

    if quiet:
        os.environ["XAIARENA_QUIET"] = "1"
    is_run = source.is_dir() and (source / "run.json").exists()
    if source.is_dir() and not is_run:
        _fail(
            f"'{source}' is a folder but not a finished run (no run.json); give a run directory or "
            "a config file"
        )
    out = out or maps / "scores"
    try:
        cfg = load_config(source / "config.yaml" if is_run else source, set_ or None)
        specs = (
            [yaml_load(m, f"--metric {m!r}") for m in metric]
            if metric
            else [m.model_dump(exclude_none=True) for m in cfg.metrics]
        )
        if not specs:
            _fail("no metrics: give --metric NAME (repeatable) or a config with a 'metrics:' list")
        specs = [_flat_spec(m) for m in specs]
        attributions = load_maps(maps)
        # maps named like an explainer of the config are re-explained by it (robustness metrics)
        reexplain = {
            e.key: _flat_spec(e.model_dump(exclude_none=True))
            for e in cfg.explainers
            if e.key in attributions and EXPLAINERS.get(e.name).family != "learned"
        }
        if is_run:
            samples = evaluation_samples(cfg, source, dataset)
        else:
            make_dir(out)
            with writes_inside(out), run_lock(out):
                samples = evaluation_samples(cfg, out, dataset)
        ev = evaluate(
            samples.model,
            samples.inputs,
            samples.targets,
            attributions,
            specs,
            masks=samples.masks,
            labels=samples.labels,
            sample_ids=samples.sample_ids,
            seed=samples.seed,
            explainers=reexplain or None,
            batch_size=batch_size or samples.batch_size,
            show_progress=not quiet,
            dataset=samples.dataset,
        )
        make_dir(out)
        ev.save(out)  # inside --out only (symlinks followed), as one write
    except XaiArenaError as exc:  # config, metric, maps, data, training, writing: one line
        _fail(_one_line(exc))
    except KeyError as exc:  # --dataset names no data entry
        _fail(str(exc.args[0]))
    except yaml.YAMLError as exc:
        _fail(f"--metric is not a name or a YAML mapping: {' '.join(str(exc).split())}")
    except OSError as exc:
        if not is_write_error(exc):
            raise
        _fail(str(write_error(exc, exc.filename or "?")))
    typer.echo(f"scores: {out} (per_sample.csv, summary.csv, tests.csv)")
    cols = ["explainer", "metric", "mean", "ci_low", "ci_high", "n"]
    typer.echo(ev.summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _flat_spec(spec):
    """A metric entry as a config writes it: ``params`` flattened next to ``name`` (model_dump nests
    them)."""
    if isinstance(spec, dict) and isinstance(spec.get("params"), dict):
        spec = {**{k: v for k, v in spec.items() if k != "params"}, **spec["params"]}
    return spec


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # pragma: no cover - e.g. `xaiarena list | head`
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
