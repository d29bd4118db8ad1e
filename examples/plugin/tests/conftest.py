"""Run the example's tests without installing it: put ``src/`` on the path when the package is
not installed (``pip install -e examples/plugin`` makes this a no-op)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("xaiarena_example_plugin") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
