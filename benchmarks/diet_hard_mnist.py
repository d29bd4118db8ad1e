"""DiET vs Grad-CAM vs Integrated Gradients on the built-in hard_mnist (acceptance check).

Trains LeNet as the built-in benchmark does (4 epochs, batch 64, lr 2e-3; cached),
fits DiET with its defaults (timed), then scores the maps of held-out test samples
against the ground-truth digit masks with top-k IoU (k = number of ground-truth
pixels, ties broken at random with a seed). Grad-CAM and IG are minimal local
versions built on Captum and explain both f_b and DiET's f_s; DiET's maps are its
test-time masks for f_s, and the script also prints how often f_s agrees with f_b.
Paired differences compare maps of one model only: DiET against the maps of f_s, and
DiET's maps offered as explanations of f_b (``diet@f_s``, as the runner labels them)
against the maps of f_b. Top-k IoU calls no model, so DiET's score is the same on both.

    python benchmarks/diet_hard_mnist.py                      # defaults, 2 threads
    python benchmarks/diet_hard_mnist.py --set rounds=2 --set n_train=500 --fresh

The time reported for DiET is fit (f_s + training masks + faithfulness report)
plus the test-time masks of the evaluation samples.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml


def topk_iou(attr: torch.Tensor, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample IoU between the k highest-attributed pixels and the ground truth (k = |gt|)."""
    n = len(attr)
    a, g = attr.reshape(n, -1).float(), gt.reshape(n, -1).bool()
    out = torch.empty(n)
    for i in range(n):
        k = int(g[i].sum())
        perm = torch.randperm(
            a.shape[1], generator=generator
        )  # random order first, then a stable sort
        order = perm[torch.sort(a[i, perm], descending=True, stable=True).indices]
        top = torch.zeros_like(g[i])
        top[order[:k]] = True
        inter = int((top & g[i]).sum())
        out[i] = inter / max(2 * k - inter, 1)
    return out


