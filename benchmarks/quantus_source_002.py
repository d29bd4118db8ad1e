"""Study 002's Quantus calls: Quantus 0.6 as the source called it, xaiarena's old 002 config and
its Quantus-0.6 options (issue 23), on one model, one set of maps and the same random draws.

One LeNet as the source built it (conv 16/32, kernel 3, BatchNorm, max-pool; FC 128-64-10,
dropout 0.4; no input normalisation), trained with the source's SGD recipe on the shared MNIST
training split (Fashion-MNIST is not offline); the first ``--n`` test images. The maps are
xaiarena's Captum-equivalent explainers (``captum_lime`` with Captum's defaults, GradientSHAP
with 5 draws from a black baseline, Input x Gradient, IG with 50 Gauss-Legendre steps), summed
over channels; every map is a deterministic function of the model and the image, so Quantus and
xaiarena re-explain a noisy image identically. Quantus re-explains as ``quantus.explain`` does
(IG: 10 ``riemann_trapezoid`` steps; the others as above).

Scored (RIS and Sparseness on the correctly classified images, FC on all, as the source):

* ``quantus``: Quantus 0.6 with the source's arguments: maps normalised by
  ``normalise_by_negative`` over the whole set (its default axes; a NumPy-2-safe copy, see
  ``tests/unit/metrics/test_metrics_quantus.py``),
  ``RelativeInputStability(nr_samples=5, normalise=True, abs=True)`` (0.6's
  ``batch_uniform_noise``, U(0.02, 0.2); its second-moment normalisation; NaN when a draw
  changes the prediction; the source's ``nanmean``), ``FaithfulnessCorrelation(
  nr_runs=50, subset_size=224, perturb_baseline="black", normalise=True, abs=True)``,
  ``Sparseness(normalise=True)``; Quantus's default ``batch_size=64``.
* ``quantus_bs_all``: the same with ``batch_size`` = every image (one scale for each noise draw of
  the whole set: xaiarena's definition of the set).
* ``quantus_ig50``: the same as ``quantus`` with IG re-explained with its own 50 steps.
* ``old``: xaiarena with the 002 config before issue 23 (per-sample ``normalise_by_negative`` as
  post-processing, re-explanations too; the metrics' ``normalise: normalise_by_negative``;
  RIS ``prediction_change: exclude``).
* ``new``: xaiarena with the new options (``normalise_by_negative_over_set``, raw
  re-explanations, ``normalise_by_average_second_moment_estimate_over_set``, ``prediction_change:
  nan``, ``normalise_by_max_over_set``).

Quantus's noise draws and FC subsets are xaiarena's (a perturb function and a patched
``np.random.choice`` hand them over), so the columns differ only by how they compute. A second
table takes the issue's hypothesis apart (FC of the gradient methods is lower with the old config):
FC with the same subsets on raw maps, on |raw|, on per-sample and on set-wide
``normalise_by_negative`` before ``abs``.

    python benchmarks/quantus_source_002.py                 # 100 images (slow: Quantus re-explains)
    python benchmarks/quantus_source_002.py --n 24 --epochs 1 --json   # smoke test
    python benchmarks/quantus_source_002.py --out benchmarks/results/quantus_source_002.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from xaiarena import postprocess as pp
from xaiarena.metrics import EvalBatch
from xaiarena.metrics.core import SampleRNG
from xaiarena.models.vision import ImageClassifier, LeNet
from xaiarena.registry import EXPLAINERS, METRICS

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lime", "gradient_shap", "input_x_gradient", "integrated_gradients")
SPECS = {  # label -> (xaiarena explainer, options)
    "lime": ("captum_lime", {}),
    "gradient_shap": ("gradient_shap", {"n_samples": 5, "stdevs": 0.0, "baselines": ["black"]}),
    "input_x_gradient": ("input_x_gradient", {}),
    "integrated_gradients": ("integrated_gradients", {"n_steps": 50, "baseline": "black"}),
}
# quantus.explain's IntegratedGradients: n_steps=10, method="riemann_trapezoid", zero baseline
QUANTUS_IG = (
    "integrated_gradients",
    {"n_steps": 10, "method": "riemann_trapezoid", "baseline": "black"},
)


# --------------------------------------------------------------------------- setup


def build(n: int, epochs: int, seed: int = 0):
    """The source's LeNet trained on the shared MNIST training split; the first ``n`` test
    images."""
    from xaiarena.data.images import load_image_dataset

    data_dir = os.environ.get("XAIARENA_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
    task = load_image_dataset("mnist", data_dir=data_dir)
    x, y = task.train.float_images(), task.train.labels.long()
    torch.manual_seed(seed)
    net = LeNet(
        1,
        10,
        (28, 28),
        channels=(16, 32),
        kernel_size=3,
        pool="flatten",
        batch_norm=True,
        hidden=(128, 64),
        dropout=0.4,
    )
    model = ImageClassifier(net, (0.0,), (1.0,))  # the source fed ToTensor() images
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 256):
            idx = perm[i : i + 256]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = task.test.float_images()[:n], task.test.labels[:n].long()
    with torch.no_grad():
        acc = float((model(task.test.float_images()).argmax(1) == task.test.labels).float().mean())
    return model, xt, yt, acc


def explain_fn(model, name: str, params: dict, seed: int = 0):
    """``fn(inputs, targets, generator=None) -> (N, H, W)``, a deterministic function of each
    image."""
    explainer = EXPLAINERS.create(name, **params)

    def fn(inputs, targets, generator=None, model=model):
        gen = torch.Generator().manual_seed(
            seed
        )  # explainers seed each sample from this and its content
        return explainer.explain(model, inputs, targets.long(), generator=gen).float()

    return fn


def quantus_explain(fn):
    """The same explainer as a Quantus ``explain_func``."""

    def explain(model, inputs, targets, **kwargs):
        return fn(torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()).numpy()[:, None]

    return explain


class _DivideWithOut:
    """NumPy with ``divide(..., where=...)`` writing into zeros (Quantus 0.6's
    ``normalise_by_negative`` raises under NumPy 2 on maps with both signs; the left-out positions
    are masked anyway)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def divide(a, b, where=True, **kw):
        if where is not True and "out" not in kw:
            kw["out"] = np.zeros(
                np.broadcast_shapes(np.shape(a), np.shape(b)), dtype=np.result_type(a, b)
            )
        return np.divide(a, b, where=where, **kw)


