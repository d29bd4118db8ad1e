"""Per-image cost at ImageNet resolution, and the worked example of issue 26 (item 5).

**Measured here, on this CPU.** A ResNet-50 (He et al. 2016: bottleneck blocks 3-4-6-3,
25.6 M parameters, 1,000 classes; built in this file, randomly initialised: no download,
and the cost of a forward or backward pass does not depend on the weights' values) takes
3x224x224 images in [0, 1] (ImageNet mean/std inside the model, CAMs on ``layer4``). On
``--images`` synthetic images (smooth random colour fields, so that SLIC finds segments as
on photos) with random box masks (ImageNet's validation boxes play that role), explaining
the predicted class:

First every explainer and metric runs once on a 32x32 image, untimed (imports, first calls).
Then, timed:

* every explainer's maps through ``xaiarena.explain`` (the runner's batching path), wall
  seconds per image;
* every metric through ``xaiarena.evaluate`` on the maps of every explainer it scores in
  the worked configuration (all ten, or its ``explainers:`` list), wall seconds per image,
  on the first ``--metric-images`` images, less the statistics ``evaluate`` computes at the
  end (timed again on its table and subtracted: a run computes them once, on the driver);
* for each call, the rows through the model (outermost calls; with and without autograd),
  the seconds inside the model's forward calls, and the peak RSS above the RSS before the
  call (``/proc/self/clear_refs``, Linux);
* the model's own CPU throughput (forward, and forward + input-gradient backward, batch 16).

A cost's *model part* is the seconds inside the forward calls plus, per row with autograd,
the backward share of a row's forward + backward time at batch 16; the *other* part is the
rest (SLIC, sorting, masks, ROAD's sparse solves, Python). With one or two images the
one-pass explainers run at batch 1 or 2, which costs more per image than a run's batches
of 64: the per-image costs are upper bounds.

**Worked example (computed, not measured).** ImageNet validation, 50,000 images, the same
explainers and metrics, sharded as issue 26 plans (every explain task = one explainer on one
shard, every score task = one metric on one shard): number of tasks per shard size; storage
of the inputs and of each explainer's maps (float32 and float16) and of the per-sample table
(bytes per row measured on a synthetic table of that shape); network traffic per worker;
GPU time between two bounds, every cost scaled by the ratio of a published GPU throughput
of ResNet-50 (``GPU_REFERENCES``, cited) to the CPU throughput measured here (fast), or only
the model part scaled and the rest at this CPU's speed (slow: it runs on the worker's CPU);
and the limits in the order they are reached. Capacities
(host RAM per GPU, shared file system bandwidth, network) are assumptions given as options.

::

    python benchmarks/imagenet_scale.py            # 2 images (explainers), 1 image (metrics)
    python benchmarks/imagenet_scale.py --quick    # 1 image everywhere
    python benchmarks/imagenet_scale.py --shard-size 64 256 1024 --gpus 8 64

On 2 quiet cores the default run should take about 6 minutes, --quick about 5 (estimates; most of
it max_sensitivity, deletion, insertion, occlusion); take numbers on a quiet machine. Writes
``benchmarks/results/imagenet_scale.json`` (``imagenet_scale_quick.json`` with ``--quick``)
and prints the tables as Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

import xaiarena
from xaiarena import stats
from xaiarena.api import DEFAULT_DATASET
from xaiarena.files import parquet_bytes
from xaiarena.models.pretrained import IMAGENET_MEAN, IMAGENET_STD
from xaiarena.models.vision import ImageClassifier

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 224
CHANNELS = 3
N_IMAGENET_VAL = 50_000

# The built-in benchmark's explainers (src/xaiarena/configs/default.yaml) but DiET (learned:
# it trains on the dataset) and Sobel. Occlusion's window and stride are scaled to 224 px
# (the defaults, 16 / 12, were chosen for 64 px; at 224 px they make 324+ windows per image).
EXPLAINERS: list = [
    "gradcam",
    "gradcam_pp",
    "integrated_gradients",
    "gradient_shap",
    "input_x_gradient",
    "smoothgrad",
    {"name": "occlusion", "window": 32, "stride": 16},
    "lime",
    "lrp",
    "random",
]
# The built-in benchmark's metrics but the agreement with Grad-CAM, with its settings.
METRICS: list = [
    "pixel_perturbation",
    {"name": "deletion", "steps": 20},
    {"name": "insertion", "steps": 20},
    {"name": "faithfulness_correlation", "nr_runs": 100},
    {
        "name": "road",
        "percentages": [10, 30, 50, 70, 90],
        "explainers": ["integrated_gradients", "lrp", "random"],
    },
    {
        "name": "max_sensitivity",
        "nr_samples": 5,
        "explainers": ["gradcam", "integrated_gradients", "random"],
    },
    "sparseness",
    "topk_iou",
    "pointing_game",
    "relevance_mass_accuracy",
]

# Published ResNet-50 v1.5 inference throughput on one GPU (images/s, the best batch size of
# the table). The first is the reference: TF32 is what float32 convolutions use on an A100 by
# default in PyTorch (torch.backends.cudnn.allow_tf32), so it matches xaiarena's float32.
GPU_REFERENCES = {
    "a100_tf32": {
        "img_per_s": 1911.96,
        "gpu": "NVIDIA A100 40GB (DGX A100, 1 GPU)",
        "precision": "TF32",
        "batch_size": 256,
        "software": "TensorFlow 20.06-tf1-py3 NGC container",
        "source": "NVIDIA DeepLearningExamples, ResNet-50 v1.5 for TensorFlow, README, 'Inference "
        "performance: NVIDIA DGX A100 (1x A100 40GB)', table 'TF32 Inference Latency' (last "
        "changed in commit 9de48bc)",
        "url": "https://github.com/NVIDIA/DeepLearningExamples/blob/master/TensorFlow/Classification/ConvNets/"
        "resnet50v1.5/README.md#inference-performance-nvidia-dgx-a100-1x-a100-40gb",
    },
    "a100_amp": {
        "img_per_s": 3570.46,
        "gpu": "NVIDIA A100 40GB (DGX A100, 1 GPU)",
        "precision": "mixed (FP16)",
        "batch_size": 64,
        "software": "TensorFlow 20.06-tf1-py3 NGC container",
        "source": "same README and section, table 'Mixed Precision Inference Latency'",
        "url": "https://github.com/NVIDIA/DeepLearningExamples/blob/master/TensorFlow/Classification/ConvNets/"
        "resnet50v1.5/README.md#inference-performance-nvidia-dgx-a100-1x-a100-40gb",
    },
    "v100_fp32_pytorch": {
        "img_per_s": 1261.0,
        "gpu": "NVIDIA V100 16GB (DGX-1, 1 GPU)",
        "precision": "FP32",
        "batch_size": 256,
        "software": "PyTorch 21.03 NGC container",
        "source": "NVIDIA DeepLearningExamples, ResNet-50 v1.5 for PyTorch, README, 'Inference "
        "performance: NVIDIA DGX-1 (1x V100 16GB)', table 'FP32 Inference Latency'",
        "url": "https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/"
        "resnet50v1.5/README.md#inference-performance-nvidia-dgx-1-1x-v100-16gb",
    },
}
REFERENCE = "a100_tf32"


# --------------------------------------------------------------------------- the model


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here: v1.5), 1x1 expand by 4, projection shortcut where the shape
    changes."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50 v1.5 for 224x224 inputs (25.6 M parameters), randomly initialised."""

    def __init__(self, num_classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = 4 * width
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    def cam_layer(self) -> str:
        return "layer4"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


def build_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = ImageClassifier(ResNet50(), IMAGENET_MEAN, IMAGENET_STD)
    return model.eval()


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random colour fields with fine noise (N, 3, 224, 224) in [0, 1], and one random box
    mask per image covering 10-50% of it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, CHANNELS, 7, 7, generator=g)
    x = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    x = (x + 0.05 * torch.randn(n, CHANNELS, SIZE, SIZE, generator=g)).clamp(0, 1)
    masks = torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        h, w = (int(SIZE * float(f)) for f in 0.3 + 0.4 * torch.rand(2, generator=g))
        y0 = int(torch.randint(0, SIZE - h + 1, (1,), generator=g))
        x0 = int(torch.randint(0, SIZE - w + 1, (1,), generator=g))
        masks[i, y0 : y0 + h, x0 : x0 + w] = 1
    return x, masks


