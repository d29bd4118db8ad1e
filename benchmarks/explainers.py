"""Explainer speed: perturbation explainers against their forward-pass floor and Captum.

Two suites (default: both):

``floor``   each perturbation explainer (lime, kernel_shap, occlusion, scorecam,
            ablationcam) is timed end to end, then the *floor*: the bare forward
            passes it needs, i.e. the very inputs it fed the model (recorded by a
            forward pre-hook in an earlier run) replayed, ready-made; and, where Captum
            has the method, Captum with the same perturbations (same segments, sample
            counts, windows, batch sizes). Rounds are interleaved (ours, floor,
            captum, ours, ...) and ratios taken within a round, so load from other
            processes hits all three alike; the median over rounds is reported.
            For Ablation-CAM, whose default shares the layers before the target layer
            across ablations, the floor is the K full forward passes per image that
            plain Ablation-CAM (and Captum's LayerFeatureAblation) needs.
``defaults`` every registered image explainer at its default settings on
            ``--n-defaults`` hard_mnist test images (64x64 RGB, default LeNet), through
            ``explain_images`` with batch size 64: wall and CPU seconds per explainer.

Usage::

    python benchmarks/explainers.py                     # both suites, table
    python benchmarks/explainers.py --suite floor --n 32 --rounds 5 --json
    python benchmarks/explainers.py --suite defaults --n-defaults 256

The goal is ``ours / floor <= 1.25`` and ``ours / captum <= 1`` for each
perturbation explainer, and the whole ``defaults`` suite within 3 minutes for 256
images on 2 CPU cores. CPU seconds (this process) are printed next to wall
seconds because on a shared machine wall time includes waiting for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

os.environ.setdefault("XAIARENA_QUIET", "1")

PERTURBATION = ("lime", "kernel_shap", "occlusion", "scorecam", "ablationcam")


# --------------------------------------------------------------------------- setup


def setup(n: int, train_epochs: int, seed: int = 0):
    """hard_mnist test images, the default LeNet (optionally trained briefly), targets = labels."""
    from xaiarena.config import TrainingConfig
    from xaiarena.data import load_task
    from xaiarena.models import build_model, train_model

    task = load_task(
        "hard_mnist", seed=seed, n_train=max(64, 2000 if train_epochs else 64), n_test=max(n, 8)
    )
    model = build_model("lenet", task)
    if train_epochs:
        train_model(
            model,
            task,
            TrainingConfig(epochs=train_epochs, batch_size=64, lr=2e-3),
            seed=seed,
            device=torch.device("cpu"),
            show_progress=False,
        )
    model.eval()
    idx = torch.arange(n)
    return model, task.test.float_images(idx), task.test.labels[idx].long()


class BatchRecorder:
    """Records the batch size (and optionally a copy) of every forward pass's input (a pre-hook)."""

    def __init__(self, model: torch.nn.Module, keep: bool = False):
        self.model, self.keep, self.sizes, self.inputs = model, keep, [], []

    def _hook(self, module, args):
        self.sizes.append(len(args[0]))
        if self.keep:
            self.inputs.append(args[0].detach().clone())

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


# --------------------------------------------------------------------------- floor suite


def floor_fn(model, batches: list[torch.Tensor]) -> Callable[[], None]:
    """The bare forward passes: the recorded inputs, ready-made, one forward pass each."""

    @torch.no_grad()
    def run():
        for b in batches:
            model(b)

    return run


