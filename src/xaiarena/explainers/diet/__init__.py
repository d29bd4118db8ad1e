"""DiET (Distractor Erasure Tuning, Bhalla et al. NeurIPS 2023).

``core`` holds the modality-agnostic algorithm (schedule, losses, phase loop,
convergence, checkpoint/resume, test-time masks); ``image`` the pixel masks and
the registered ``diet`` explainer. See ``docs/diet.md``.
"""

from .core import DietConfig, DietResult, DietTrainer, Masker, optimise_test_masks
from .image import DiET, ImageMasker

__all__ = ["DiET", "DietConfig", "DietResult", "DietTrainer", "ImageMasker", "Masker", "optimise_test_masks"]
