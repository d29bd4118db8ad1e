"""The run's cache: every cache key, and every cached artefact with its checksum.

Keys
----
Each stage's artefact is stored under a content hash of exactly what it depends on.
The key functions below are the only place where those hashes are computed; each
returns a :class:`Key` (the hash and the inputs it hashes), and the inputs are written
beside the artefact, so ``python -m xaiarena.engine.cache --explain RUN_DIR`` can say, for every
file, what produced it.

=============  ====================================================================
stage          key inputs
=============  ====================================================================
data           dataset config (name, options, data_dir), seed
model          data key, model config, training config (None for models that are
               never trained), seed, amp
fit            model key, learned explainer config, seed  (DiET's f_s and masks)
learned model  fit key, SHA-256 of the fitted model's weights (the key of the model a
               learned explainer explains, e.g. DiET's f_s: content-addressed, so a
               change of the explainer's code or defaults that changes f_s also
               changes every key below it)
samples        (a unit's evaluation samples, ``cache/samples/``, written by the process
               that selected them) model key, what selects them (``n_samples``,
               ``only_correct``, the replicates' seeds, ``batch_size``); each shard's
               inputs and masks: those, the sample ids and the shard's sample positions
view           (a view's targets and predictions, ``cache/views/``) the view's model key,
               evaluation sample ids, target rule
explain        explained model's key, explainer config, evaluation sample ids, seed,
               target rule, RNG scheme version, the entry's postprocess steps
               (only when it has any), ``evaluation.map_dtype`` (only when not float32);
               each shard's file: those and the shard's sample positions
score          metric config, every scored attribution's key, sample ids, seed,
               explained model's key, RNG scheme version; each shard's files: those and
               the shard's sample positions
meta maps      (``evaluation.meta``) the explain key of the unperturbed maps, the
               meta samples' ids, the perturbation (type, strength, noise, draw)
meta score     metric config, every scored attribution's key, the meta samples' ids,
               seed, explained model's key, the perturbation settings (samples,
               draws, noise levels), RNG scheme version
probe          (``xaiarena dissect``) data key, split, the probe images' ids
dissect        (``xaiarena dissect``, ``cache/dissect/<kind>/``) per kind: activations
               (model key, probe key, layer, pooling), image and text embeddings or
               annotation scores (scorer fingerprint, probe key or concepts), a
               layer's top concepts (model and probe keys, layer, pooling, the scores'
               key, similarity config, seed, concepts kept)
=============  ====================================================================

Artefacts
---------
:class:`Cache` writes every artefact atomically (temporary file, then rename) together
with a manifest ``<file>.manifest.json`` holding its SHA-256, size, the key inputs and the
stage. A file is used only when it is readable and its checksum matches the manifest;
otherwise it is logged, discarded and recomputed (a truncated ``.pt``, a hand-edited
``.parquet``, a file written by an interrupted older version).

Paths
-----
:meth:`Cache.path` builds every path below the cache root from validated parts and
refuses any that would resolve outside it (see :func:`inside`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import RunError
from ..files import (
    atomic_write_bytes,
    atomic_write_text,
    check_inside,
    load_torch,
    parquet_bytes,
    torch_bytes,
)
from ..hashing import stable_hash, stable_seed  # noqa: F401  (stable_seed: re-exported, ck.stable_seed)
from ..strict_json import dumps_json

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
#: version of the randomness scheme of explainers and metrics; part of the explain and score keys,
#: so that caches written under an older scheme are recomputed rather than mixed with new numbers
#: (2: explainer streams seeded by the registered name, not the label)
RNG_SCHEME = 2


@dataclass(frozen=True)
class Key:
    """A cache key: ``hash`` of ``inputs`` (kept for the manifest and ``--explain``)."""

    stage: str
    hash: str
    inputs: dict[str, Any]


def _key(stage: str, inputs: dict[str, Any]) -> Key:
    return Key(stage, stable_hash(inputs), inputs)


# --------------------------------------------------------------------------- key functions


def data_key(data_cfg: dict[str, Any], seed: int) -> Key:
    return _key("data", {"data": data_cfg, "seed": seed})


def model_key(
    data: Key,
    model_cfg: dict[str, Any],
    training: dict[str, Any] | None,
    seed: int,
    amp: bool = False,
) -> Key:
    inputs = {"data": data.hash, "model": model_cfg, "training": training, "seed": seed}
    if amp:
        inputs["amp"] = True
    return _key("model", inputs)


def samples_key(model: Key, selection: dict[str, Any]) -> Key:
    """A unit's evaluation samples (:func:`xaiarena.engine.stages.save_samples`): the model key
    (with the data's) and the settings that select the samples."""
    return _key("samples", {"model": model.hash, "selection": selection})


def view_key(model: Key, ids_hash: str, target: Any) -> Key:
    """A view's targets and predictions of the evaluation samples."""
    return _key("view", {"model": model.hash, "ids": ids_hash, "target": target})


def fit_key(model: Key, explainer_cfg: dict[str, Any], seed: int) -> Key:
    return _key("fit", {"model": model.hash, "explainer": explainer_cfg, "seed": seed})


def learned_model_key(fit: Key, weights: str) -> Key:
    """The key of a learned explainer's model (e.g. DiET's f_s): its fit and its weights' hash."""
    return _key("learned_model", {"fit": fit.hash, "weights": weights})


def explain_key(
    model: Key,
    explainer_cfg: dict[str, Any],
    ids_hash: str,
    seed: int,
    target: str,
    postprocess: Sequence[str] = (),
    map_dtype: str = "float32",
) -> Key:
    """The maps' key; ``postprocess`` (the entry's steps) enters it only when non-empty and
    ``map_dtype`` (how the maps are stored) only when not float32, so the keys of entries without
    them are those of runs made before the options existed."""
    inputs = {
        "model": model.hash,
        "explainer": explainer_cfg,
        "ids": ids_hash,
        "seed": seed,
        "target": target,
        "rng": RNG_SCHEME,
    }
    if postprocess:
        inputs["postprocess"] = list(postprocess)
    if map_dtype != "float32":
        inputs["map_dtype"] = map_dtype
    return _key("explain", inputs)


def shard_key(whole: Key, bounds: tuple[int, int]) -> Key:
    """One shard's part of an artefact over the evaluation set (maps, scores): the whole's key
    inputs and the shard's sample positions ``[start, stop)`` (:mod:`xaiarena.engine.shards`)."""
    return _key(whole.stage, {**whole.inputs, "shard": [int(bounds[0]), int(bounds[1])]})


def score_key(
    metric_cfg: dict[str, Any], attributions: dict[str, Key], ids_hash: str, seed: int, model: Key
) -> Key:
    return _key(
        "score",
        {
            "metric": metric_cfg,
            "attr": {k: v.hash for k, v in attributions.items()},
            "ids": ids_hash,
            "seed": seed,
            "model": model.hash,
            "rng": RNG_SCHEME,
        },
    )


def meta_maps_key(explain: Key, ids_hash: str, perturbation: dict[str, Any]) -> Key:
    """Maps re-explained on a perturbed model (metric meta-evaluation,
    :mod:`xaiarena.engine.meta_stage`): the unperturbed maps' key (model, explainer, seed,
    target, postprocess) and the perturbation."""
    return _key(
        "meta_maps",
        {"explain": explain.hash, "ids": ids_hash, "perturbation": perturbation, "rng": RNG_SCHEME},
    )


def meta_score_key(
    metric_cfg: dict[str, Any],
    attributions: dict[str, Key],
    ids_hash: str,
    seed: int,
    model: Key,
    settings: dict[str, Any],
) -> Key:
    """One metric's scores of every perturbed evaluation problem of the meta-evaluation."""
    attr = {k: v.hash for k, v in attributions.items()}
    return _key(
        "meta_score",
        {
            "metric": metric_cfg,
            "attr": attr,
            "ids": ids_hash,
            "seed": seed,
            "model": model.hash,
            "settings": settings,
            "rng": RNG_SCHEME,
        },
    )


def probe_key(data: Key, split: str, ids: list[int]) -> Key:
    """The probe images of ``xaiarena dissect``: which images of which split of which data."""
    return _key("probe", {"data": data.hash, "split": split, "ids": ids})


def dissect_key(kind: str, inputs: dict[str, Any]) -> Key:
    """An artefact of ``xaiarena dissect`` (``kind``: activations, image_embeddings,
    text_embeddings, annotation_scores, similarity), keyed by ``inputs`` (see the table above)."""
    return _key(f"dissect/{kind}", inputs)


# --------------------------------------------------------------------------- paths


def inside(root: Path, path: Path) -> Path:
    """``path`` if it resolves inside ``root`` (symlinks followed), else a ``WriteError`` (a
    :class:`RunError`): :func:`xaiarena.files.check_inside`, the check of every written path."""
    return check_inside(path, root)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


class Cache:
    """Checksummed, atomically written artefacts below ``root`` (``RUN_DIR/cache``)."""

    def __init__(self, root: str | Path, run_dir: str | Path | None = None):
        self.root = Path(root)
        self.run_dir = Path(run_dir) if run_dir is not None else self.root

    def path(self, *parts: str) -> Path:
        """``root/part/...``, refused when it would leave the run directory."""
        for p in parts:
            if not p or p in (".", "..") or "/" in p or "\\" in p or "\x00" in p:
                raise RunError(
                    f"refusing the cache path component {p!r} (labels and names must be plain "
                    "file names)"
                )
        return inside(self.run_dir, self.root.joinpath(*parts))

    # ------------------------------------------------------------- manifests
    def _manifest(self, path: Path, sha: str, size: int, key: Key | None) -> None:
        doc = {
            "file": path.name,
            "sha256": sha,
            "bytes": size,
            "stage": key.stage if key else "",
            "key": key.hash if key else "",
            "inputs": key.inputs if key else {},
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(manifest_path(path), dumps_json(doc))

    def record(self, path: Path, key: Key | None = None) -> None:
        """Write the manifest of a file that another function wrote completely (a checkpoint)."""
        inside(self.run_dir, path)
        self._manifest(path, _sha256(path), path.stat().st_size, key)

    def write_bytes(self, path: Path, data: bytes, key: Key | None = None) -> None:
        """The manifest first, then the file (atomically): a run killed in between leaves a manifest
        without its file, which reads as a cache miss; a file is never left without its manifest."""
        inside(self.run_dir, path)
        self._manifest(path, hashlib.sha256(data).hexdigest(), len(data), key)
        atomic_write_bytes(path, data)

    def verify(self, path: Path) -> bool:
        """True when ``path`` exists and matches its manifest; a mismatch or a missing manifest
        discards the file (logged) and gives False."""
        if not path.exists():
            return False
        mpath = manifest_path(path)
        why = ""
        try:
            doc = json.loads(mpath.read_text())
            if doc.get("sha256") != _sha256(path):
                why = "its checksum does not match the manifest (truncated or changed)"
        except FileNotFoundError:
            why = "it has no manifest (written by an interrupted or older run)"
        except (OSError, ValueError) as exc:
            why = f"its manifest is unreadable ({exc})"
        if why:
            self.discard(path, why)
            return False
        return True

    def discard(self, path: Path, why: str) -> None:
        log.warning("cache: discarding %s: %s; it will be recomputed", path, why)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        manifest_path(path).unlink(missing_ok=True)

    # ------------------------------------------------------------- typed I/O
    def save_torch(self, path: Path, obj: Any, key: Key | None = None) -> None:
        self.write_bytes(path, torch_bytes(obj), key)

    def load_torch(self, path: Path) -> Any | None:
        """The object, or None when missing, corrupt or unreadable (then discarded)."""
        if not self.verify(path):
            return None
        try:
            return load_torch(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
            self.discard(path, f"it cannot be read ({type(exc).__name__}: {exc})")
            return None

    def torch_artefact(self, path: Path, key: Key, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """``(object, cache_hit)``: the object saved at ``path`` when it matches its manifest, else
        ``compute()``, saved there with its manifest."""
        obj = self.load_torch(path)
        if obj is not None:
            return obj, True
        obj = compute()
        self.save_torch(path, obj, key)
        return obj, False

    def save_frame(self, path: Path, df: pd.DataFrame, key: Key | None = None) -> None:
        self.write_bytes(path, parquet_bytes(df), key)

    def load_frame(self, path: Path) -> pd.DataFrame | None:
        if not self.verify(path):
            return None
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001
            self.discard(path, f"it cannot be read ({type(exc).__name__}: {exc})")
            return None

    def verify_dir(self, folder: Path, files: list[str]) -> bool:
        """All ``files`` of ``folder`` exist and match their manifests; else the folder is
        discarded."""
        if not folder.exists():
            return False
        for name in files:
            p = folder / name
            if p.exists() and not manifest_path(p).exists():
                # written by a version without manifests: trust nothing, recompute
                self.discard(folder, f"'{name}' has no manifest")
                return False
            if not self.verify(p):
                if folder.exists():
                    self.discard(folder, f"'{name}' is missing or corrupt")
                return False
        return True


# --------------------------------------------------------------------------- inspection


def explain_cache(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every cached artefact of a run with the stage, key and the inputs its key hashes."""
    root = Path(run_dir) / "cache"
    rows = []
    for mpath in sorted(root.rglob("*" + MANIFEST_SUFFIX)):
        try:
            doc = json.loads(mpath.read_text())
        except (OSError, ValueError):
            doc = {"error": "unreadable manifest"}
        target = mpath.with_name(mpath.name[: -len(MANIFEST_SUFFIX)])
        ok = target.exists() and doc.get("sha256") == (_sha256(target) if target.exists() else None)
        rows.append({"path": str(target.relative_to(run_dir)), "ok": ok, **doc})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xaiarena.engine.cache",
        description="Inspect a run's cache: every artefact and what its key hashes.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--explain", action="store_true", help="list every artefact with its key inputs"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if not (args.run_dir / "cache").is_dir():
        print(f"error: '{args.run_dir}' has no cache folder", file=sys.stderr)
        return 2
    rows = explain_cache(args.run_dir)
    if args.json:
        print(dumps_json(rows))
        return 0
    for r in rows:
        state = "ok" if r["ok"] else "CORRUPT (will be recomputed)"
        where = f"[{r.get('stage', '?')} {r.get('key', '')}]"
        print(f"{r['path']}  {where} {r.get('bytes', '?')} bytes, {state}")
        if args.explain:
            for k, v in (r.get("inputs") or {}).items():
                print(f"    {k}: {json.dumps(v, sort_keys=True, default=str)}")
    print(f"{len(rows)} artefact(s) in {os.fspath(args.run_dir / 'cache')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
