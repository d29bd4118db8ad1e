"""Seeds and per-sample random streams.

How a sample's random draws stay independent of its batch
---------------------------------------------------------
A randomised explainer draws **one** base seed from the ``torch.Generator`` it is given per call
(:func:`base_seed`), then derives each sample's own seed from that base seed and a hash of the
sample's pixels (:func:`sample_seeds`) and draws from one CPU generator per sample
(:func:`sample_generators`). A sample's random draws therefore depend only on the generator's
state and on the sample itself, never on its position in the batch or on its batch mates, so
explaining a batch gives the same maps as explaining its samples one by one (each call starting
from a generator in the same state). All random numbers are drawn on the CPU and moved to the
inputs' device, so CPU and CUDA runs see the same draws. Metrics do the same with the sample ids
(:class:`xaiarena.metrics.core.SampleRNG`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def base_seed(generator: torch.Generator | None) -> int:
    """One 62-bit draw from ``generator`` (on its device; the global generator when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())


def keyed_seeds(contents: Iterable[bytes], generator: torch.Generator | None) -> list[int]:
    """One 63-bit seed per item of ``contents`` (a sample's bytes): a keyed hash of the item, the
    key one draw from ``generator``."""
    key = base_seed(generator).to_bytes(8, "little")
    return [
        int.from_bytes(hashlib.blake2b(c, digest_size=8, key=key).digest(), "little") >> 1
        for c in contents
    ]


def sample_seeds(inputs: torch.Tensor, generator: torch.Generator | None) -> list[int]:
    """Per-sample seeds from one generator draw and a hash of each sample's pixels."""
    data = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
    return keyed_seeds((row.tobytes() for row in data), generator)


def sample_generators(
    inputs: torch.Tensor, generator: torch.Generator | None
) -> list[torch.Generator]:
    """One seeded CPU generator per sample of ``inputs`` (see the module docstring)."""
    return [torch.Generator().manual_seed(s) for s in sample_seeds(inputs, generator)]
