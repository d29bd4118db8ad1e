"""xaiarena: put feature-attribution methods side by side and tell which are faithful."""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_config",
    "run",
    "load",
    "RunResult",
    "evaluate",
    "explain",
    "Evaluation",
]

from .api import Evaluation, evaluate, explain  # noqa: E402
from .config import load_config  # noqa: E402
from .results import RunResult, load  # noqa: E402
from .runner import run  # noqa: E402
