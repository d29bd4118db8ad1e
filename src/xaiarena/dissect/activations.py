"""Per-neuron activations of chosen layers on the probe images, through scoped forward hooks.

A layer is a submodule named by its dotted path (``model.get_submodule``). xaiarena image
models wrap the network as ``net`` and normalise inputs before it, so a layer may be given
with or without the ``net.`` prefix (``layer4`` and ``net.layer4`` are the same module of a
torchvision ResNet-18). Each hook records the module's output, reduced to one number per
neuron and image as CLIP-Dissect does:

* ``(N, C, H, W)`` (conv channels): the spatial mean (``pool="avg"``, the paper's default) or
  maximum (``pool="max"``);
* ``(N, T, D)`` (transformer tokens): the first (class) token;
* ``(N, D)`` (fully connected): as is.

Hooks exist only inside :func:`record_activations` (removed in ``finally``), the model runs
in eval mode (restored afterwards, :func:`~xaiarena.ops.modes.eval_mode`) without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..ops.modes import eval_mode
from ..progress import progress

POOLS = ("avg", "max")


class LayerNotFoundError(LookupError):
    """A layer name that is not a submodule of the model; ``valid`` lists some that are."""

    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        shown = ", ".join(valid[:60]) + (f", ... ({len(valid)} in all)" if len(valid) > 60 else "")
        super().__init__(f"'{name}' is not a layer of the model; valid: {shown}")


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the model's submodules, without the ``net.`` prefix of xaiarena wrappers."""
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(getattr(model, "net", None), nn.Module):
        names = [n[4:] for n in names if n.startswith("net.")]
    return names


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model`` (or of ``model.net``); :class:`LayerNotFoundError` if
    none."""
    for root in (model, getattr(model, "net", None)):
        if isinstance(root, nn.Module):
            try:
                return root.get_submodule(name)
            except AttributeError:
                continue
    raise LayerNotFoundError(name, layer_names(model))


def pool_output(out: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """One value per neuron: ``(N, C, H, W)`` pooled over space, ``(N, T, D)`` first token,
    ``(N, D)`` as is."""
    if pool not in POOLS:
        raise ValueError(f"pool='{pool}' is not valid; valid: {', '.join(POOLS)}")
    if out.ndim == 4:
        return out.mean(dim=(2, 3)) if pool == "avg" else out.amax(dim=(2, 3))
    if out.ndim == 3:
        return out[:, 0]
    if out.ndim == 2:
        return out
    raise ValueError(
        f"cannot reduce a layer output of shape {tuple(out.shape)} to one value per neuron"
    )


@contextmanager
def recording(model: nn.Module, layers: Sequence[str], pool: str = "avg"):
    """Hooks on ``layers`` appending pooled outputs to ``store[layer]`` (a list per layer), removed
    on exit."""
    modules = {name: resolve_layer(model, name) for name in layers}
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            store[name].append(pool_output(output.detach(), pool).float().cpu())

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record_activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    pool: str = "avg",
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled activations ``{layer: (N, neurons)}`` and the model outputs ``(N, outputs)``.

    ``images``: uint8 ``(N, C, H, W)`` (divided by 255) or pixel-space floats in [0, 1].
    """
    if not layers:
        raise ValueError("no layers to record; name at least one")
    device = torch.device(device)
    outputs = []
    with eval_mode(model), recording(model, layers, pool) as store:
        for i in progress(
            range(0, len(images), batch_size), desc="activations", disable=not show_progress
        ):
            xb = images[i : i + batch_size]
            xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb.float()
            outputs.append(model(xb.to(device)).float().cpu())
    acts = {name: torch.cat(parts) for name, parts in store.items()}
    for name, a in acts.items():
        if len(a) != len(images):  # a module called more than once per forward pass
            raise ValueError(
                f"layer '{name}' produced {len(a)} rows for {len(images)} images: it runs more "
                "than once per forward pass; choose a module that runs once"
            )
    return acts, torch.cat(outputs)


def is_output_layer(acts: torch.Tensor, outputs: torch.Tensor) -> bool:
    """Whether a layer's recorded activations are the model's outputs (its neuron k is class k)."""
    return acts.shape == outputs.shape and bool(torch.allclose(acts, outputs, rtol=1e-5, atol=1e-6))
