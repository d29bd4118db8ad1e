"""Content hashes of JSON-able values: cache keys, config hashes and derived seeds.

The lowest layer of the package (it imports nothing of xaiarena), so that every module that
names an artefact or derives a seed (the engine's cache, config, dissection) uses the same
hash without importing the modules that use it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, n: int = 16) -> str:
    """Content hash of a JSON-able object (key order independent)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from any JSON-able parts (e.g. the run seed and a component label)."""
    return int(stable_hash(list(parts), n=8), 16)
