"""What the image ``diet`` and ``text_diet`` explainers share: the fit, its report, and the
test-time masks (their cache, the set the ``authors`` procedure optimises together, the seed
check)."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...files import atomic_save_torch, atomic_write_text, load_torch
from .core import BatchFn, DietConfig, DietTrainer, fingerprint_module
from .testtime import second_seed, spearman_pairs

TEST_MASKS_FILE = "test_masks.pt"
REPORT_FILE = "report.json"
TEST_MASKS_FORMAT = 3


@dataclass
class _TestMask:
    """A cached test-time mask and how its optimisation ended."""

    mask: torch.Tensor
    steps: int
    limit_hit: bool  # stopped by the safety limit (else by the procedure's stopping rule)
    loss_change: float  # the last relative changes the rule saw (NaN: none)
    mask_change: float
    horizon: int  # -1: none
    window: int  # the converged rule's window (-1: none, the authors' procedure)


@dataclass(frozen=True)
class _SampleSet:
    """A set of samples by content digest, in canonical (sorted) order: the ``authors`` procedure
    optimises a set together, so its masks depend on the set, never on the order or the batching."""

    members: tuple[str, ...]

    @classmethod
    def of(cls, digests: list[str]) -> _SampleSet:
        return cls(tuple(sorted(set(digests))))

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.members).encode()).hexdigest()[:16]

    def covers(self, digests: list[str]) -> bool:
        return set(digests) <= set(self.members)


def _first_positions(digests: list[str]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, d in enumerate(digests):
        first.setdefault(d, i)
    return first


class DietFitMixin:
    """What the image ``diet`` and ``text_diet`` explainers share around :class:`DietTrainer`:
    the fitted state, the seed and training-subset rules, the cached faithfulness report and
    the test-time masks.

    Test-time masks for ``f_s`` are cached under a key made of every test-time setting
    (:meth:`DietConfig.test_dict`, including ``test_procedure``; the subclass's
    :meth:`_test_settings`, e.g. the background used at test time), the fingerprint of
    ``f_s``, DiET's seed and a digest of the input; with the ``authors`` procedure also the
    digest of the set the mask was optimised with. Changing any of them recomputes. Masks for
    any other model (e.g. the randomised copies of the randomisation test) are optimised against
    that model and never cached.

    **The set** (``authors``): the runner calls :meth:`prepare_set` with every evaluation sample of
    the view before it explains them in batches of ``evaluation.batch_size``; those samples are
    optimised together, once, so the maps do not depend on the batch size. A call with inputs
    outside that set (perturbed copies of a robustness metric, a direct Python call) optimises
    that call's inputs as one set. ``converged`` masks are per sample and need no set.

    A subclass sets ``name``, ``config``, ``n_train`` and ``seed``, implements
    ``_faithfulness(f_b, ...)``, ``_test_settings()``, ``_digests(inputs)``,
    ``_optimise(model, inputs, positions, seed, sample_seeds)`` and ``_check_maps(masks)``; it
    calls :meth:`_reset_fit_state` in ``__init__`` and :meth:`_fit_with_trainer` in ``fit``.
    """

    name: str
    config: DietConfig
    n_train: int | None
    seed: int | None

    def _reset_fit_state(self) -> None:
        self.f_s: nn.Module | None = None
        self.masker: Any = None
        self.train_masks: torch.Tensor | None = None
        self.train_index: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.fit_report: dict[str, Any] = {}
        self.cache_dir: Path | None = None
        self._seed = 0
        self._fs_fingerprint = ""
        self._test_cache: dict[str, _TestMask] = {}
        self._checks: dict[str, dict[str, Any]] = {}
        self._registered: _SampleSet | None = None

    def _start_fit(
        self, n_all: int, generator: torch.Generator | None, cache_dir: Any
    ) -> torch.Tensor:
        """Fix the fit seed (``seed``, else one draw from ``generator``, else 0) and the cache
        folder; return the sorted indices of the ``n_train`` training samples drawn by that seed."""
        if self.seed is not None:
            self._seed = int(self.seed)
        elif generator is not None:
            self._seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        else:
            self._seed = 0
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.n_train is None or self.n_train >= n_all:
            return torch.arange(n_all)
        perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(self._seed))
        return perm[: self.n_train].sort().values

    def _fit_with_trainer(
        self,
        model: nn.Module,
        get_batch: BatchFn,
        labels: torch.Tensor,
        index: torch.Tensor,
        data_key: str,
        device: torch.device,
        faithfulness: Callable[[], dict[str, Any]],
    ) -> None:
        """Train (or resume, or load) ``f_s`` and the training masks, then the faithfulness
        report (cached beside them) and any test-time masks cached by an earlier run."""
        trainer = DietTrainer(
            self.masker, self.config, device=device, seed=self._seed, cache_dir=self.cache_dir
        )
        result = trainer.fit(model, get_batch, len(index), labels, data_key=data_key)
        self.f_s, self.train_masks, self.history, self.train_index = (
            result.f_s,
            result.masks,
            result.history,
            index,
        )
        for p in (
            self.f_s.parameters()
        ):  # f_s is final: explainers and metrics only need input gradients
            p.requires_grad_(False)
        self._fs_fingerprint = fingerprint_module(self.f_s)

        report_path = self.cache_dir / REPORT_FILE if self.cache_dir is not None else None
        if result.cache_hit and report_path is not None and report_path.exists():
            self.fit_report = json.loads(report_path.read_text())
        else:
            start = time.perf_counter()
            self.fit_report = faithfulness()
            self.fit_report["fit_seconds"] = round(result.seconds, 3)
            self.fit_report["report_seconds"] = round(time.perf_counter() - start, 3)
            if report_path is not None:
                atomic_write_text(report_path, json.dumps(self.fit_report, indent=2))
        self.fit_report["cache_hit"] = result.cache_hit
        self.fit_report["resumed_from_phase"] = result.resumed_from
        self._test_cache, self._checks, self._registered = {}, {}, None
        if self.cache_dir is not None and (self.cache_dir / TEST_MASKS_FILE).exists():
            saved = load_torch(self.cache_dir / TEST_MASKS_FILE)
            if isinstance(saved, dict) and saved.get("format") == TEST_MASKS_FORMAT:
                self._test_cache = {
                    k: _TestMask(m, int(s), bool(h), float(lc), float(mc), int(hz), int(wd))
                    for k, m, s, h, lc, mc, hz, wd in zip(
                        saved["keys"],
                        saved["masks"],
                        saved["steps"].tolist(),
                        saved["limit_hit"].tolist(),
                        saved["loss_change"].tolist(),
                        saved["mask_change"].tolist(),
                        saved["horizon"].tolist(),
                        saved["window"].tolist(),
                        strict=True,
                    )
                }
                self._checks = dict(saved.get("checks") or {})
        self._update_test_stats()

    # ---------------------------------------------------------------- subclass hooks
    def _test_settings(self) -> dict[str, Any]:
        """Test-time settings of the modality (e.g. the background used at test time)."""
        return {}

    def _digests(self, inputs: Any) -> list[str]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _optimise(
        self,
        model: nn.Module,
        inputs: Any,
        positions: list[int],
        seed: int,
        sample_seeds: list[int],
    ) -> tuple[list[torch.Tensor], dict[str, Any]]:  # pragma: no cover
        """Per-sample masks of ``inputs[positions]`` (in that order: one set for ``authors``) for
        ``model``, and :func:`~xaiarena.explainers.diet.testtime.optimise_test_masks`'s summary."""
        raise NotImplementedError

    def _check_maps(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:  # pragma: no cover
        """The maps of per-sample masks as 1-D tensors over the sample's own units (seed check)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- test-time masks
    def _test_key(self, seed: int | None = None) -> str:
        """Digest of everything a test-time mask for ``f_s`` depends on but its input (and set)."""
        key = {
            "format": TEST_MASKS_FORMAT,
            "config": self.config.test_dict(),
            "modality": self._test_settings(),
            "f_s": self._fs_fingerprint,
            "seed": self._seed if seed is None else int(seed),
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]

    def _authors(self) -> bool:
        return self.config.test_procedure == "authors"

    def _keys(self, digests: list[str], sset: _SampleSet | None) -> list[str]:
        tkey = self._test_key()
        return [f"{tkey}:{d}" if sset is None else f"{tkey}:{sset.digest}:{d}" for d in digests]

    def _run(
        self,
        model: nn.Module,
        inputs: Any,
        digests: list[str],
        sset: _SampleSet | None,
        todo: list[str],
        seed: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
        """Optimise the masks of the distinct samples ``todo`` (digests; for ``authors`` the whole
        set ``sset``, in its canonical order); ``{digest: mask}``, the summary and the digests in
        order."""
        from .testtime import sample_seed

        first = _first_positions(digests)
        order = list(sset.members) if sset is not None else todo
        positions = [first[d] for d in order]
        masks, summary = self._optimise(
            model, inputs, positions, seed, [sample_seed(seed, d) for d in order]
        )
        return dict(zip(order, masks, strict=True)), summary, order

    def test_masks_for(self, model: nn.Module | None, inputs: Any) -> list[torch.Tensor]:
        """Per-sample test-time masks of ``inputs`` for ``model`` (``None`` or ``f_s``: cached;
        any other model: optimised against it, uncached)."""
        self._fitted()
        digests = self._digests(inputs)
        if not digests:
            return []
        if not self._explains_f_s(model):
            sset = _SampleSet.of(digests) if self._authors() else None
            got, _, _ = self._run(
                model, inputs, digests, sset, list(_first_positions(digests)), self._seed
            )
            return [got[d] for d in digests]
        sset = None
        if self._authors():
            reg = self._registered
            sset = reg if reg is not None and reg.covers(digests) else _SampleSet.of(digests)
        keys = self._keys(digests, sset)
        missing = [d for d, k in zip(digests, keys, strict=True) if k not in self._test_cache]
        if missing and sset is not None and not set(sset.members) <= set(digests):
            # the registered set's masks are not cached under these settings, and this call does not
            # hold all of its samples: optimise this call's inputs as their own set
            sset = _SampleSet.of(digests)
            keys = self._keys(digests, sset)
            missing = [d for d, k in zip(digests, keys, strict=True) if k not in self._test_cache]
        if missing:
            todo = list(_first_positions(missing))
            got, summary, order = self._run(self._fitted(), inputs, digests, sset, todo, self._seed)
            by_key = dict(zip(digests, keys, strict=True))
            for j, d in enumerate(order):
                self._test_cache[by_key[d]] = _TestMask(
                    got[d],
                    int(summary["steps"][j]),
                    bool(summary["limit_hit"][j]),
                    float(summary["loss_change"][j]),
                    float(summary["mask_change"][j]),
                    -1 if summary["horizon"] is None else int(summary["horizon"][j]),
                    -1 if summary["window"] is None else int(summary["window"][j]),
                )
            self._save_test_masks()
            self._update_test_stats()
        return [self._test_cache[k].mask for k in keys]

    def prepare_set(self, model: nn.Module, inputs: Any) -> None:
        """Explain-stage hook (:func:`xaiarena.engine.batching.explain_in_batches`): ``inputs`` are
        every sample the run explains on ``model``. For ``f_s``, their test-time masks are optimised
        here, once (``authors``: together, as one set, whatever ``evaluation.batch_size``), and the
        seed check runs on ``test_seed_check`` of them. Other models: nothing to prepare."""
        if self.f_s is None or not self._explains_f_s(model):
            return
        digests = self._digests(inputs)
        if not digests:
            return
        self._registered = _SampleSet.of(digests)
        self.test_masks_for(model, inputs)
        self._seed_check(inputs, digests)

    def _seed_check(self, inputs: Any, digests: list[str]) -> None:
        """Re-optimise the first ``test_seed_check`` samples of the set (by digest) with a second
        seed and record the median per-sample Spearman correlation of the two seeds' maps in the
        report. ``converged``: the served masks against the second seed's; ``authors``: that
        subset optimised as its own set with each seed (a set's masks depend on the set)."""
        k = min(self.config.test_seed_check, len(set(digests)))
        if k < 1:
            return
        subset = _SampleSet(tuple(sorted(set(digests)))[:k])
        ckey = f"{self._test_key()}:{subset.digest}"
        if ckey not in self._checks:
            seed2 = second_seed(self._seed)
            first = _first_positions(digests)
            keep = [first[d] for d in subset.members]
            sub_inputs = inputs[torch.tensor(keep)]
            sub_digests = list(subset.members)
            start = time.perf_counter()
            if self._authors():
                a, _, _ = self._run(
                    self._fitted(), sub_inputs, sub_digests, subset, sub_digests, self._seed
                )
                b, _, _ = self._run(
                    self._fitted(), sub_inputs, sub_digests, subset, sub_digests, seed2
                )
            else:
                keys = self._keys(sub_digests, None)
                a = {
                    d: self._test_cache[key].mask for d, key in zip(sub_digests, keys, strict=True)
                }
                b, _, _ = self._run(
                    self._fitted(), sub_inputs, sub_digests, None, sub_digests, seed2
                )
            rho = spearman_pairs(
                self._check_maps([a[d] for d in sub_digests]),
                self._check_maps([b[d] for d in sub_digests]),
            )
            vals = [float(r) for r in rho.tolist() if r == r]
            self._checks[ckey] = {
                "n_samples": k,
                "seed": self._seed,
                "second_seed": seed2,
                "median_spearman": statistics.median(vals) if vals else float("nan"),
                "min_spearman": min(vals) if vals else float("nan"),
                "spearman": [round(float(r), 4) for r in rho.tolist()],
                "seconds": round(time.perf_counter() - start, 3),
            }
            self._save_test_masks()
        self._update_test_stats(check=ckey)

    def _explains_f_s(self, model: nn.Module | None) -> bool:
        """Whether a call to explain ``model`` is a call for ``f_s`` (served from the cache)."""
        return model is None or model is self._fitted()

    def _update_test_stats(self, check: str | None = None) -> None:
        """Put how the test-time optimisation ended into the report (in place, so a report
        dict handed out before the evaluation masks were computed shows them too)."""
        tkey = self._test_key()
        entries = [e for k, e in self._test_cache.items() if k.startswith(tkey + ":")]
        for k in (
            "test_time",
            "test_steps_mean",
            "test_stopped_at_limit_fraction",
            "test_final_loss_change",
            "test_final_mask_change",
            "test_seed_agreement",
            "test_seed_check",
        ):
            self.fit_report.pop(k, None)
        if check is None:  # the latest check under these settings (a cached run)
            check = next(
                (k for k in reversed(list(self._checks)) if k.startswith(tkey + ":")), None
            )
        if check is not None and check in self._checks:
            self.fit_report["test_seed_check"] = self._checks[check]
            self.fit_report["test_seed_agreement"] = self._checks[check]["median_spearman"]
        if not entries:
            return
        n = len(entries)
        steps = sorted(e.steps for e in entries)
        at_limit = sum(e.limit_hit for e in entries)

        def dist(vals: list[float]) -> dict[str, float] | None:
            vals = [v for v in vals if v == v]
            return {"median": statistics.median(vals), "max": max(vals)} if vals else None

        horizons = sorted({e.horizon for e in entries if e.horizon >= 0})
        windows = sorted({e.window for e in entries if e.window >= 0})
        time_info: dict[str, Any] = {
            "procedure": self.config.test_procedure,
            "n_masks": n,
            "steps_mean": sum(steps) / n,
            "steps_median": statistics.median(steps),
            "steps_min": steps[0],
            "steps_max": steps[-1],
            "stopped_by_rule": n - at_limit,
            "stopped_at_limit": at_limit,
            "stopped_at_limit_fraction": at_limit / n,
            "final_loss_change": dist([e.loss_change for e in entries]),
            "final_mask_change": dist([e.mask_change for e in entries]),
            "horizon": horizons[0] if len(horizons) == 1 else horizons,
            "window": (windows[0] if len(windows) == 1 else windows) if windows else None,
            "settings": self.config.test_dict() | self._test_settings(),
        }
        if self._authors():
            time_info["epochs"] = sorted(set(steps))
        self.fit_report["test_time"] = time_info
        self.fit_report["test_steps_mean"] = time_info["steps_mean"]
        self.fit_report["test_stopped_at_limit_fraction"] = time_info["stopped_at_limit_fraction"]
        for key in ("final_loss_change", "final_mask_change"):
            if time_info[key] is not None:
                self.fit_report[f"test_{key}"] = time_info[key]["median"]

    def _save_test_masks(self) -> None:
        if self.cache_dir is None:
            return
        keys = list(self._test_cache)
        entries = [self._test_cache[k] for k in keys]
        atomic_save_torch(
            {
                "format": TEST_MASKS_FORMAT,
                "keys": keys,
                "masks": [e.mask for e in entries],
                "steps": torch.tensor([e.steps for e in entries], dtype=torch.long),
                "limit_hit": torch.tensor([e.limit_hit for e in entries], dtype=torch.bool),
                "loss_change": torch.tensor([e.loss_change for e in entries], dtype=torch.float64),
                "mask_change": torch.tensor([e.mask_change for e in entries], dtype=torch.float64),
                "horizon": torch.tensor([e.horizon for e in entries], dtype=torch.long),
                "window": torch.tensor([e.window for e in entries], dtype=torch.long),
                "checks": self._checks,
            },
            self.cache_dir / TEST_MASKS_FILE,
        )

    def report(self) -> dict[str, Any]:
        """Model-faithfulness report of the last ``fit`` (empty before).

        The dict is live: ``test_time`` (how the test-time optimisation of the masks served for
        ``f_s`` ended: steps, stopped by the rule or at the safety limit, the final relative
        changes), ``test_steps_mean``, ``test_stopped_at_limit_fraction`` and, after the seed
        check, ``test_seed_check`` / ``test_seed_agreement`` are added and updated as masks are
        computed."""
        return self.fit_report

    def explained_model(self, model: nn.Module) -> nn.Module:
        return self._fitted()

    def _fitted(self) -> nn.Module:
        if self.f_s is None or self.masker is None:
            raise RuntimeError(
                f"{self.name} must be fitted first: call fit(model, task, device=...) before "
                "explaining"
            )
        return self.f_s