# --------------------------------------------------------------------------- measuring


class RowCounter:
    """Rows through the model's outermost forward calls, with and without autograd, and the wall
    seconds spent inside those forward calls."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.forward = self.grad = 0
        self.forward_seconds = 0.0
        self._t0 = 0.0

    def _pre(self, module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim >= 1:
            if torch.is_grad_enabled():
                self.grad += int(x.shape[0])
            else:
                self.forward += int(x.shape[0])
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        self.forward_seconds += time.perf_counter() - self._t0

    @contextmanager
    def counting(self):
        self.forward = self.grad = 0
        self.forward_seconds = 0.0
        handles = [
            self.model.register_forward_pre_hook(self._pre),
            self.model.register_forward_hook(self._post),
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def peak_rss(out: dict):
    """``out["peak_extra_mb"]``: the peak RSS during the block above the RSS before it (Linux)."""
    before = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        ok = before is not None
    except OSError:
        ok = False
    try:
        yield
    finally:
        hwm = _status_kb("VmHWM") if ok else None
        out["peak_extra_mb"] = (
            None if hwm is None or before is None else round((hwm - before) / 1024, 1)
        )


def cpu_throughput(model: nn.Module, batch: int, repeats: int) -> dict:
    """The model's images per second on this CPU: forward (no autograd), and forward + backward to
    the input (what gradient explainers do), the best of ``repeats``."""
    x = torch.rand(batch, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        model(x[:2])  # warm-up
        fwd = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            fwd.append(time.perf_counter() - t0)
    grad = []
    for _ in range(max(1, repeats - 1)):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        model(xi).logsumexp(1).sum().backward()
        grad.append(time.perf_counter() - t0)
    return {
        "batch_size": batch,
        "forward_img_per_s": round(batch / min(fwd), 3),
        "forward_backward_img_per_s": round(batch / min(grad), 3),
        "forward_seconds": [round(s, 3) for s in fwd],
        "forward_backward_seconds": [round(s, 3) for s in grad],
    }


def label_of(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("label", spec["name"])


def time_explainers(
    model, counter, x, targets, specs, batch_size, say: bool = True
) -> tuple[dict, dict]:
    n = len(x)
    costs, maps = {}, {}
    for spec in specs:
        label = label_of(spec)
        rec: dict = {"spec": spec}
        if say:
            print(f"  explain {label} ...", flush=True)
        try:
            with counter.counting(), peak_rss(rec):
                t0 = time.perf_counter()
                out = xaiarena.explain(model, x, targets, [spec], batch_size=batch_size)
                secs = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - report and go on; the worked example names it
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if say:
                print(f"    failed: {rec['error']}", flush=True)
            costs[label] = rec
            continue
        maps[label] = out[label]
        rec.update(
            seconds_per_image=secs / n,
            forward_rows_per_image=counter.forward / n,
            grad_rows_per_image=counter.grad / n,
            forward_seconds_per_image=counter.forward_seconds / n,
            images=n,
        )
        costs[label] = rec
    return costs, maps


def scored(spec, labels: list[str]) -> tuple[object, list[str]]:
    """The metric spec restricted to the explainers that have maps, and those labels."""
    if isinstance(spec, dict) and "explainers" in spec:
        keep = [e for e in spec["explainers"] if e in labels]
        return {**spec, "explainers": keep}, keep
    return spec, list(labels)


def time_metrics(
    model, counter, x, targets, masks, maps, explainer_specs, specs, batch_size, say: bool = True
) -> tuple[dict, list]:
    n = len(x)
    labels = list(maps)
    reexplain = {label_of(s): s for s in explainer_specs if label_of(s) in maps}
    costs, frames = {}, []
    for spec in specs:
        label = label_of(spec)
        spec_here, keys = scored(spec, labels)
        rec: dict = {"spec": spec, "explainers": keys}
        if not keys:
            rec["error"] = "none of its explainers has maps"
            costs[label] = rec
            continue
        if say:
            print(f"  score {label} on {len(keys)} explainers' maps ...", flush=True)
        attrs = {k: maps[k][:n] for k in keys}
        try:
            with counter.counting(), peak_rss(rec), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                ev = xaiarena.evaluate(
                    model,
                    x,
                    targets,
                    attrs,
                    [spec_here],
                    masks=masks,
                    batch_size=batch_size,
                    explainers={k: reexplain[k] for k in keys},
                )
                secs = time.perf_counter() - t0
                # evaluate() ends with the statistics of its table (bootstrap, paired tests), which
                # a run computes once, on the driver: timed again here and taken off
                t0 = time.perf_counter()
                stats.result_tables(
                    ev.per_sample,
                    {k: v["higher_is_better"] for k, v in ev.metrics_meta.items()},
                    models={DEFAULT_DATASET: type(model).__name__},
                    seed=0,
                )
                stats_secs = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if say:
                print(f"    failed: {rec['error']}", flush=True)
            costs[label] = rec
            continue
        frames.append(ev.per_sample)
        rec.update(
            seconds_per_image=max(0.0, secs - stats_secs) / n,
            statistics_seconds=stats_secs,
            forward_rows_per_image=counter.forward / n,
            grad_rows_per_image=counter.grad / n,
            forward_seconds_per_image=counter.forward_seconds / n,
            images=n,
            maps=len(keys),
            per_sample_rows_per_image=len(ev.per_sample) / n,
        )
        costs[label] = rec
    return costs, frames


def warm_up(model: nn.Module, targets: torch.Tensor) -> None:
    """Every explainer and metric once on one 32x32 image, so that one-time costs (imports, first
    calls) are not timed; the ResNet takes any size (adaptive pooling)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, CHANNELS, 32, 32, generator=g)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    quiet = RowCounter(model)
    log = logging.getLogger("xaiarena")
    level = log.level
    log.setLevel(logging.ERROR)  # the metrics' notes on degenerate maps of a 32x32 image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, maps = time_explainers(model, quiet, x, targets, EXPLAINERS, 64, say=False)
            time_metrics(model, quiet, x, targets, mask, maps, EXPLAINERS, METRICS, 64, say=False)
    finally:
        log.setLevel(level)


