"""Plugins: entry points (group xaiarena.plugins), the config key plugins:, origins in
``xaiarena list``, and clear errors for plugins that fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.paths import ROOT
from xaiarena import plugins
from xaiarena.cli import app
from xaiarena.config import load_config
from xaiarena.errors import ConfigError
from xaiarena.registry import EXPLAINERS

EXAMPLE_SRC = ROOT / "examples" / "plugin" / "src"
DIST = "xaiarena-example-plugin"
runner = CliRunner()

CONST_PLUGIN = """
import torch
from xaiarena.explainers import Explainer
from xaiarena.registry import EXPLAINERS


@EXPLAINERS.register("byo_const", description="test plugin: a constant map")
class Const(Explainer):
    name = "byo_const"
    family = "baseline"

    def attribute(self, model, inputs, targets, *, generator=None):
        return torch.ones(inputs.shape[0], *inputs.shape[2:])
"""


def install(site: Path, dist: str, entry_points: str) -> None:
    """What ``pip install`` leaves for entry-point discovery: a dist-info folder on sys.path."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{entry_points}\n")


@pytest.fixture()
def installed_example(tmp_path, monkeypatch, isolated_plugins):
    """The example plugin 'installed': its dist-info (entry point) and its source on sys.path."""
    install(tmp_path / "site", DIST, "example = xaiarena_example_plugin")
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tmp_path / "site"


def test_installed_plugin_shows_in_list_json_with_its_origin(installed_example):
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    # the dissect key groups its own registries (concept sets, scorers, similarities)
    groups = {k: v for k, v in data.items() if k != "dissect"} | {
        f"dissect.{k}": v for k, v in data["dissect"].items()
    }
    by_name = {kind: {e["name"]: e for e in entries} for kind, entries in groups.items()}
    assert by_name["explainers"]["vargrad"]["origin"] == DIST
    assert by_name["metrics"]["top_mass"]["origin"] == DIST
    assert by_name["metrics"]["top_mass"]["category"] == "complexity"  # the usual fields are kept
    assert by_name["explainers"]["gradcam"]["origin"] == "builtin"
    assert all("origin" in e for entries in groups.values() for e in entries)
    text = runner.invoke(app, ["list"]).output
    assert f"(from {DIST})" in next(
        line for line in text.splitlines() if line.strip().startswith("vargrad")
    )


@pytest.mark.integration
def test_installed_plugin_is_found_by_a_fresh_process(tmp_path):
    install(tmp_path / "site", DIST, "example = xaiarena_example_plugin")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(EXAMPLE_SRC), str(ROOT / "src")]),
    )
    out = subprocess.run(
        [sys.executable, "-m", "xaiarena.cli", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    explainers = {e["name"]: e for e in json.loads(out.stdout)["explainers"]}
    assert explainers["vargrad"]["origin"] == DIST


def test_config_plugins_key_imports_modules_and_files(tmp_path, monkeypatch, isolated_plugins):
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    path = tmp_path / "my_methods.py"
    path.write_text(CONST_PLUGIN)
    raw = {
        "plugins": ["xaiarena_example_plugin", str(path)],
        "data": "hard_mnist",
        "model": "lenet",
        "explainers": ["vargrad", "byo_const"],
        "metrics": ["top_mass"],
    }
    cfg = load_config(raw)
    assert cfg.plugins == ["xaiarena_example_plugin", str(path)]
    assert EXPLAINERS.entry("byo_const").origin == str(path)
    assert EXPLAINERS.entry("vargrad").origin == "xaiarena_example_plugin"


def test_entry_point_may_name_a_function(tmp_path, monkeypatch, isolated_plugins):
    (tmp_path / "byo_callable_plugin.py").write_text(
        CONST_PLUGIN.replace(
            '@EXPLAINERS.register("byo_const", description="test plugin: a constant map")\n', ""
        )
        + "\n\ndef register():\n"
        + "    EXPLAINERS.register('byo_const', description='from a function')(Const)\n"
    )
    install(tmp_path / "site", "byo-callable", "const = byo_callable_plugin:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert EXPLAINERS.entry("byo_const").origin == "byo-callable"


@pytest.mark.parametrize("case", ["missing_module", "raises", "clash"])
def test_failing_config_plugin_exits_2_naming_it(tmp_path, isolated_plugins, case):
    if case == "missing_module":
        ref, needle = "byo_no_such_plugin", "No module named 'byo_no_such_plugin'"
    elif case == "raises":
        path = tmp_path / "byo_boom.py"
        path.write_text("raise RuntimeError('boom in the plugin')\n")
        ref, needle = str(path), "boom in the plugin"
    else:
        path = tmp_path / "byo_clash.py"
        path.write_text(CONST_PLUGIN.replace('register("byo_const"', 'register("gradcam"'))
        ref, needle = str(path), "'gradcam' is registered twice (by builtin and by"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"plugins: ['{ref}']\ndata: hard_mnist\nmodel: lenet\n")
    res = runner.invoke(app, ["run", str(cfg), "--quiet"])
    assert res.exit_code == 2, res.output
    assert (
        "plugins.0" in res.output
        and f"cannot import plugin '{ref}'" in res.output
        and needle in res.output
    )


def test_broken_installed_plugin_exits_2_and_can_be_skipped(
    tmp_path, monkeypatch, isolated_plugins
):
    install(tmp_path / "site", "byo-broken", "broken = byo_missing_module_xyz")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 2
    for needle in (
        "plugin 'broken'",
        "byo_missing_module_xyz",
        "distribution byo-broken",
        "pip uninstall byo-broken",
        "XAIARENA_NO_PLUGINS=1",
    ):
        assert needle in res.output, res.output
    with pytest.raises(ConfigError, match="plugin 'broken'"):  # raised again, not forgotten
        EXPLAINERS.entry("gradcam")
    monkeypatch.setenv(plugins.ENV_NO_PLUGINS, "1")
    plugins._installed.done, plugins._installed.error = False, None
    assert runner.invoke(app, ["list", "--json"]).exit_code == 0


def test_environment_variable_plugins(tmp_path, monkeypatch, isolated_plugins):
    path = tmp_path / "my_methods.py"
    path.write_text(CONST_PLUGIN)
    monkeypatch.setenv(plugins.ENV_PLUGINS, str(path))
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    assert {e["name"]: e["origin"] for e in json.loads(res.output)["explainers"]}[
        "byo_const"
    ] == str(path)
