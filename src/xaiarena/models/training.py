"""The training loop shared by all models (images and texts).

Seeded (the same seed and config give bit-identical weights on the same device and
thread count), with a progress bar, per-epoch accuracy, optional early stopping on a
validation split carved from the training data, and checkpoints written atomically.

Images are batched as float pixels in [0, 1]; texts (``task.modality == "text"``) are
tokenised per batch by the text model (``model.collate``: dynamic padding, truncation
at the model's ``max_length``). A model with a ``warmup_fraction`` attribute (the text
models) gets a linear learning-rate warm-up over that share of the steps before the
configured schedule (``cosine`` decay or constant).

Divergence is an error, not a result: a non-finite loss stops training with a
:class:`~xaiarena.errors.TrainingError` naming the epoch and step and what to change;
a model whose weights are not finite is never written to the cache, and a cached
checkpoint that is unreadable or not finite is discarded (logged) and retrained.
:func:`check_finite_outputs` checks a model's outputs before it is explained.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError, TrainingError
from ..files import atomic_save_torch, atomic_write_text
from ..ops.prediction import classes_on_cpu, pixels, predict_in_batches
from ..progress import progress

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float = float("nan")
    best_epoch: int = -1
    seconds: float = 0.0
    cache_hit: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Predicted classes for uint8 or float images (float taken as pixel space [0, 1]), or raw
    texts."""
    if isinstance(images, (list, tuple)):  # texts: the text model tokenises them
        return model.predict_texts(list(images), device, batch_size=min(batch_size, 64))
    model.eval()
    return predict_in_batches(
        model,
        images,
        batch_size,
        prepare=lambda xb: pixels(xb, device),
        keep=classes_on_cpu,
        empty=lambda: torch.empty(0, dtype=torch.long),
    )


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or infinity."""
    return [
        k
        for k, v in state.items()
        if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())
    ]


def _batches(inputs: Any, batch_size: int):
    for start in range(0, len(inputs), batch_size):
        yield start, inputs[start : start + batch_size]


@torch.no_grad()
def check_finite_outputs(
    model: nn.Module,
    inputs: Any,
    device: torch.device,
    *,
    batch_size: int = 64,
    what: str = "the evaluation inputs",
) -> None:
    """Raise :class:`~xaiarena.errors.TrainingError` unless ``model``'s outputs on ``inputs`` are
    finite.

    ``inputs``: float pixel-space images ``(N, C, H, W)`` (uint8 taken as 0..255), a
    :class:`~xaiarena.data.text.TextBatch`, or a list of texts (tokenised by ``model.collate``).
    Explanations and metrics of a model whose logits are NaN or infinite are meaningless
    (accuracy-type scores would still look plausible), so the runner calls this before
    explaining. The message says how many inputs and which one first.
    """
    from ..ops.modes import eval_mode

    bad, first, total = 0, -1, 0
    with eval_mode(model):
        for start, xb in _batches(inputs, batch_size):
            if isinstance(xb, (list, tuple)):
                xb = model.collate(list(xb), device)
            elif isinstance(xb, torch.Tensor):
                xb = (xb.float().div(255.0) if xb.dtype == torch.uint8 else xb).to(device)
            else:
                xb = xb.to(device)
            out = model(xb)
            ok = torch.isfinite(out.float()).reshape(len(out), -1).all(1).cpu()
            total += len(ok)
            if not bool(ok.all()):
                if first < 0:
                    first = start + int((~ok).nonzero()[0])
                bad += int((~ok).sum())
    if bad:
        weights = _non_finite(model.state_dict())
        cause = (
            f"{len(weights)} weight tensor(s) hold NaN/inf (e.g. {weights[0]})"
            if weights
            else "its weights are finite, so the inputs or the model's arithmetic overflow"
        )
        raise TrainingError(
            f"the model's outputs are NaN or infinite on {bad} of {total} of {what} (first: "
            f"#{first}); {cause}. Explaining it would give meaningless maps and scores. If it was "
            "trained here, lower training.lr (or use a scheduler/warm-up) and check the data "
            "(finite pixels, labels in range)"
        )


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, images, device) == labels).float().mean())


def correct_predictions(
    model: nn.Module, preds: torch.Tensor, labels: torch.Tensor, task=None
) -> torch.Tensor | None:
    """Bool per sample: is the prediction right? A model with its own label space (a pretrained
    ImageNet model on a dataset with other labels) decides through ``model.correct(preds, labels,
    task)``, which returns None where correctness is not defined."""
    fn = getattr(model, "correct", None)
    if callable(fn) and task is not None:
        return fn(preds, labels, task)
    return preds == labels


def _take(data, idx: torch.Tensor):
    """``data[idx]`` for tensors, the selected items for a list of texts."""
    if isinstance(data, (list, tuple)):
        return [data[i] for i in idx.tolist()]
    return data[idx]


def _split_inputs(split):
    return split.texts if hasattr(split, "texts") else split.images


def _scheduler(opt, cfg, total_steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay or constant."""
    warm = int(round(warmup_fraction * total_steps))
    if warm == 0:
        if cfg.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        return None
    import math

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def evaluate_pretrained(model: nn.Module, task, device: torch.device) -> TrainResult:
    """The ``train_model`` result for a pretrained model (any model with ``pretrained`` true: also a
    ``torch_module`` from a checkpoint or a fine-tuned ``transformer``; images or texts): no
    training, test accuracy only (NaN, with a logged reason, when the task's labels do not map to
    the model's classes)."""
    start = time.perf_counter()
    model.to(device).eval()
    acc = float("nan")
    if len(task.test):
        preds = predict(model, _split_inputs(task.test), device, batch_size=64)
        ok = correct_predictions(model, preds, task.test.labels, task)
        if ok is None:
            log.warning(
                "test accuracy of the pretrained model is not defined on '%s': its labels do not "
                "map to %s classes",
                task.name,
                model.label_space,
            )
        else:
            acc = float(ok.float().mean())
    return TrainResult(
        history=[], test_accuracy=acc, best_epoch=0, seconds=time.perf_counter() - start
    )


