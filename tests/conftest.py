"""Shared fixtures: a small Hard-MNIST task and a LeNet trained on it, one tiny finished run
(once per session), user data and models, and the ``integration`` tier.

Every test under tests/integration/ is marked ``integration`` here (whole runs, the CLI end to
end, studies, Ray); ``pytest -m "not integration"`` is the fast tier, plain ``pytest`` runs
both. Helpers live in tests/support (``from tests.support.X import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.support.images import USER_MODEL_SOURCE, write_image_folder

os.environ.setdefault("XAIARENA_QUIET", "1")

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    """The ``integration`` marker on every test under tests/integration/."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """The directory of one finished tiny run (tests/support/runs.py's ``CFG`` with ``TINY``),
    run once per session. Read it, never change it: a test that changes a run copies it first
    (``tests.support.runs.copy_run``)."""
    import xaiarena
    from tests.support.runs import CFG, TINY

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    xaiarena.run(CFG, out=out, overrides=TINY, show_progress=False)
    return out


@pytest.fixture(scope="session")
def small_task():
    from xaiarena.data import load_task

    return load_task("hard_mnist", seed=0, n_train=3000, n_test=200)


@pytest.fixture(scope="session")
def trained_lenet(small_task):
    """A LeNet trained for 3 epochs on ``small_task`` (clearly better than chance)."""
    from xaiarena.config import TrainingConfig
    from xaiarena.models import build_model, train_model

    model = build_model("lenet", small_task, seed=0)
    train_model(
        model,
        small_task,
        TrainingConfig(epochs=3, batch_size=64, lr=2e-3),
        seed=0,
        device=torch.device("cpu"),
        show_progress=False,
    )
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): a second thread only adds spin-waiting, most of all on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """tiny_bert trained on planted_sentiment, frozen (the checkpoint is shared by the text test
    modules through the session's base temp folder)."""
    from xaiarena.config import TrainingConfig
    from xaiarena.data import load_task
    from xaiarena.models import build_model, train_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    task = load_task("planted_sentiment", seed=0, n_train=1000, n_test=100)
    model = build_model("tiny_bert", task, seed=0)
    res = train_model(
        model,
        task,
        TrainingConfig(epochs=4, batch_size=32, lr=3e-3, optimizer="adamw"),
        seed=0,
        device=torch.device("cpu"),
        show_progress=False,
        checkpoint_dir=tmp_path_factory.getbasetemp() / "tiny_bert_planted",
    )
    assert res.test_accuracy > 0.9, res.history
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return task, model


# --------------------------------------------------------------------------- user data and models


@pytest.fixture(scope="session")
def image_folder_data(tmp_path_factory):
    """A small image folder with masks: ``(root, masks_root)`` (do not modify; copy it)."""
    base = tmp_path_factory.mktemp("image_folder")
    write_image_folder(base / "images", base / "masks")
    return base / "images", base / "masks"


@pytest.fixture(scope="session")
def user_model(tmp_path_factory):
    """A user's model file (``build``) and state dicts of it (seed 0) as ``.pt`` and
    ``.safetensors``:
    ``{"file", "factory", "pt", "safetensors", "state"}``."""
    import importlib.util

    base = tmp_path_factory.mktemp("user_model")
    path = base / "mymodel.py"
    path.write_text(USER_MODEL_SOURCE)
    spec = importlib.util.spec_from_file_location("_conftest_mymodel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    state = mod.build().state_dict()
    torch.save(state, base / "weights.pt")
    from safetensors.torch import save_file

    save_file(state, str(base / "weights.safetensors"))
    return {
        "file": path,
        "factory": f"{path}:build",
        "pt": base / "weights.pt",
        "safetensors": base / "weights.safetensors",
        "state": state,
    }


@pytest.fixture(scope="session")
def make_image_folder():
    """``make_image_folder(root, masks_root=None, n_train=6, n_test=4, size=16, seed=0)`` writes the
    layout of :func:`image_folder_data` (for tests that change files)."""
    return write_image_folder


PLUGIN_MODULE_PREFIXES = ("xaiarena_example_plugin", "_xaiarena_user_", "byo_")


@pytest.fixture()
def isolated_plugins(monkeypatch):
    """A clean slate for plugin tests: plugin modules (the example package, user files, ``byo_*``
    test modules) unloaded and unregistered, installed plugins looked up afresh; everything
    (registries, modules, plugin state) restored after the test."""
    import sys

    from xaiarena import plugins
    from xaiarena.registry import REGISTRIES, load_builtins

    load_builtins()
    saved = {k: dict(r._entries) for k, r in REGISTRIES.items()}
    saved_modules = {n: m for n, m in sys.modules.items() if n.startswith(PLUGIN_MODULE_PREFIXES)}
    for name in saved_modules:
        del sys.modules[name]
    for r in REGISTRIES.values():
        for name in [
            n
            for n, e in r._entries.items()
            if getattr(e.factory, "__module__", "") in saved_modules
        ]:
            del r._entries[name]
    state = (plugins._installed.done, plugins._installed.error)
    plugins._installed.done, plugins._installed.error = False, None
    monkeypatch.delenv(plugins.ENV_PLUGINS, raising=False)
    monkeypatch.delenv(plugins.ENV_NO_PLUGINS, raising=False)
    yield
    for name in [n for n in sys.modules if n.startswith(PLUGIN_MODULE_PREFIXES)]:
        del sys.modules[name]
    sys.modules.update(saved_modules)
    for k, r in REGISTRIES.items():
        r._entries.clear()
        r._entries.update(saved[k])
    plugins._installed.done, plugins._installed.error = state


@pytest.fixture
def ray_instance():
    """Ray, skipped where it is not installed; the local instance a test starts (through a run
    with ``executor: ray``) is shut down after it."""
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()