class MatchedNoise:
    """A Quantus ``perturb_func`` adding xaiarena's noise draw ``r`` to a sample on its ``r``-th
    call."""

    def __init__(self, x: np.ndarray, noise: np.ndarray):
        flat = x.reshape(len(x), -1)
        self.index = {row.tobytes(): i for i, row in enumerate(flat)}
        assert len(self.index) == len(x), "two identical images"
        self.noise, self.count = noise.reshape(noise.shape[0], len(x), -1), np.zeros(len(x), int)

    def __call__(self, arr, indices=None, **kwargs):
        out = arr.copy()
        for j, row in enumerate(arr):
            i = self.index[row.tobytes()]
            out[j] = row + self.noise[self.count[i], i]
            self.count[i] += 1
        return out


class MatchedChoice:
    """``np`` for Quantus's FaithfulnessCorrelation whose ``random.choice`` returns xaiarena's
    subsets in Quantus's order (per batch: run-major, then sample)."""

    def __init__(self, subsets: np.ndarray, batch_size: int):
        n, r, _ = subsets.shape
        self._seq = iter(
            [
                subsets[i, k]
                for b in range(0, n, batch_size)
                for k in range(r)
                for i in range(b, min(b + batch_size, n))
            ]
        )
        outer = self

        class _Random:
            def __getattr__(self, name):
                return getattr(np.random, name)

            @staticmethod
            def choice(*args, **kwargs):
                return next(outer._seq)

        self.random = _Random()

    def __getattr__(self, name):
        return getattr(np, name)


def _batch(model, x, y, ids):
    return EvalBatch(model=model, inputs=x, targets=y, labels=y, sample_ids=ids)


