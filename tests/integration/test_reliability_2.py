"""Reliability, round two (issue 24): the filesystem, user code, hangs and silent nonsense.

Every test drives a case the way a user meets it (the CLI, in-process or as a subprocess, or the
Python API) and checks the one ``error:`` message with exit code 2 where the input is at fault.
Hangs run in a subprocess with a time limit, so a regression fails instead of hanging the suite.
A full disk is simulated by making ``os.write`` fail with ENOSPC for chosen files; a read-only
folder by making ``os.open``/``os.mkdir`` fail with EROFS below it (tests may run as root, where
``chmod`` does not stop writes). Test names carry the number of the issue's list.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import xaiarena
from tests.support.runs import CFG, TINY, copy_run
from xaiarena.cli import app
from xaiarena.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
cli = CliRunner()
HANG_LIMIT = 30  # seconds: every case that used to hang must fail with a message within this


def _sets(over):
    return [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def one_error(res_or_output, exit_code: int = 2) -> str:
    """The one ``error:`` message of a failed command: exit code 2, no traceback, no foreign
    ``usage:`` line. Configuration errors list their problems on indented lines below it; they are
    returned with it (joined by spaces)."""
    out = res_or_output if isinstance(res_or_output, str) else res_or_output.output
    if not isinstance(res_or_output, str):
        assert res_or_output.exit_code == exit_code, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error: ")]
    assert len(starts) == 1, out
    assert not any(ln.startswith("usage:") for ln in lines), out
    block = [lines[starts[0]]]
    block += [ln.strip() for ln in lines[starts[0] + 1 :] if ln.startswith("  ")]
    return " ".join(block)


# ``xaiarena ARGS`` with a clock that starts once the modules are imported and the registries
# loaded: the seconds then measure the command's own work, however busy the machine is
_TIMED_CLI = """
import sys, time
from xaiarena.cli import main
from xaiarena.registry import REGISTRIES
for registry in REGISTRIES.values():
    registry.names()
start = time.monotonic()
try:
    main()
finally:
    print(f"\\n[seconds] {time.monotonic() - start:.3f}", file=sys.stderr)
"""


def run_cli(*args: str, timeout: float = 180) -> tuple[int, str, float]:
    """``xaiarena ARGS`` in a fresh process (its own ``sys.argv``): (exit code, stdout + stderr,
    seconds of work after the imports)."""
    proc = subprocess.run(
        [sys.executable, "-c", _TIMED_CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "XAIARENA_QUIET": "1"},
    )
    out, _, secs = (proc.stdout + proc.stderr).rpartition("[seconds] ")
    return proc.returncode, out, float(secs.split()[0]) if secs.strip() else float("inf")


def invoke_run(config, out, *extra: str):
    """``xaiarena run CONFIG --out OUT --quiet EXTRA`` in this process."""
    return cli.invoke(app, ["run", str(config), "--out", str(out), "--quiet", *extra])


def cfg_file(tmp_path, cfg: dict | None = None, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg or CFG))
    return path


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".*.tmp"))


# --------------------------------------------------------------------------- simulated disks


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.fixture()
def full_disk(monkeypatch):
    """``full_disk(predicate)``: from now on, writing to a file whose path satisfies
    ``predicate`` fails with ENOSPC (as a full disk does)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a write goes to")
    real = os.write

    def arm(predicate):
        def write(fd, data):
            if predicate(_path_of(fd)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)

    return arm


@pytest.fixture()
def read_only(monkeypatch):
    """``read_only(folder)``: the folder and everything below it behave like a read-only file
    system (creating, writing and making folders fail with EROFS; reading works)."""
    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def under(path) -> bool:
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: roots.append(os.path.abspath(folder))


# --------------------------------------------------------------------------- 1. inside the run


