"""A diverged model is an error, not a result (issue 17.4, training side): a non-finite loss stops
training with a TrainingError, a non-finite model is never cached, a bad cached checkpoint is
discarded and retrained, and check_finite_outputs refuses a model whose outputs are NaN/inf."""

from __future__ import annotations

import logging

import pytest
import torch
from typer.testing import CliRunner

from xaiarena.cli import app
from xaiarena.config import TrainingConfig
from xaiarena.data import load_task
from xaiarena.errors import TrainingError
from xaiarena.models import build_model, train_model
from xaiarena.models.training import check_finite_outputs

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return load_task("hard_mnist", seed=0, n_train=128, n_test=16)


def _model(task, seed=0):
    return build_model("lenet", task, seed=seed, channels=(4, 8), hidden=(8,))


def _train(task, ckpt=None, seed=0, **cfg):
    model = _model(task, seed)
    cfg = {"epochs": 1, "batch_size": 32, **cfg}
    return model, train_model(
        model,
        task,
        TrainingConfig(**cfg),
        seed=seed,
        device=CPU,
        checkpoint_dir=ckpt,
        show_progress=False,
    )


def test_non_finite_loss_stops_training_and_caches_nothing(task, tmp_path):
    with pytest.raises(TrainingError) as err:
        _train(task, tmp_path, lr=1e12)
    msg = str(err.value)
    for words in (
        "training diverged",
        "epoch 1/1",
        "step 2/",
        "training.lr=1e+12",
        "Lower training.lr",
        "labels in 0..9",
        "Nothing was cached",
    ):
        assert words in msg, (words, msg)
    assert not list(tmp_path.iterdir())


def test_weights_that_turn_non_finite_on_the_last_step_are_not_cached(task, tmp_path, monkeypatch):
    """Every loss is finite, but the last optimiser step leaves an infinite weight."""
    from xaiarena.models import training

    real = training._optimizer

    def poisoned(model, cfg):
        opt = real(model, cfg)

        def overflow(optimizer, args, kwargs):
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")

        opt.register_step_post_hook(overflow)
        return opt

    monkeypatch.setattr(training, "_optimizer", poisoned)
    with pytest.raises(
        TrainingError,
        match=r"after 1 epoch\(s\) 1 weight tensor\(s\) hold NaN or infinity "
        r"\(e.g. net.features.0.weight.*Nothing was cached",
    ):
        _train(task, tmp_path, batch_size=256)  # one step in all: batch >= the training split
    assert not list(tmp_path.iterdir())


def _corrupt_truncated(ckpt):
    ckpt.write_bytes(ckpt.read_bytes()[:100])


def _corrupt_nan(ckpt):
    state = torch.load(ckpt, weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, ckpt)


def _corrupt_keys(ckpt):
    torch.save({"weight": torch.zeros(3)}, ckpt)


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_nan, _corrupt_keys])
def test_bad_cached_checkpoint_is_discarded_and_retrained(task, tmp_path, corrupt, caplog):
    fresh, ref = _train(task, seed=3)  # no cache: what retraining must reproduce
    _train(task, tmp_path, seed=3)
    corrupt(tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING, logger="xaiarena.models.training"):
        model, res = _train(task, tmp_path, seed=3)
    assert not res.cache_hit and res.history == ref.history
    assert "discarding the cached model checkpoint" in caplog.text and str(tmp_path) in caplog.text
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # a failed load did not touch the weights retraining starts from
    again, res2 = _train(task, tmp_path, seed=3)
    assert res2.cache_hit  # the rewritten checkpoint is good


def test_check_finite_outputs(task):
    model = _model(task).eval()
    x = task.test.float_images(slice(0, 6))
    check_finite_outputs(model, x, CPU, batch_size=4)
    check_finite_outputs(model, task.test.images[:6], CPU)  # uint8 taken as 0..255
    with torch.no_grad():
        model.net.classifier[-1].bias[3] = float("nan")
    with pytest.raises(
        TrainingError,
        match=r"NaN or infinite on 6 of 6 of the evaluation inputs \(first: #0\); "
        r"1 weight tensor\(s\) hold NaN/inf \(e.g. net.classifier.\d.bias\)",
    ):
        check_finite_outputs(model, x, CPU, batch_size=4)
    good = _model(task).eval()
    huge = x.clone()
    huge[4] = 1e38  # finite weights, overflowing input: found at its position
    with pytest.raises(TrainingError, match=r"on 1 of 6 .*\(first: #4\); its weights are finite"):
        check_finite_outputs(good, huge, CPU, batch_size=4)


def test_cli_diverged_training_exits_2_and_leaves_no_checkpoint(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {name: hard_mnist, n_train: 128, n_test: 16}\n"
        "model: {name: lenet, channels: [4, 8]}\n"
        "training: {epochs: 1, batch_size: 32, num_threads: 1}\nevaluation: {n_samples: 4}\n"
        "explainers: [random]\nmetrics: [sparseness]\n"
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["run", str(cfg), "--out", str(out), "--quiet", "--set", "training.lr=1e12"]
    )
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = res.output.strip()
    assert line.startswith("error: training diverged") and "\n" not in line
    assert "epoch 1/1" in line and "training.lr" in line
    models = out / "cache" / "models"
    assert not [p for p in models.rglob("*") if p.is_file()] if models.exists() else True
    # the re-run does not reuse anything: it fails the same way
    res = CliRunner().invoke(
        app, ["run", str(cfg), "--out", str(out), "--quiet", "--set", "training.lr=1e12"]
    )
    assert res.exit_code == 2 and "training diverged" in res.output


@pytest.fixture(scope="module")
def text_task():
    return load_task("planted_sentiment", seed=0, n_train=64, n_test=8)


def test_text_model_divergence_and_outputs(text_task, tmp_path):
    model = build_model("tiny_bert", text_task, seed=0)
    with pytest.raises(
        TrainingError, match=r"training diverged: the loss is (nan|inf).*labels in 0..1"
    ):
        train_model(
            model,
            text_task,
            TrainingConfig(epochs=2, batch_size=16, lr=1e12, optimizer="adamw"),
            seed=0,
            device=CPU,
            checkpoint_dir=tmp_path,
            show_progress=False,
        )
    assert not list(tmp_path.iterdir())
    fresh = build_model("tiny_bert", text_task, seed=0).eval()
    texts = text_task.test.texts
    check_finite_outputs(
        fresh, fresh.encode(texts), CPU, batch_size=3
    )  # a TextBatch, as the runner has it
    check_finite_outputs(fresh, texts, CPU)  # raw texts
    with torch.no_grad():
        next(p for n, p in fresh.named_parameters() if "classifier" in n).fill_(float("inf"))
    with pytest.raises(
        TrainingError, match=f"on {len(texts)} of {len(texts)} of the evaluation inputs"
    ):
        check_finite_outputs(fresh, fresh.encode(texts), CPU, batch_size=3)