# --------------------------------------------------------------------------- scores


def ris_noise(metric, batch, seed: int) -> np.ndarray:
    rng = SampleRNG.for_batch(batch, torch.Generator().manual_seed(seed), metric.name)
    n = len(batch)
    rows = torch.arange(n).repeat(metric.nr_samples)
    draws = torch.arange(metric.nr_samples).repeat_interleave(n)
    noise = metric._noise(rng, rows, draws, batch.inputs.shape[1:], "cpu")
    return noise.view(metric.nr_samples, *batch.inputs.shape).numpy()


def fc_subsets(metric, batch, seed: int) -> np.ndarray:
    rng = SampleRNG.for_batch(batch, torch.Generator().manual_seed(seed), metric.name)
    return metric.subsets(rng, len(batch), batch.inputs[0, 0].numel()).numpy()


def quantus_scores(
    quantus,
    model,
    x,
    y,
    ok,
    maps,
    reexplain,
    seed,
    batch_size,
    ris_metric,
    fc_metric,
    methods=METHODS,
):
    """Quantus 0.6 as the source called it (maps: the source's set-wide normalise_by_negative)."""
    import quantus.metrics.faithfulness.faithfulness_correlation as fcmod

    xn, yn = x.numpy(), y.numpy()
    bs = batch_size or len(x)
    out = {"faithfulness_correlation": {}, "relative_input_stability": {}, "sparseness": {}}
    sub = fc_subsets(fc_metric, _batch(model, x, y, torch.arange(len(x))), seed)
    xc, yc = xn[ok], yn[ok]
    noise = ris_noise(ris_metric, _batch(model, x[ok], y[ok], torch.arange(len(x))[ok]), seed)
    for name in methods:
        a = maps[name].numpy()[:, None]
        orig = fcmod.np
        fcmod.np = MatchedChoice(sub, bs)
        try:
            fc = quantus.FaithfulnessCorrelation(
                nr_runs=fc_metric.nr_runs,
                subset_size=fc_metric.subset_size,
                perturb_baseline="black",
                normalise=True,
                abs=True,
                return_aggregate=False,
                disable_warnings=True,
            )
            out["faithfulness_correlation"][name] = np.asarray(
                fc(
                    model=model,
                    x_batch=xn,
                    y_batch=yn,
                    a_batch=a.copy(),
                    device="cpu",
                    batch_size=bs,
                ),
                float,
            )
        finally:
            fcmod.np = orig
        ris = quantus.RelativeInputStability(
            nr_samples=ris_metric.nr_samples,
            perturb_func=MatchedNoise(xc, noise),
            normalise=True,
            abs=True,
            disable_warnings=True,
        )
        out["relative_input_stability"][name] = np.asarray(
            ris(
                model=model,
                x_batch=xc,
                y_batch=yc,
                a_batch=a[ok].copy(),
                device="cpu",
                batch_size=bs,
                explain_func=quantus_explain(reexplain[name]),
            ),
            float,
        )
        sp = quantus.Sparseness(normalise=True, disable_warnings=True)
        out["sparseness"][name] = np.asarray(
            sp(model=model, x_batch=xc, y_batch=yc, a_batch=a[ok].copy(), batch_size=bs), float
        )
    return out