def captum_fn(
    name: str, explainer, model, x: torch.Tensor, t: torch.Tensor
) -> Callable[[], object] | None:
    """Captum doing the same work, or None where Captum has no such method."""
    from captum.attr import KernelShap, LayerFeatureAblation, Lime, Occlusion

    if name == "occlusion":
        from xaiarena.ops.fill import BASELINE_BLUR, make_fill

        c = x.shape[1]
        base = (
            make_fill(x, explainer.baseline, blur=BASELINE_BLUR)
            if explainer.baseline != "uniform"
            else None
        )
        ppe = max(1, explainer.perturbations_per_eval // len(x))
        return lambda: Occlusion(model).attribute(
            x,
            sliding_window_shapes=(c, *explainer.window),
            strides=(c, *explainer.stride),
            baselines=base,
            target=t,
            perturbations_per_eval=ppe,
        )
    if name in ("lime", "kernel_shap"):
        from captum._utils.models.linear_model import SkLearnRidge

        segs = [torch.from_numpy(s) for s in explainer.segments(x)]
        ppe = min(explainer.perturbations_per_eval, explainer.n_samples)

        def run():
            outs = []
            for i in range(len(x)):  # Captum's Lime/KernelShap explain one sample at a time
                fm = segs[i][None, None].expand(1, x.shape[1], *segs[i].shape)
                if name == "lime":
                    algo = Lime(
                        model, interpretable_model=SkLearnRidge(alpha=explainer.ridge_alpha)
                    )
                else:
                    algo = KernelShap(model)
                outs.append(
                    algo.attribute(
                        x[i : i + 1],
                        target=int(t[i]),
                        baselines=0.0,
                        feature_mask=fm,
                        n_samples=explainer.n_samples,
                        perturbations_per_eval=ppe,
                    )
                )
            return outs

        return run
    if name == "ablationcam":
        from xaiarena.explainers.cam import cam_layer_of

        _, layer = cam_layer_of(model, explainer.layer, name)
        with torch.no_grad():
            store = {}
            h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("k", o.shape[1]))
            model(x[:1])
            h.remove()
        k = store["k"]
        mask = torch.arange(k).view(1, k, 1, 1)
        # perturbations_per_eval > 1 fails in Captum 0.9 with per-sample targets (the original
        # inputs are not expanded), so Captum runs one ablation per forward pass of the N images
        return lambda: LayerFeatureAblation(model, layer).attribute(
            x, target=t, layer_baselines=0.0, layer_mask=mask, perturbations_per_eval=1
        )
    return None


def run_floor_suite(names, model, x, t, rounds: int, generator_seed: int = 0) -> list[dict]:
    from xaiarena.registry import EXPLAINERS

    rows = []
    for name in names:
        ex = EXPLAINERS.create(name)

        def ours(ex=ex):
            return ex.explain(model, x, t, generator=torch.Generator().manual_seed(generator_seed))

        ours()  # warm-up (also SLIC import, MKLDNN primitive caches)
        # the floor replays the forward passes the method needs; for Ablation-CAM those are its
        # K full passes per image (recorded with share_upstream=False), which ours avoids
        source = EXPLAINERS.create(name, share_upstream=False) if name == "ablationcam" else ex
        with BatchRecorder(model, keep=True) as rec:
            source.explain(model, x, t, generator=torch.Generator().manual_seed(generator_seed))
        floor = floor_fn(model, rec.inputs)
        captum = captum_fn(name, ex, model, x, t)
        if captum is not None:
            captum()
        res: dict[str, list[tuple[float, float]]] = {"ours": [], "floor": [], "captum": []}
        for _ in range(rounds):
            res["ours"].append(timed(ours))
            res["floor"].append(timed(floor))
            if captum is not None:
                res["captum"].append(timed(captum))
        r_floor = [o[0] / f[0] for o, f in zip(res["ours"], res["floor"], strict=True)]
        r_floor_cpu = [o[1] / f[1] for o, f in zip(res["ours"], res["floor"], strict=True)]
        row = {
            "explainer": name,
            "n_images": len(x),
            "forward_passes": len(rec.sizes),
            "floor_kind": "full passes (K per image)"
            if name == "ablationcam"
            else "recorded passes",
            "forward_rows": int(sum(rec.sizes)),
            "max_batch": max(rec.sizes),
            "ours_s": statistics.median(w for w, _ in res["ours"]),
            "floor_s": statistics.median(w for w, _ in res["floor"]),
            "ratio_floor": statistics.median(r_floor),
            "ratio_floor_cpu": statistics.median(r_floor_cpu),
            "ratio_floor_rounds": [round(r, 3) for r in r_floor],
            "captum_s": None,
            "ratio_captum": None,
            "ratio_captum_rounds": None,
        }
        if res["captum"]:
            r_cap = [o[0] / c[0] for o, c in zip(res["ours"], res["captum"], strict=True)]
            row.update(
                captum_s=statistics.median(w for w, _ in res["captum"]),
                ratio_captum=statistics.median(r_cap),
                ratio_captum_rounds=[round(r, 3) for r in r_cap],
            )
        rows.append(row)
        print(
            f"  {name}: ours/floor {row['ratio_floor']:.3f}"
            + (f", ours/captum {row['ratio_captum']:.3f}" if row["ratio_captum"] else ""),
            file=sys.stderr,
        )
    return rows


# --------------------------------------------------------------------------- defaults suite


