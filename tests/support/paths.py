"""Paths the tests read: the repository's root and the shared local datasets."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository's root (README.md, configs/, docs/, benchmarks/)
ROOT = Path(__file__).resolve().parents[2]
#: the shared local datasets: $XAIARENA_DATA_DIR, else ../shared/datasets beside the repository
SHARED = Path(os.environ.get("XAIARENA_DATA_DIR", ROOT.parent / "shared" / "datasets"))
README = ROOT / "README.md"
CONFIGS = ROOT / "configs"