def xaiarena_scores(model, x, y, ok, raw, explain, seed, variant, methods=METHODS):
    """xaiarena's metrics with the old 002 config or the new options (whole set in one call)."""
    if variant == "old":
        steps, rsteps = ["normalise_by_negative"], ["normalise_by_negative"]
        opts = {
            "faithfulness_correlation": {"normalise": "normalise_by_negative"},
            "relative_input_stability": {
                "normalise": "normalise_by_negative",
                "prediction_change": "exclude",
            },
            "sparseness": {"normalise": "normalise_by_negative"},
        }
    else:
        steps, rsteps = ["normalise_by_negative_over_set"], []
        opts = {
            "faithfulness_correlation": {"normalise": "normalise_by_max_over_set"},
            "relative_input_stability": {
                "normalise": "normalise_by_average_second_moment_estimate_over_set",
                "prediction_change": "nan",
            },
            "sparseness": {"normalise": "normalise_by_max_over_set"},
        }
    ids = torch.arange(len(x))
    full = {
        k: pp.apply(raw[k], steps) for k in METHODS
    }  # the explainer entry's postprocess, over the set
    full = {k: full[k] for k in methods}
    fns = {
        k: (lambda i, t, generator=None, _f=explain[k]: pp.apply(_f(i, t), rsteps)) for k in methods
    }
    out = {}
    fc = METRICS.create(
        "faithfulness_correlation",
        nr_runs=50,
        subset_size=224,
        fill="black",
        abs=True,
        **opts["faithfulness_correlation"],
    )
    out["faithfulness_correlation"] = fc.evaluate(
        _batch(model, x, y, ids), full, generator=torch.Generator().manual_seed(seed)
    ).scores[fc.name]
    sel = {k: v[ok] for k, v in full.items()}
    batch = _batch(model, x[ok], y[ok], ids[ok])
    ris = METRICS.create(
        "relative_input_stability", nr_samples=5, abs=True, **opts["relative_input_stability"]
    )
    out["relative_input_stability"] = ris.evaluate(
        batch, sel, generator=torch.Generator().manual_seed(seed), explainers=fns
    ).scores[ris.name]
    sp = METRICS.create("sparseness", **opts["sparseness"])
    out["sparseness"] = sp.evaluate(batch, sel).scores[sp.name]
    return {m: {k: v.numpy().astype(float) for k, v in d.items()} for m, d in out.items()}