def run_defaults_suite(names, model, x, t, batch_size: int = 64) -> list[dict]:
    from xaiarena.engine.batching import explain_images
    from xaiarena.registry import EXPLAINERS

    rows = []
    for name in names:
        ex = EXPLAINERS.create(name)
        with BatchRecorder(model) as rec:
            wall, cpu = timed(
                lambda ex=ex: explain_images(
                    ex,
                    model,
                    x,
                    t,
                    batch_size=batch_size,
                    generator=torch.Generator().manual_seed(0),
                    device="cpu",
                    progress=False,
                )
            )
        rows.append(
            {
                "explainer": name,
                "family": EXPLAINERS.entry(name).meta.get("family"),
                "wall_s": wall,
                "cpu_s": cpu,
                "forward_rows": int(sum(rec.sizes)),
                "options": repr(ex),
            }
        )
        print(f"  {name}: {wall:.1f}s wall, {cpu:.1f}s cpu", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- main


def image_explainers() -> list[str]:
    from xaiarena.registry import EXPLAINERS

    return [
        e.name
        for e in EXPLAINERS
        if "image" in e.meta.get("modality", ()) and e.meta.get("family") != "learned"
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=("floor", "defaults", "all"), default="all")
    ap.add_argument("--n", type=int, default=32, help="images for the floor suite (default 32)")
    ap.add_argument(
        "--n-defaults", type=int, default=256, help="images for the defaults suite (default 256)"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds in the floor suite (default 3)"
    )
    ap.add_argument("--explainers", default="", help="comma-separated subset")
    ap.add_argument(
        "--train-epochs",
        type=int,
        default=1,
        help="epochs to train the LeNet first on 2000 images (0: untrained; default 1)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    chosen = [s for s in args.explainers.split(",") if s]
    model, images, labels = setup(
        max(args.n, args.n_defaults if args.suite != "floor" else 0), args.train_epochs
    )
    out: dict = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        },
        "model": "lenet (default), hard_mnist 64x64 RGB",
        "train_epochs": args.train_epochs,
    }
    if args.suite in ("floor", "all"):
        names = [n for n in PERTURBATION if not chosen or n in chosen]
        print(
            f"floor suite: {len(names)} explainers on {args.n} images, {args.rounds} rounds",
            file=sys.stderr,
        )
        out["floor"] = run_floor_suite(
            names, model, images[: args.n], labels[: args.n], args.rounds
        )
    if args.suite in ("defaults", "all"):
        names = [n for n in image_explainers() if not chosen or n in chosen]
        print(
            f"defaults suite: {len(names)} explainers on {args.n_defaults} images", file=sys.stderr
        )
        rows = run_defaults_suite(
            names, model, images[: args.n_defaults], labels[: args.n_defaults]
        )
        out["defaults"] = rows
        out["defaults_total_wall_s"] = sum(r["wall_s"] for r in rows)
        out["defaults_total_cpu_s"] = sum(r["cpu_s"] for r in rows)
    out["machine"]["loadavg_end"] = os.getloadavg()

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"machine: {out['machine']}")
    if "floor" in out:
        print(
            f"\nPerturbation explainers vs forward floor and Captum ({args.n} images, median of "
            f"{args.rounds} interleaved rounds; goal: ours/floor <= 1.25, ours/captum <= 1)"
        )
        print(
            f"{'explainer':<13} {'fwd rows':>9} {'ours s':>8} {'floor s':>8} {'captum s':>9} "
            f"{'ours/floor':>11} {'(cpu)':>6} {'ours/captum':>12}"
        )
        for r in out["floor"]:
            cap = f"{r['captum_s']:9.2f}" if r["captum_s"] is not None else f"{'n/a':>9}"
            rc = f"{r['ratio_captum']:12.3f}" if r["ratio_captum"] is not None else f"{'n/a':>12}"
            print(
                f"{r['explainer']:<13} {r['forward_rows']:>9} {r['ours_s']:8.2f} "
                f"{r['floor_s']:8.2f} {cap} {r['ratio_floor']:11.3f} {r['ratio_floor_cpu']:6.2f} "
                f"{rc}"
            )
    if "defaults" in out:
        print(f"\nEvery explainer at default settings, {args.n_defaults} images, batch 64")
        print(f"{'explainer':<22} {'family':<13} {'fwd rows':>9} {'wall s':>8} {'cpu s':>8}")
        for r in out["defaults"]:
            print(
                f"{r['explainer']:<22} {r['family']:<13} {r['forward_rows']:>9} {r['wall_s']:8.1f} "
                f"{r['cpu_s']:8.1f}"
            )
        print(
            f"{'total':<22} {'':<13} {'':>9} {out['defaults_total_wall_s']:8.1f} "
            f"{out['defaults_total_cpu_s']:8.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