def split_model_time(rec: dict, thr: dict) -> None:
    """The model's part of a cost: the seconds measured inside its forward calls plus, per row with
    autograd, the backward pass's share of this CPU's forward + backward time per row; the rest is
    everything else (segmentation, sorting, masks, ROAD's sparse solves, Python)."""
    if "seconds_per_image" not in rec:
        return
    backward_per_row = max(
        0.0, 1 / thr["forward_backward_img_per_s"] - 1 / thr["forward_img_per_s"]
    )
    model = rec["forward_seconds_per_image"] + rec["grad_rows_per_image"] * backward_per_row
    rec["model_seconds_per_image"] = min(model, rec["seconds_per_image"])
    rec["other_seconds_per_image"] = max(0.0, rec["seconds_per_image"] - model)


def per_sample_table_size(
    frames: list[pd.DataFrame],
    n_images: int,
    rows_per_image: float,
    synth_images: int = 1000,
    seed: int = 0,
) -> dict:
    """Bytes per row of ``per_sample.parquet`` and of the frame in memory, on a synthetic table of
    ``synth_images`` images with the measured rows per image (explainer x metric output labels) and
    random values (so the Parquet encoder cannot compress them away)."""
    if not frames:
        return {}
    one = pd.concat(frames, ignore_index=True)
    first = one[one["sample_id"] == one["sample_id"].iloc[0]].drop(columns=["sample_id", "value"])
    rng = np.random.default_rng(seed)
    reps = []
    for i in range(synth_images):
        part = first.copy()
        part["sample_id"] = i
        reps.append(part)
    table = pd.concat(reps, ignore_index=True)
    table["value"] = rng.random(len(table))
    table = table[list(one.columns)]
    pq = len(parquet_bytes(table))
    return {
        "rows_per_image": rows_per_image,
        "synthetic_images": synth_images,
        "rows": len(table),
        "parquet_bytes_per_row": pq / len(table),
        "memory_bytes_per_row": float(table.memory_usage(deep=True).sum()) / len(table),
    }