@pytest.mark.parametrize("command", ["report", "run", "score"])
def test_1_no_command_writes_through_a_symlink_out_of_the_run_directory(
    tiny_run_dir, tmp_path, command
):
    out = copy_run(tiny_run_dir, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    if command == "report":  # the case: run refused this layout, report followed the link
        shutil.rmtree(out / "figures")
        (out / "figures").symlink_to(victim)
        res = cli.invoke(app, ["report", str(out)])
    elif command == "run":  # a re-run (every stage cached) writing its results through results/
        shutil.rmtree(out / "results")
        (out / "results").symlink_to(victim)
        res = invoke_run(cfg_file(tmp_path), out, *_sets(TINY))
    else:
        maps = tmp_path / "maps"
        maps.mkdir()
        rng = np.random.default_rng(0)
        np.save(maps / "mine.npy", rng.random((16, 64, 64)).astype(np.float32))
        (maps / "scores").mkdir()
        (maps / "scores" / "summary.csv").symlink_to(victim / "summary.csv")
        res = cli.invoke(app, ["score", str(out), str(maps), "--metric", "sparseness", "--quiet"])
    line = one_error(res)
    assert "refusing to write" in line and "outside the run directory" in line
    assert str(victim) in line and list(victim.iterdir()) == []


# --------------------------------------------------------------------------- 2. CAM layer


def test_2_a_user_model_without_cam_layer_and_a_cam_fails_at_config_time(
    tmp_path, user_model, image_folder_data
):
    root, masks = image_folder_data
    model = {"name": "torch_module", "factory": user_model["factory"], "width": 4}  # no cam_layer
    data = {"name": "image_folder", "root": str(root), "masks_root": str(masks)}
    cfg = {
        "name": "byo",
        "data": data,
        "model": model,
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"n_samples": 4},
        "explainers": ["gradcam", "saliency"],
        "metrics": ["sparseness"],
    }
    line = one_error(invoke_run(cfg_file(tmp_path, cfg), tmp_path / "run"))
    assert "explainers.0" in line and "model.cam_layer" in line and "does not guess" in line
    assert not (tmp_path / "run").exists()  # config time: nothing trained, nothing written
    # the explainer's own layer option is the other way: then it runs
    cfg["explainers"] = [{"name": "gradcam", "layer": "net.features.2"}]
    cfg["evaluation"] = {"n_samples": 4, "batch_size": 4}
    res = invoke_run(cfg_file(tmp_path, cfg), tmp_path / "run")
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- 3. the disk says no


@pytest.mark.parametrize("where", ["new_subdir", "existing_dir", "existing_run"])
def test_3_a_read_only_out_is_one_error_line(tiny_run_dir, tmp_path, read_only, where):
    base = tmp_path / "ro"
    base.mkdir()
    out = {"new_subdir": base / "new" / "run", "existing_dir": base, "existing_run": base / "run"}[
        where
    ]
    if where == "existing_run":
        shutil.copytree(tiny_run_dir, out)
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    config = cfg_file(tmp_path)
    read_only(base)
    line = one_error(invoke_run(config, out, *_sets(TINY)))
    assert "read-only" in line and str(base) in line
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_3_a_full_disk_while_saving_the_model_names_the_file_and_leaves_nothing(
    tmp_path, full_disk, monkeypatch
):
    out, config = tmp_path / "run", cfg_file(tmp_path)
    full_disk(lambda path: os.path.basename(path).startswith(".model.pt."))
    line = one_error(invoke_run(config, out, *_sets(TINY)))
    assert "no space left" in line and "model.pt" in line and "basic_ios" not in line
    # nothing a re-run would trust: no checkpoint, no temporary file, no results
    assert not list(out.rglob("model.pt")) and not temp_files(out)
    assert not (out / "results").exists()
    monkeypatch.undo()  # space again: the same command finishes
    res = invoke_run(config, out, *_sets(TINY))
    assert res.exit_code == 0, res.output
    assert len(list(out.rglob("model.pt"))) == 1