def train_model(
    model: nn.Module,
    task,
    cfg,
    *,
    seed: int,
    device: torch.device,
    checkpoint_dir: str | Path | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``task.train`` with the :class:`~xaiarena.config.TrainingConfig` ``cfg``.

    When ``checkpoint_dir`` holds a finished checkpoint (``model.pt`` + ``train.json``)
    it is loaded instead (``cache_hit=True``) and no training happens. A pretrained model
    (``model.pretrained`` true) is never trained: only its test accuracy is measured.

    Longer than 80 lines because the epoch loop shares the optimiser, scheduler, history, progress
    bar and divergence checks with the checkpoint handling around it.
    """
    if getattr(model, "pretrained", False):
        return evaluate_pretrained(model, task, device)
    ckpt = Path(checkpoint_dir) / "model.pt" if checkpoint_dir else None
    meta_path = Path(checkpoint_dir) / "train.json" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists() and meta_path.exists():
        cached = _load_checkpoint(model, ckpt, meta_path)
        if cached is not None:
            model.to(device).eval()
            return cached

    if len(task.train) == 0:
        why = task.meta.get("no_train_split")
        why = f" ({why})" if isinstance(why, str) else ""
        raise DataError(
            f"dataset '{task.name}' has no training samples{why}, but {type(model).__name__} must "
            "be trained; add a training split, or use a model that needs no training (torch_module "
            "with a checkpoint, a pretrained model)"
        )
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = _split_inputs(task.train), task.train.labels
    is_text = isinstance(images, (list, tuple))
    n_val = int(len(labels) * cfg.val_fraction)
    perm = torch.randperm(len(labels), generator=gen)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    model.to(device)
    opt = _optimizer(model, cfg)
    steps_per_epoch = -(-len(tr_idx) // cfg.batch_size)
    sched = _scheduler(
        opt, cfg, cfg.epochs * steps_per_epoch, float(getattr(model, "warmup_fraction", 0.0))
    )
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult()
    best_state, best_score, bad_epochs = None, -1.0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        total, correct, loss_sum = 0, 0, 0.0
        bar = progress(
            range(steps_per_epoch),
            desc=f"train epoch {epoch + 1}/{cfg.epochs}",
            disable=not show_progress,
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb = (
                model.collate(_take(images, idx), device)
                if is_text
                else images[idx].float().div_(255.0).to(device)
            )
            yb = labels[idx].to(device)
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            if not bool(torch.isfinite(loss.detach())):
                raise TrainingError(
                    _diverged(float(loss.detach()), epoch, step, steps_per_epoch, cfg, task)
                )
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        record = {"epoch": epoch + 1, "loss": loss_sum / total, "train_accuracy": correct / total}
        if n_val:
            record["val_accuracy"] = accuracy(
                model, _take(images, val_idx), labels[val_idx], device
            )
        result.history.append(record)
        score = record.get("val_accuracy", record["train_accuracy"])
        if score > best_score:
            best_score, bad_epochs, result.best_epoch = score, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if show_progress:
            progress.write(
                f"epoch {epoch + 1}: loss {record['loss']:.4f}  train acc "
                f"{record['train_accuracy']:.3f}"
                + (f"  val acc {record['val_accuracy']:.3f}" if n_val else "")
            )
        if cfg.early_stop_patience and bad_epochs >= cfg.early_stop_patience:
            break
    if cfg.early_stop_patience and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.test_accuracy = accuracy(model, _split_inputs(task.test), task.test.labels, device)
    result.seconds = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = _non_finite(state)
    if bad:  # the last step can leave NaN/inf weights with every loss finite
        raise TrainingError(
            f"training diverged: after {len(result.history)} epoch(s) {len(bad)} weight tensor(s) "
            f"hold NaN or infinity (e.g. {bad[0]}; training.lr={cfg.lr:g}, optimizer "
            f"{cfg.optimizer}). Lower training.lr (e.g. {cfg.lr / 10:g}) and check the data. "
            "Nothing was cached"
        )
    if ckpt is not None:
        atomic_save_torch(state, ckpt)
        atomic_write_text(meta_path, json.dumps(result.to_dict(), indent=2))
    return result


def _diverged(loss: float, epoch: int, step: int, steps: int, cfg, task) -> str:
    why = "weights grew without bound" if step or epoch else "the first batch already gives it"
    return (
        f"training diverged: the loss is {loss} at epoch {epoch + 1}/{cfg.epochs}, step "
        f"{step + 1}/{steps} (training.lr={cfg.lr:g}, optimizer {cfg.optimizer}). Lower "
        f"training.lr (e.g. {cfg.lr / 10:g}; {why}), and check the data: finite pixels, labels in "
        f"0..{task.num_classes - 1}. Nothing was cached"
    )


def _load_checkpoint(model: nn.Module, ckpt: Path, meta_path: Path) -> TrainResult | None:
    """The cached result with ``model``'s weights loaded, or None (files discarded, logged) when the
    checkpoint cannot be read, does not fit the model, or holds NaN/infinite weights. The model is
    changed only when the checkpoint is good (a failed load must not alter the fresh weights that
    retraining starts from)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        meta = json.loads(meta_path.read_text())
        result = TrainResult(**meta)
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
        own = model.state_dict()
        if set(state) != set(own):
            raise ValueError(
                f"its keys differ from the model's ({len(set(state) ^ set(own))} differ)"
            )
        shapes = [k for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
        if shapes:
            raise ValueError(f"tensor shapes differ from the model's ({shapes[0]}, ...)")
        bad = _non_finite(state)
        if bad:
            raise ValueError(f"{len(bad)} weight tensor(s) hold NaN or infinity ({bad[0]}, ...)")
    except Exception as exc:  # noqa: BLE001 - any unreadable or unusable checkpoint is discarded
        log.warning(
            "discarding the cached model checkpoint %s (%s: %s); training again",
            ckpt.parent,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        for f in (ckpt, meta_path):
            f.unlink(missing_ok=True)
        return None
    model.load_state_dict(state)
    result.cache_hit = True
    return result