def gradcam(model, inputs, targets) -> torch.Tensor:
    """Grad-CAM at LeNet's last conv block (after ReLU), bilinearly upsampled to input size."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = model.net.features[-2]
    cam = LayerGradCam(model, layer).attribute(inputs, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(cam, inputs.shape[2:], interpolate_mode="bilinear")[
        :, 0
    ].detach()


def integrated_gradients(model, inputs, targets, n_steps: int = 32) -> torch.Tensor:
    """IG from a black baseline, (N, C, H, W) attributions (reduced by the caller)."""
    from captum.attr import IntegratedGradients

    return (
        IntegratedGradients(model)
        .attribute(inputs, target=targets, n_steps=n_steps, internal_batch_size=256)
        .detach()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=256, help="held-out test samples scored")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        default=None,
        help="folder for the LeNet and DiET caches (default: a temp dir for "
        "DiET, the user cache for LeNet)",
    )
    ap.add_argument("--fresh", action="store_true", help="ignore a cached DiET fit")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a DiET option (YAML value)"
    )
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument(
        "--save-maps", default=None, help="save inputs, ground truth and every map to this .pt file"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XAIARENA_QUIET", "1")

    from xaiarena.config import TrainingConfig
    from xaiarena.data import load_task
    from xaiarena.environment import user_cache_dir
    from xaiarena.explainers.base import reduce_channels
    from xaiarena.explainers.diet import DiET
    from xaiarena.models import build_model, train_model
    from xaiarena.models.training import predict

    options = {}
    for item in args.set:
        key, _, val = item.partition("=")
        options[key.strip()] = yaml.safe_load(val)

    t0 = time.perf_counter()
    task = load_task("hard_mnist", seed=args.seed)
    t_data = time.perf_counter() - t0
    device = torch.device("cpu")
    model = build_model("lenet", task)
    lenet_dir = Path(args.cache or user_cache_dir() / "bench") / f"lenet_hard_mnist_seed{args.seed}"
    t0 = time.perf_counter()
    tr = train_model(
        model,
        task,
        TrainingConfig(epochs=4, batch_size=64, lr=2e-3),
        seed=args.seed,
        device=device,
        checkpoint_dir=lenet_dir,
        show_progress=False,
    )
    t_train = time.perf_counter() - t0
    model.eval()
    print(
        f"data {t_data:.1f}s; lenet test accuracy {tr.test_accuracy:.3f} "
        f"({'cached' if tr.cache_hit else f'trained in {t_train:.0f}s'})"
    )

    # held-out evaluation samples, chosen by seed (as the runner does)
    idx = (
        torch.randperm(len(task.test), generator=torch.Generator().manual_seed(args.seed + 1))[
            : args.n_eval
        ]
        .sort()
        .values
    )
    x, y, gt = task.test.float_images(idx), task.test.labels[idx], task.test.masks[idx]

    tmp = None
    if args.cache:
        diet_dir = Path(args.cache) / "diet" / json.dumps(options, sort_keys=True).replace("/", "_")
    else:
        tmp = tempfile.TemporaryDirectory()
        diet_dir = Path(tmp.name)
    if args.fresh and diet_dir.exists():
        for f in diet_dir.iterdir():
            f.unlink()
    diet = DiET(**options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    c0 = time.process_time()
    t0 = time.perf_counter()
    diet.fit(
        model,
        task,
        device=device,
        generator=torch.Generator().manual_seed(args.seed),
        cache_dir=diet_dir,
    )
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()
    t0 = time.perf_counter()
    f_s = diet.explained_model(model)
    a_diet = torch.cat(
        [diet.explain(f_s, x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    )
    t_test, c_test = time.perf_counter() - t0, time.process_time() - c0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "f_b was modified"

    t0 = time.perf_counter()
    a_cam = torch.cat([gradcam(model, x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)])
    t_cam = time.perf_counter() - t0
    t0 = time.perf_counter()
    ig = torch.cat(
        [integrated_gradients(model, x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    )
    t_ig = time.perf_counter() - t0
    cam_s = torch.cat([gradcam(f_s, x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)])
    ig_s = torch.cat(
        [integrated_gradients(f_s, x[i : i + 64], y[i : i + 64]) for i in range(0, len(x), 64)]
    )

    maps = {
        "diet (f_s)": a_diet,
        "gradcam (f_b)": a_cam,
        "integrated_gradients sum (f_b)": reduce_channels(ig, "sum"),
        "integrated_gradients abs_sum (f_b)": reduce_channels(ig, "abs_sum"),
        "gradcam (f_s)": cam_s,
        "integrated_gradients sum (f_s)": reduce_channels(ig_s, "sum"),
        "integrated_gradients abs_sum (f_s)": reduce_channels(ig_s, "abs_sum"),
        "random": torch.rand(
            x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(123)
        ),
    }
    results = {}
    print(
        f"\ntop-k IoU with the ground-truth digit on {len(x)} held-out test samples (mean +- s.e.):"
    )
    for name, a in maps.items():
        iou = topk_iou(a, gt, torch.Generator().manual_seed(args.seed))
        se = float(iou.std() / len(iou) ** 0.5)
        results[name] = {"mean": float(iou.mean()), "se": se, "per_sample": iou}
        print(f"  {name:36s} {float(iou.mean()):.3f} +- {se:.3f}")
    d = results["diet (f_s)"]["per_sample"]
    # maps of one model only: diet vs the maps of f_s; diet@f_s (DiET's maps as explanations of f_b)
    # vs f_b's
    for view, name in (("f_s", "diet"), ("f_b", "diet@f_s")):
        for other in ("gradcam", "integrated_gradients sum", "integrated_gradients abs_sum"):
            diff = d - results[f"{other} ({view})"]["per_sample"]
            print(
                f"  {view}: paired diff {name} - {other:30s} {float(diff.mean()):+.3f} "
                f"+- {float(diff.std() / len(diff) ** 0.5):.3f}  ({name} better on "
                f"{float((diff > 0).float().mean()):.0%})"
            )

    pred_fb, pred_fs = predict(model, x, device), predict(f_s, x, device)
    rep = diet.report()
    print("\nDiET faithfulness report:", json.dumps(rep, indent=1))
    print(
        f"f_s/f_b agreement on the {len(x)} evaluation samples: "
        f"{float((pred_fb == pred_fs).float().mean()):.3f}"
    )
    print(
        f"\ntimings ({args.threads} threads, load avg {os.getloadavg()[0]:.1f}): DiET fit "
        f"{t_fit:.1f}s + test masks {t_test:.1f}s = {t_fit + t_test:.1f}s wall "
        f"(CPU time {c_fit:.0f}s + {c_test:.0f}s = {c_fit + c_test:.0f}s); gradcam {t_cam:.1f}s; "
        f"IG {t_ig:.1f}s"
    )
    for rec in diet.history:
        eps = rec.get("epochs", [])
        last = eps[-1] if eps else {}
        print(
            f"  round {rec['round']} {rec['phase']:5s} {rec['seconds']:6.1f}s epochs {len(eps):2d} "
            + " ".join(f"{k}={v:.3f}" for k, v in last.items())
            + (
                f" kept {rec['kept_before']:.3f}->{rec['kept_after']:.3f}"
                if rec["phase"] == "round"
                else ""
            )
        )
    if args.save_maps:
        torch.save(
            {"inputs": x, "labels": y, "masks": gt, "maps": maps, "test_masks": diet.test_masks(x)},
            args.save_maps,
        )
    if args.json:
        out = {k: {"mean": v["mean"], "se": v["se"]} for k, v in results.items()}
        out.update(
            report=rep,
            fit_seconds=t_fit,
            test_seconds=t_test,
            fit_cpu_seconds=c_fit,
            test_cpu_seconds=c_test,
            options=options,
            threads=args.threads,
        )
        Path(args.json).write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