def test_3_a_full_disk_while_writing_the_report_keeps_the_old_report_and_figures(
    tiny_run_dir, tmp_path, full_disk
):
    out = copy_run(tiny_run_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    html = (out / "report.html").read_bytes()
    assert len(before) >= 2
    second = sorted(before)[1]  # the disk fills on the second figure
    full_disk(lambda path: os.path.basename(path).startswith(f".{second}."))
    line = one_error(cli.invoke(app, ["report", str(out)]))
    assert "no space left" in line and second in line
    assert "cannot be read" not in line and "Re-run the config" not in line  # not the results'
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == before
    assert (out / "report.html").read_bytes() == html and not temp_files(out)


# --------------------------------------------------------------------------- 4. no hangs


def test_4_an_unreachable_ray_address_fails_within_the_connect_timeout(tmp_path):
    import socket

    args = ["run", str(cfg_file(tmp_path)), "--out", str(tmp_path / "r"), "--executor", "ray"]
    code, out, secs = run_cli(*args, "--address", "127.0.0.1:1", timeout=HANG_LIMIT * 6)
    assert code == 2, out  # nothing listening: said at once (Ray itself retried for minutes)
    line = one_error(out)
    assert "cannot reach Ray at '127.0.0.1:1'" in line and secs < HANG_LIMIT
    with socket.socket() as silent:  # accepts connections, never answers (not a Ray cluster)
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code, out, secs = run_cli(
            *args, "--address", address, "--set", "ray.connect_timeout=2", timeout=HANG_LIMIT * 6
        )
    assert code == 2, out
    line = one_error(out)
    assert address in line and "not a Ray cluster" in line and secs < HANG_LIMIT


@pytest.mark.parametrize("case", ["replicates", "grid"])
def test_4_a_run_too_large_to_plan_is_refused_in_seconds(tmp_path, case):
    if case == "replicates":
        args = [str(cfg_file(tmp_path)), "--set", "replicates=1000000"]
    else:  # 400 x 250 = 10^5 grid points from a 3 kB file
        grid = {
            "training.lr": [round(1e-4 * (i + 1), 6) for i in range(400)],
            "evaluation.n_samples": list(range(1, 251)),
        }
        args = [str(cfg_file(tmp_path, {**CFG, "grid": grid}))]
    code, out, secs = run_cli("run", *args, "--out", str(tmp_path / "r"), timeout=HANG_LIMIT * 6)
    assert code == 2, out
    line = one_error(out)
    assert "units" in line and ("1,000,000" if case == "replicates" else "100,000") in line
    assert "XAIARENA_MAX_UNITS" in line and secs < HANG_LIMIT
    assert not (tmp_path / "r").exists()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML value of ``width ** levels`` ones in a few hundred bytes (nested anchors, aliases)."""
    node = "&a1 [" + ", ".join(["1"] * width) + "]"
    for k in range(2, levels + 1):
        node = f"&a{k} [{node}" + f", *a{k - 1}" * (width - 1) + "]"
    return node


def test_4_a_yaml_alias_bomb_as_an_option_value_fails_in_seconds(tmp_path):
    text = (
        "name: bomb\ndata: hard_mnist\nmodel: lenet\nmetrics: [sparseness]\n"
        f"explainers:\n  - name: integrated_gradients\n    n_steps: {alias_bomb()}\n"
    )
    assert len(text) < 700
    (tmp_path / "bomb.yaml").write_text(text)
    code, out, secs = run_cli(
        "run", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "r"), timeout=HANG_LIMIT * 6
    )
    assert code == 2, out
    line = one_error(out)
    assert "aliases" in line and "100,000" in line and "explainers" in line and secs < HANG_LIMIT


# --------------------------------------------------------------------------- 5. user code exits


def test_5_a_plugin_that_calls_sys_exit_at_import_is_an_error_naming_it(tmp_path, isolated_plugins):
    plugin = tmp_path / "byo_exits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    config = cfg_file(tmp_path, {**CFG, "plugins": [str(plugin)]})
    line = one_error(invoke_run(config, tmp_path / "r"))
    assert str(plugin) in line and "sys.exit(0)" in line
    assert not (tmp_path / "r").exists()


ARGPARSE_FACTORY = """
import argparse
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--width", type=int, default=4)
{extra}
ARGS = parser.parse_args()  # a training script's habit: parse at import


def build(num_classes=2):
    return nn.Sequential(nn.Conv2d(3, ARGS.width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(ARGS.width, num_classes))
"""


@pytest.mark.parametrize("required", [False, True])
def test_5_a_factory_module_that_parses_arguments_at_import_sees_none(
    tmp_path, image_folder_data, required
):
    root, _ = image_folder_data
    extra = 'parser.add_argument("--data", required=True)' if required else ""
    (tmp_path / "argmodel.py").write_text(ARGPARSE_FACTORY.format(extra=extra))
    factory = f"{tmp_path / 'argmodel.py'}:build"
    model = {"name": "torch_module", "factory": factory, "cam_layer": "0"}
    cfg = {
        "name": "byo",
        "data": {"name": "image_folder", "root": str(root)},
        "model": model,
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"n_samples": 4, "batch_size": 4},
        "explainers": ["saliency"],
        "metrics": ["sparseness"],
    }
    code, out, _ = run_cli("run", str(cfg_file(tmp_path, cfg)), "--out", str(tmp_path / "r"))
    assert "unrecognized arguments" not in out, out  # it never sees xaiarena's own arguments
    if not required:
        assert code == 0, out
        return
    assert code == 2, out
    line = one_error(out)
    assert "model.factory" in line and "argmodel.py" in line and "--data" in line


def test_5_the_user_code_guard_restores_argv(tmp_path, isolated_plugins):
    from xaiarena.plugins import import_plugin

    plugin = tmp_path / "byo_argv.py"
    plugin.write_text("import sys\nSEEN = list(sys.argv)\n")
    argv = list(sys.argv)
    module = import_plugin(str(plugin))
    assert module.SEEN == [str(plugin)] and sys.argv == argv


# --------------------------------------------------------------------------- 6. the user's config


def test_6_out_holding_the_users_config_yaml_is_refused_and_the_file_kept(tmp_path):
    text = "# my experiment, with comments\n" + yaml.safe_dump(CFG)
    (tmp_path / "config.yaml").write_text(text)
    line = one_error(invoke_run(tmp_path / "config.yaml", tmp_path, *_sets(TINY)))
    assert "config.yaml" in line and "is the config file you gave" in line
    assert (tmp_path / "config.yaml").read_text() == text
    assert not (tmp_path / "cache").exists()


def test_6_a_run_directory_s_own_config_yaml_is_still_rewritten(tiny_run_dir, tmp_path):
    out = copy_run(tiny_run_dir, tmp_path)
    res = invoke_run(out / "config.yaml", out)
    assert res.exit_code == 0, res.output
    assert (out / "config.yaml").read_text().startswith("# xaiarena:")


# --------------------------------------------------------------------------- 7. silent nonsense


def _png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("case", ["single_class", "rgb16"])
def test_7_single_class_data_and_16_bit_rgb_images_are_refused(
    tmp_path, make_image_folder, user_model, case
):
    root = tmp_path / "images"
    make_image_folder(root)
    if case == "single_class":
        for split in ("train", "test"):
            shutil.rmtree(root / split / "right")
        needles = ["1 class ('left')", "at least two classes"]
    else:
        bad = root / "test" / "left" / "2.png"
        _png16_rgb(bad, np.random.default_rng(0).integers(0, 65535, (16, 16, 3)))
        needles = ["data.root", str(bad), "16 bits per channel"]
    model = {"name": "torch_module", "factory": user_model["factory"], "num_classes": 2}
    cfg = {
        "name": "byo",
        "data": {"name": "image_folder", "root": str(root)},
        "model": model,
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"n_samples": 4},
        "explainers": ["saliency"],
        "metrics": ["sparseness"],
    }
    line = one_error(invoke_run(cfg_file(tmp_path, cfg), tmp_path / "r"))
    assert all(n in line for n in needles), line
    assert not list((tmp_path / "r").rglob("model.pt"))


def test_7_evaluate_refuses_pixels_outside_0_1():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x, targets = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    maps = {"m": torch.rand(4, 8, 8)}
    with pytest.raises(InputError, match=r"pixels in \[0, 1\], found values in \[.*divide by 255"):
        xaiarena.evaluate(model, x * 300, targets, maps, ["sparseness"])
    with pytest.raises(InputError, match="normalised inputs"):
        xaiarena.evaluate(model, (x - 0.5) / 0.2, targets, maps, ["sparseness"])
    assert len(xaiarena.evaluate(model, x, targets, maps, ["sparseness"]).per_sample) == 4


# --------------------------------------------------------------------------- 8. plugin contracts

CONTRACT_PLUGIN = """
import torch
from xaiarena.explainers.base import Explainer
from xaiarena.registry import EXPLAINERS


@EXPLAINERS.register("byo_wrong_shape", description="maps of the wrong shape")
class WrongShape(Explainer):
    name = "byo_wrong_shape"
    family = "gradient"

    def attribute(self, model, inputs, targets, *, generator=None):
        return torch.zeros(len(inputs), 3, 3)


@EXPLAINERS.register("byo_nan_maps", description="NaN maps")
class NaNMaps(Explainer):
    name = "byo_nan_maps"
    family = "gradient"

    def attribute(self, model, inputs, targets, *, generator=None):
        return torch.full((len(inputs), *inputs.shape[2:]), float("nan"))
"""


@pytest.mark.parametrize("explainer", ["byo_wrong_shape", "byo_nan_maps"])
def test_8_a_plugin_explainer_breaking_its_contract_is_one_error_line(
    tiny_run_dir, tmp_path, isolated_plugins, explainer
):
    out = copy_run(tiny_run_dir, tmp_path)  # the trained model is cached: only explaining runs
    plugin = tmp_path / "byo_contract.py"
    plugin.write_text(CONTRACT_PLUGIN)
    cfg = {**CFG, "plugins": [str(plugin)], "explainers": [explainer, "saliency"]}
    line = one_error(invoke_run(cfg_file(tmp_path, cfg), out, *_sets(TINY)))
    assert f"explainer '{explainer}' (plugin {plugin})" in line
    assert "broke the explainer contract" in line
    if explainer == "byo_wrong_shape":
        assert "(N, H, W) = (8, 64, 64)" in line and "(8, 3, 3)" in line
    else:
        assert "NaN or infinite values for 8 of 8 inputs" in line


# --------------------------------------------------------------------------- 9. small ones

SMALL = "training: {epochs: 1}\nevaluation: {n_samples: 8}\n"  # were the file accepted: a small run


@pytest.mark.parametrize("nested", [False, True])
def test_9_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, nested):
    if nested:
        text = (
            "name: t\ndata: hard_mnist\nmodel: lenet\nexplainers:\n"
            "  - name: integrated_gradients\n    n_steps: 8\n    n_steps: 64\n"
            "metrics: [sparseness]\n" + SMALL
        )
        needle = "'n_steps' appears twice, at line 6 and at line 7"
    else:
        text = "seed: 0\nname: t\ndata: hard_mnist\nmodel: lenet\nexplainers: [saliency]\nseed: 5\n"
        text += SMALL
        needle = "'seed' appears twice, at line 1 and at line 6"
    (tmp_path / "cfg.yaml").write_text(text)
    line = one_error(invoke_run(tmp_path / "cfg.yaml", tmp_path / "r"))
    assert needle in line and str(tmp_path / "cfg.yaml") in line


def test_9_control_characters_from_data_never_reach_report_html(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        words = list(rng.choice(["film", "plot", "the", "scene"], 4))
        words.append("gre\x00at" if i % 2 else "aw\x1bful")
        rows.append({"text": " ".join(words), "label": ["bad\x00mood", "good\x07mood"][i % 2]})
    pd.DataFrame(rows).to_parquet(tmp_path / "data.parquet")
    data = {
        "name": "csv_text",
        "path": str(tmp_path / "data.parquet"),
        "train_path": str(tmp_path / "data.parquet"),
    }
    cfg = {
        "name": "nul",
        "data": data,
        "model": {"name": "tiny_bert", "max_length": 8},
        "training": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "num_threads": 1},
        "evaluation": {"n_samples": 4, "batch_size": 4},
        "explainers": ["text_random"],
        "metrics": ["comprehensiveness"],
    }
    res = xaiarena.run(cfg, out=tmp_path / "r", show_progress=False)
    examples = (tmp_path / "r" / "results" / "examples" / "csv_text.json").read_text()
    assert "\\u0000" in examples  # the data did carry NUL bytes this far
    html = res.report_path.read_text()
    assert not any(c in html for c in "\x00\x07\x1b") and "\ufffd" in html


def test_9_output_files_respect_the_umask(tiny_run_dir, tmp_path):
    out = copy_run(tiny_run_dir, tmp_path)
    old = os.umask(0o027)
    try:
        res = cli.invoke(app, ["report", str(out)])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    written = [out / "report.html", *(out / "figures").iterdir()]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o640)}


def test_9_a_checkpoint_that_is_a_folder_is_named_as_one(tmp_path, image_folder_data, user_model):
    root, _ = image_folder_data
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(user_model["pt"], folder / "model.pt")
    model = {
        "name": "torch_module",
        "factory": user_model["factory"],
        "checkpoint": str(folder),
        "mean": 0.5,
        "std": 0.25,
    }
    cfg = {
        "name": "byo",
        "data": {"name": "image_folder", "root": str(root)},
        "model": model,
        "evaluation": {"n_samples": 4},
        "explainers": ["saliency"],
        "metrics": ["sparseness"],
    }
    line = one_error(invoke_run(cfg_file(tmp_path, cfg), tmp_path / "r"))
    assert "model.checkpoint" in line and "is a folder" in line and "model.pt" in line
    assert "does not exist" not in line


def test_9_a_symlinked_text_file_given_as_maps_is_said_to_be_text(tiny_run_dir, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    (tmp_path / "notes.txt").write_text("these are my notes, not maps\n")
    (maps / "mine.npy").symlink_to(tmp_path / "notes.txt")
    res = cli.invoke(
        app, ["score", str(tiny_run_dir), str(maps), "--metric", "sparseness", "--quiet"]
    )
    line = one_error(res)
    assert "holds text" in line and "symbolic link" in line and "pickled" not in line


def test_9_evaluate_on_a_device_that_does_not_exist_is_an_input_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(InputError, match="'tpu' is not a device"):
        xaiarena.evaluate(
            model,
            torch.rand(2, 3, 8, 8),
            [0, 1],
            {"m": torch.rand(2, 8, 8)},
            ["sparseness"],
            device="tpu",
        )


def test_9_every_bad_entry_of_xaiarena_plugins_is_reported(tmp_path, monkeypatch, isolated_plugins):
    monkeypatch.setenv("XAIARENA_PLUGINS", f"byo_no_such_module,{tmp_path / 'missing.py'}")
    res = cli.invoke(app, ["list"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "byo_no_such_module" in res.output and str(tmp_path / "missing.py") in res.output


@pytest.mark.parametrize("concepts", ["list", "file"])
def test_9_a_dissect_config_with_an_empty_concept_set_fails_at_config_time(tmp_path, concepts):
    if concepts == "file":
        (tmp_path / "concepts.txt").write_text("# only comments\n\n")
        spec = {"name": "file", "path": str(tmp_path / "concepts.txt")}
    else:
        spec = {"name": "list", "items": [" ", ""]}
    data = {"name": "hard_mnist", "n_train": 300, "n_test": 80}
    cfg = {
        "name": "d",
        "data": data,
        "model": "lenet",
        "dissect": {"layers": ["net.features.0"], "concepts": spec, "scorer": "annotations"},
    }
    start = time.monotonic()
    res = cli.invoke(
        app, ["dissect", str(cfg_file(tmp_path, cfg)), "--out", str(tmp_path / "r"), "--quiet"]
    )
    line = one_error(res)
    assert "dissect.concepts" in line and time.monotonic() - start < 10
    assert not (tmp_path / "r").exists()