def fc_ablation(model, x, y, raw, seed):
    """FC of the same subsets on differently prepared maps (the issue's hypothesis)."""
    variants = {
        "raw (signed)": lambda a: a,
        "|raw|": lambda a: a.abs(),
        "|per-sample normalise_by_negative|": lambda a: pp.normalise_by_negative(a).abs(),
        "|set normalise_by_negative|": lambda a: pp.normalise_by_negative(a, over="set").abs(),
    }
    fc = METRICS.create("faithfulness_correlation", nr_runs=50, subset_size=224, fill="black")
    batch = _batch(model, x, y, torch.arange(len(x)))
    out = {}
    for label, f in variants.items():
        s = fc.evaluate(
            batch, {k: f(raw[k]) for k in METHODS}, generator=torch.Generator().manual_seed(seed)
        )
        out[label] = {k: float(np.nanmean(v.numpy())) for k, v in s.scores[fc.name].items()}
    # how unequal the two signs' scales are: max / |min| per map, and of the set
    ratio = {}
    for k in METHODS:
        a = raw[k].flatten(1)
        r = a.amax(1) / a.amin(1).abs().clamp_min(1e-30)
        ratio[k] = {"per_map_median": float(r.median()), "set": float(a.max() / a.min().abs())}
    return out, ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="test images (default 100, as in issue 23)")
    ap.add_argument(
        "--epochs", type=int, default=5, help="training epochs on the 8,000 MNIST training images"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    import quantus

    sys.modules["quantus.functions.normalise_func"].np = _DivideWithOut()
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model, x, y, acc = build(args.n, args.epochs, args.seed)
    with torch.no_grad():
        ok = (model(x).argmax(1) == y).numpy()
    explain = {k: explain_fn(model, *SPECS[k]) for k in METHODS}
    reexplain_q = {**explain, "integrated_gradients": explain_fn(model, *QUANTUS_IG)}
    raw = {k: explain[k](x, y) for k in METHODS}
    nbn = (
        quantus.normalise_func.normalise_by_negative
    )  # the source's call: default axes (the whole set)
    src_maps = {k: torch.from_numpy(nbn(raw[k].numpy())) for k in METHODS}
    ris_m = METRICS.create("relative_input_stability", nr_samples=5)
    fc_m = METRICS.create("faithfulness_correlation", nr_runs=50, subset_size=224)
    res = {
        "quantus": quantus_scores(
            quantus, model, x, y, ok, src_maps, reexplain_q, args.seed, 64, ris_m, fc_m
        ),
        "quantus_bs_all": quantus_scores(
            quantus, model, x, y, ok, src_maps, reexplain_q, args.seed, None, ris_m, fc_m
        ),
        # IG alone: the only method quantus.explain runs with other settings than the given maps
        "quantus_ig50": quantus_scores(
            quantus,
            model,
            x,
            y,
            ok,
            src_maps,
            explain,
            args.seed,
            64,
            ris_m,
            fc_m,
            methods=("integrated_gradients",),
        ),
        "old": xaiarena_scores(model, x, y, ok, raw, explain, args.seed, "old"),
        "new": xaiarena_scores(model, x, y, ok, raw, explain, args.seed, "new"),
        "new_ig10": xaiarena_scores(
            model, x, y, ok, raw, reexplain_q, args.seed, "new", methods=("integrated_gradients",)
        ),
    }
    ablation, ratio = fc_ablation(model, x, y, raw, args.seed)
    summary = {
        v: {m: {k: float(np.nanmean(s)) for k, s in d.items()} for m, d in r.items()}
        for v, r in res.items()
    }
    nans = {
        v: {k: int(np.isnan(s).sum()) for k, s in r["relative_input_stability"].items()}
        for v, r in res.items()
    }
    # per-sample agreement of the new options with Quantus (the set as xaiarena defines it)
    agree = {}
    for m in ("faithfulness_correlation", "relative_input_stability", "sparseness"):
        agree[m] = {}
        for k in METHODS:
            q = res["quantus_bs_all"][m][k]
            o = res["new_ig10" if k == "integrated_gradients" else "new"][m][k]
            same_nan = bool((np.isnan(q) == np.isnan(o)).all())
            d = np.abs(q - o)[~np.isnan(q) & ~np.isnan(o)]
            rel = d / np.maximum(np.abs(q[~np.isnan(q) & ~np.isnan(o)]), 1e-12)
            agree[m][k] = {
                "max_abs": float(d.max()) if d.size else 0.0,
                "max_rel": float(rel.max()) if rel.size else 0.0,
                "same_nan": same_nan,
            }
    out = {
        "n_images": int(len(x)),
        "n_correct": int(ok.sum()),
        "test_accuracy": acc,
        "means": summary,
        "ris_nan_samples": nans,
        "per_sample_new_vs_quantus_bs_all": agree,
        "fc_ablation": ablation,
        "sign_scale_ratio_max_over_abs_min": ratio,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(
        f"{len(x)} MNIST test images, {int(ok.sum())} correctly classified; test accuracy {acc:.3f}"
    )
    for m in ("relative_input_stability", "faithfulness_correlation", "sparseness"):
        print(f"\n{m} (mean; RIS: nanmean, NaN samples in brackets)")
        print(f"{'variant':<16}" + "".join(f"{k:>22}" for k in METHODS))
        for v in res:
            cells = []
            for k in METHODS:
                c = f"{summary[v][m][k]:.4f}" if k in summary[v][m] else "-"
                if m == "relative_input_stability" and k in nans[v]:
                    c += f" [{nans[v][k]}]"
                cells.append(f"{c:>22}")
            print(f"{v:<16}" + "".join(cells))
    print("\nFC with the same subsets, by how the maps are prepared (mean over images)")
    for label, d in ablation.items():
        print(f"{label:<38}" + "".join(f"{d[k]:>10.4f}" for k in METHODS))
    print("\nmax / |min| of the raw maps (median per map; of the whole set)")
    for k in METHODS:
        print(f"  {k:<22} {ratio[k]['per_map_median']:.3f}  {ratio[k]['set']:.3f}")
    print(
        "\nnew (IG re-explained as quantus.explain) vs Quantus with batch_size = all, per sample, "
        "largest relative difference:"
    )
    for m, d in agree.items():
        print(
            f"  {m:<26}"
            + "  ".join(
                f"{k}: {v['max_rel']:.1e}{'' if v['same_nan'] else ' (NaN differ)'}"
                for k, v in d.items()
            )
        )
    print(f"\n{out['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