# --------------------------------------------------------------------------- the worked example


def gb(b: float) -> float:
    return b / 1e9


def worked_example(res: dict, args: argparse.Namespace) -> dict:
    """Issue 26's worked example from the measured per-image costs (see the module docstring)."""
    ex = {k: v for k, v in res["explainers"].items() if "seconds_per_image" in v}
    me = {k: v for k, v in res["metrics"].items() if "seconds_per_image" in v}
    n = args.n_images_total
    e_all, m_all = len(res["explainers"]), len(res["metrics"])
    thr = res["cpu_throughput"]
    ref = GPU_REFERENCES[args.gpu_reference]
    speedup = ref["img_per_s"] / thr["forward_img_per_s"]

    input_f32, input_u8 = CHANNELS * SIZE * SIZE * 4, CHANNELS * SIZE * SIZE
    map_f32, map_f16 = SIZE * SIZE * 4, SIZE * SIZE * 2
    table = res["per_sample_table"]
    rows = table.get("rows_per_image", 0.0) * n
    parquet = rows * table.get("parquet_bytes_per_row", 0.0)
    storage = {
        "inputs_float32_gb": gb(n * input_f32),
        "inputs_uint8_gb": gb(n * input_u8),
        "maps_per_explainer_float32_gb": gb(n * map_f32),
        "maps_per_explainer_float16_gb": gb(n * map_f16),
        "maps_all_float32_gb": gb(e_all * n * map_f32),
        "maps_all_float16_gb": gb(e_all * n * map_f16),
        "per_sample_rows": rows,
        "per_sample_parquet_gb": gb(parquet),
        "per_sample_in_memory_gb": gb(rows * table.get("memory_bytes_per_row", 0.0)),
    }
    storage["total_float32_gb"] = (
        storage["inputs_float32_gb"] + storage["maps_all_float32_gb"] + gb(parquet)
    )
    storage["total_float16_maps_gb"] = (
        storage["inputs_float32_gb"] + storage["maps_all_float16_gb"] + gb(parquet)
    )

    # GPU seconds per image, two bounds: everything scaled by the GPU/CPU throughput ratio (fast),
    # or the model's part scaled and the rest at this CPU's speed (slow: it stays on the worker's
    # CPU)
    def fast(r: dict) -> float:
        return r["seconds_per_image"] / speedup

    def slow(r: dict) -> float:
        return r["model_seconds_per_image"] / speedup + r["other_seconds_per_image"]

    comps = [*ex.values(), *me.values()]
    cpu = sum(r["seconds_per_image"] for r in comps)
    model = sum(r["model_seconds_per_image"] for r in comps)
    gpu_fast, gpu_slow = sum(fast(r) for r in comps), sum(slow(r) for r in comps)
    time_ = {
        "cpu_seconds_per_image": cpu,
        "model_seconds_per_image_cpu": model,
        "other_seconds_per_image_cpu": cpu - model,
        "gpu_cpu_speedup": speedup,
        "gpu_seconds_per_image_fast": gpu_fast,
        "gpu_seconds_per_image_slow": gpu_slow,
        "gpu_hours_fast": n * gpu_fast / 3600,
        "gpu_hours_slow": n * gpu_slow / 3600,
        "cpu_hours_here": n * cpu / 3600,
    }

    per_shard = {}
    scored_maps = {k: r["maps"] for k, r in me.items()}
    for s in args.shard_size:
        shards = math.ceil(n / s)
        # an explain task holds its shard's inputs and maps, a score task its inputs and the maps it
        # scores, each plus the working set measured above (peak RSS over the RSS before the call)
        mem = [
            s * (input_f32 + map_f32) / 1e9 + (r.get("peak_extra_mb") or 0) / 1e3
            for r in ex.values()
        ] + [
            s * (input_f32 + scored_maps[k] * map_f32) / 1e9 + (r.get("peak_extra_mb") or 0) / 1e3
            for k, r in me.items()
        ]
        per_shard[str(s)] = {
            "shard_size": s,
            "shards": shards,
            "explain_tasks": shards * e_all,
            "score_tasks": shards * m_all,
            "tasks": shards * (e_all + m_all)
            + 1,  # + the prepare task (data, model, sample choice)
            "task_gpu_seconds_min_fast": s * min(fast(r) for r in comps),
            "task_gpu_seconds_max_slow": s * max(slow(r) for r in comps),
            "task_memory_gb_max": max(mem),
            "map_files": shards * e_all,
            # the share of the cluster's time that goes to the fixed cost of tasks (at the fast
            # bound)
            "fixed_cost_share": (shards * (e_all + m_all) * args.task_overhead_s)
            / (shards * (e_all + m_all) * args.task_overhead_s + n * gpu_fast),
            "shard_inputs_gb": gb(s * input_f32),
            "shard_maps_gb": gb(s * map_f32),
        }

    # network: every task reads its shard's inputs; an explain task writes its maps, a score task
    # reads the maps it scores. A worker that runs every task of a shard (shard-affine) reads the
    # inputs once and keeps the maps it wrote.
    traffic_tasks = n * e_all * (input_f32 + map_f32) + sum(
        n * (input_f32 + k * map_f32) for k in scored_maps.values()
    )
    traffic_affine = n * input_f32 + n * e_all * map_f32
    per_gpus = {}
    for w in args.gpus:
        per_gpus[str(w)] = {
            "gpus": w,
            "wall_hours_fast": n * gpu_fast / w / 3600,
            "wall_hours_slow": n * gpu_slow / w / 3600,
            "traffic_per_worker_gb": gb(traffic_tasks) / w,
            "traffic_per_worker_gb_shard_affine": gb(traffic_affine) / w,
            # the highest rates: at the fast bound of the time
            "worker_gb_per_s": gb(traffic_tasks) / (n * gpu_fast),
            "shared_fs_gb_per_s": gb(traffic_tasks) * w / (n * gpu_fast),
            "shared_fs_gb_per_s_shard_affine": gb(traffic_affine) * w / (n * gpu_fast),
        }

    # what breaks first: each need against its (assumed) capacity, the smallest headroom first
    s0, w0 = str(args.shard_size[len(args.shard_size) // 2]), str(max(args.gpus))
    ps, pg = per_shard[s0], per_gpus[w0]
    limits = [
        (
            # the train task selects the samples and writes them to the cache shard by shard: it
            # holds the dataset (uint8) and the evaluation inputs (float32); no task holds maps of
            # more than one shard (the shard tasks read their own shard's inputs only)
            "the task that selects the samples: the dataset (uint8) + the evaluation inputs",
            "GB",
            gb(n * input_u8 + n * input_f32),
            args.host_ram_gb,
        ),
        (
            f"the largest task's memory, shard size {s0}",
            "GB",
            ps["task_memory_gb_max"],
            args.host_ram_gb,
        ),
        (
            f"shared file system read rate, {w0} GPUs, every task reads its inputs",
            "GB/s",
            pg["shared_fs_gb_per_s"],
            args.fs_gb_per_s,
        ),
        (
            f"shared file system read rate, {w0} GPUs, shard-affine workers",
            "GB/s",
            pg["shared_fs_gb_per_s_shard_affine"],
            args.fs_gb_per_s,
        ),
        ("network per worker", "GB/s", pg["worker_gb_per_s"], args.nic_gbit / 8),
        ("cache storage (float32 maps)", "GB", storage["total_float32_gb"], args.cache_gb),
        (
            "the driver's per-sample table in memory (pandas)",
            "GB",
            storage["per_sample_in_memory_gb"],
            args.host_ram_gb,
        ),
        (
            f"fixed cost of all tasks against the GPU time, shard size {s0}",
            "GPU-h",
            ps["tasks"] * args.task_overhead_s / 3600,
            time_["gpu_hours_fast"],
        ),
        (
            "the non-model part (worker CPU) against the model part (GPU), per image",
            "s",
            cpu - model,
            model / speedup,
        ),
    ]
    limits = [
        {
            "limit": name,
            "unit": unit,
            "need": need,
            "capacity": cap,
            "headroom": (cap / need) if need else None,
        }
        for name, unit, need, cap in limits
    ]
    limits.sort(key=lambda r: float("inf") if r["headroom"] is None else r["headroom"])
    return {
        "n_images": n,
        "explainers": e_all,
        "metrics": m_all,
        "measured_explainers": sorted(ex),
        "measured_metrics": sorted(me),
        "gpu_reference": {args.gpu_reference: ref},
        "bytes": {
            "input_float32": input_f32,
            "input_uint8": input_u8,
            "map_float32": map_f32,
            "map_float16": map_f16,
        },
        "storage": storage,
        "time": time_,
        "per_shard_size": per_shard,
        "per_gpus": per_gpus,
        "traffic_total_gb": gb(traffic_tasks),
        "traffic_total_gb_shard_affine": gb(traffic_affine),
        "limits": limits,
        "assumptions": {
            "host_ram_gb_per_gpu": args.host_ram_gb,
            "shared_fs_gb_per_s": args.fs_gb_per_s,
            "nic_gbit_per_s": args.nic_gbit,
            "cache_gb": args.cache_gb,
            "task_overhead_s": args.task_overhead_s,
        },
    }


# --------------------------------------------------------------------------- output


def markdown(res: dict) -> str:
    thr = res["cpu_throughput"]
    out = [
        f"ResNet-50, 3x{SIZE}x{SIZE}, this CPU ({res['hardware']['threads']} threads): forward "
        f"{thr['forward_img_per_s']:.2f} img/s, forward + backward "
        f"{thr['forward_backward_img_per_s']:.2f} img/s (batch {thr['batch_size']}); explainers on "
        f"{res['images']} image(s), metrics on {res['metric_images']}",
        "",
        "| component | s / image | model part | other | forward rows | grad rows | peak extra MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("explainers", "metrics"):
        for label, r in res[kind].items():
            name = f"{kind[:-1]} {label}" + (f" ({r['maps']} maps)" if "maps" in r else "")
            if "seconds_per_image" not in r:
                out.append(f"| {name} | failed: {r.get('error', '?')} | | | | | |")
                continue
            out.append(
                f"| {name} | {r['seconds_per_image']:.2f} | {r['model_seconds_per_image']:.2f} | "
                f"{r['other_seconds_per_image']:.2f} | {r['forward_rows_per_image']:.0f} | "
                f"{r['grad_rows_per_image']:.0f} | {r.get('peak_extra_mb')} |"
            )
    w = res["worked_example"]
    st, tm = w["storage"], w["time"]
    ref = next(iter(w["gpu_reference"].values()))
    out += [
        "",
        f"### Worked example: {w['n_images']:,} images, {w['explainers']} explainers, "
        f"{w['metrics']} metrics",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| inputs (float32 / uint8) | {st['inputs_float32_gb']:.1f} GB / "
        f"{st['inputs_uint8_gb']:.1f} GB |",
        f"| maps of one explainer (float32 / float16) | {st['maps_per_explainer_float32_gb']:.2f} "
        f"GB / {st['maps_per_explainer_float16_gb']:.2f} GB |",
        f"| maps of all explainers (float32 / float16) | {st['maps_all_float32_gb']:.1f} GB / "
        f"{st['maps_all_float16_gb']:.1f} GB |",
        f"| per-sample table | {st['per_sample_rows']:,.0f} rows: "
        f"{st['per_sample_parquet_gb']:.3f} GB Parquet, {st['per_sample_in_memory_gb']:.2f} GB in "
        "memory |",
        f"| cache in all (float32 / float16 maps) | {st['total_float32_gb']:.1f} GB / "
        f"{st['total_float16_maps_gb']:.1f} GB |",
        f"| CPU s / image here (model part + other) | {tm['cpu_seconds_per_image']:.1f} "
        f"({tm['model_seconds_per_image_cpu']:.1f} + {tm['other_seconds_per_image_cpu']:.1f}) |",
        f"| GPU / this CPU throughput ({ref['gpu']}, {ref['precision']}: {ref['img_per_s']:.0f} "
        f"img/s) | {tm['gpu_cpu_speedup']:.0f}x |",
        f"| GPU s / image (all scaled - other not scaled) | {tm['gpu_seconds_per_image_fast']:.3f} "
        f"- {tm['gpu_seconds_per_image_slow']:.3f} |",
        f"| GPU-hours | {tm['gpu_hours_fast']:.1f} - {tm['gpu_hours_slow']:.1f} |",
        "",
        "| shard size | shards | tasks | task GPU s (shortest - longest) | largest task memory GB "
        "| map files | fixed cost share |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, p in w["per_shard_size"].items():
        out.append(
            f"| {s} | {p['shards']:,} | {p['tasks']:,} | {p['task_gpu_seconds_min_fast']:.2f} - "
            f"{p['task_gpu_seconds_max_slow']:.1f} | {p['task_memory_gb_max']:.2f} | "
            f"{p['map_files']:,} | {100 * p['fixed_cost_share']:.0f}% |"
        )
    out += [
        "",
        "| GPUs | wall time h | traffic per worker GB (per-task reads / shard-affine) | "
        "per worker GB/s | shared FS GB/s (per-task / shard-affine) |",
        "|---|---|---|---|---|",
    ]
    for g, p in w["per_gpus"].items():
        out.append(
            f"| {g} | {p['wall_hours_fast']:.2f} - {p['wall_hours_slow']:.2f} | "
            f"{p['traffic_per_worker_gb']:.1f} / {p['traffic_per_worker_gb_shard_affine']:.1f} | "
            f"{p['worker_gb_per_s']:.3f} | {p['shared_fs_gb_per_s']:.2f} / "
            f"{p['shared_fs_gb_per_s_shard_affine']:.2f} |"
        )
    out += [
        "",
        "| limit (smallest headroom first) | need | capacity | headroom |",
        "|---|---|---|---|",
    ]
    for lim in w["limits"]:
        hr = "-" if lim["headroom"] is None else f"{lim['headroom']:.2f}x"
        out.append(
            f"| {lim['limit']} | {lim['need']:.3g} {lim['unit']} | {lim['capacity']:.3g} "
            f"{lim['unit']} | {hr} |"
        )
    out += ["", f"GPU throughput: {ref['source']}; {ref['url']}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="1 image for explainers and metrics")
    ap.add_argument(
        "--images", type=int, default=2, help="images the explainers explain (default 2)"
    )
    ap.add_argument(
        "--metric-images",
        type=int,
        default=1,
        help="images the metrics score (default 1; at most --images)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="evaluation.batch_size (default 64, the CPU default)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--n-images-total", type=int, default=N_IMAGENET_VAL, help="worked example: images (50,000)"
    )
    ap.add_argument(
        "--shard-size",
        type=int,
        nargs="+",
        default=[64, 256, 1024],
        help="worked example: shard sizes",
    )
    ap.add_argument(
        "--gpus", type=int, nargs="+", default=[8, 64], help="worked example: GPU counts"
    )
    ap.add_argument(
        "--gpu-reference",
        choices=sorted(GPU_REFERENCES),
        default=REFERENCE,
        help="published GPU throughput to scale by (default a100_tf32)",
    )
    ap.add_argument(
        "--host-ram-gb", type=float, default=64.0, help="assumed host RAM per GPU worker (64)"
    )
    ap.add_argument(
        "--fs-gb-per-s",
        type=float,
        default=1.0,
        help="assumed shared file system read rate (1 GB/s)",
    )
    ap.add_argument(
        "--nic-gbit", type=float, default=25.0, help="assumed network per worker, Gbit/s (25)"
    )
    ap.add_argument(
        "--cache-gb", type=float, default=1000.0, help="assumed shared cache space, GB (1000)"
    )
    ap.add_argument(
        "--task-overhead-s",
        type=float,
        default=1.0,
        help="assumed fixed cost per task: scheduling, opening the shard's files, the model where "
        "the worker does not hold it (1 s)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default benchmarks/results/"
        "imagenet_scale.json, imagenet_scale_quick.json with --quick)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.metric_images = 1, 1
    if args.images < 1 or not 1 <= args.metric_images <= args.images:
        ap.error("need --images >= 1 and 1 <= --metric-images <= --images")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or RESULTS / (
        "imagenet_scale_quick.json" if args.quick else "imagenet_scale.json"
    )

    t_start = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    model = build_model(args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    counter = RowCounter(model)
    print("CPU throughput of the model ...", flush=True)
    thr = cpu_throughput(model, batch=16, repeats=3)
    thr["threads"] = torch.get_num_threads()
    x, masks = make_images(args.images, args.seed)
    with torch.no_grad():
        targets = model(x).argmax(1)
    print("warm-up: every explainer and metric once on a 32x32 image (not timed) ...", flush=True)
    warm_up(model, targets[:1])
    print(f"explainers on {args.images} image(s):", flush=True)
    ex_costs, maps = time_explainers(model, counter, x, targets, EXPLAINERS, args.batch_size)
    k = args.metric_images
    print(f"metrics on {k} image(s):", flush=True)
    me_costs, frames = time_metrics(
        model,
        counter,
        x[:k],
        targets[:k],
        masks[:k],
        {lab: m[:k] for lab, m in maps.items()},
        EXPLAINERS,
        METRICS,
        args.batch_size,
    )
    for rec in [*ex_costs.values(), *me_costs.values()]:
        split_model_time(rec, thr)
    rows_per_image = sum(r.get("per_sample_rows_per_image", 0.0) for r in me_costs.values())
    res = {
        "what": "per-image cost of explainers and metrics at 3x224x224 on this CPU (ResNet-50, "
        "random weights), and issue 26's worked example for ImageNet validation on a GPU cluster",
        "quick": bool(args.quick),
        "images": args.images,
        "metric_images": k,
        "batch_size": args.batch_size,
        "hardware": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "load_before": None if load_before is None else [round(v, 2) for v in load_before],
        "model": {
            "name": "ResNet-50 v1.5 (this file), random initialisation",
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "cpu_throughput": thr,
        "explainers": ex_costs,
        "metrics": me_costs,
        "per_sample_table": per_sample_table_size(frames, k, rows_per_image),
    }
    res["worked_example"] = worked_example(res, args)
    res["load_after"] = (
        [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    res["script_seconds"] = round(time.perf_counter() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(markdown(res))
    print(f"\nwritten: {out} ({res['script_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
