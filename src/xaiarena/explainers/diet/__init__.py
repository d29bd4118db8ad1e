"""DiET (Distractor Erasure Tuning, Bhalla et al. NeurIPS 2023).

``core`` holds the modality-agnostic algorithm (schedule, losses, phase loop, convergence,
checkpoint/resume); ``testtime`` the two procedures that optimise the test-time masks
(``converged``, ``authors``); ``mixin`` what the explainers share (fit report, test-mask cache,
seed check); ``image`` the pixel masks and the registered ``diet`` explainer; ``text`` the word
masks and ``text_diet``. See ``docs/diet.md``.
"""

from .core import DietConfig, DietResult, DietTrainer, Masker
from .image import DiET, ImageMasker
from .testtime import optimise_test_masks

__all__ = [
    "DiET",
    "DietConfig",
    "DietResult",
    "DietTrainer",
    "ImageMasker",
    "Masker",
    "optimise_test_masks",
]
