"""Neuron dissection: label the neurons of a vision model with concepts (CLIP-Dissect).

Oikarinen & Weng, "CLIP-Dissect: Automatic Description of Neuron Representations in Deep
Vision Networks", ICLR 2023. See ``docs/dissect.md``.

Pieces (each registered, ``xaiarena list`` shows them under ``dissect``):

* :mod:`.activations`: per-neuron activations of chosen layers (scoped hooks; conv channels
  averaged over space);
* :mod:`.concepts`: concept sets (``words``, ``imagenet_classes``, ``dataset_classes``,
  ``annotations``, ``file``, ``list``);
* :mod:`.scorers`: the concept-image matrix P (``clip``, ``open_clip``, ``annotations``);
* :mod:`.similarity`: ``soft_wpmi`` (default), ``wpmi``, ``rank_reorder``,
  ``cos_similarity_cubed``, ``cos_similarity``;
* :mod:`.results`: the saved tables read back (:func:`~.results.read_neurons`);
* :mod:`.runner`: the run behind ``xaiarena dissect CONFIG`` (:func:`run`, :func:`load`,
  :class:`DissectResult`) and :func:`label_neurons` for matrices computed elsewhere.

Importing this package stays light (the config module imports it); the API is loaded on use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "load", "DissectResult", "DissectRunner", "label_neurons", "record_activations"]


def __getattr__(name: str) -> Any:
    if name in ("run", "load", "DissectResult", "DissectRunner", "label_neurons"):
        from . import runner

        return getattr(runner, name)
    if name == "record_activations":
        from .activations import record_activations

        return record_activations
    raise AttributeError(f"module 'xaiarena.dissect' has no attribute '{name}'")
