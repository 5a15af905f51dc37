"""Gradient accumulation that keeps batch-level losses exact (`train.grad_accum_steps`).

Why not the usual "sum the micro-batch losses": PLCC, the composite's correlation and the ranking loss are
statistics of the whole batch; averaged over micro-batches of 4 they would be a different (noisier, and for
1-item micro-batches undefined) loss. Here the model runs on each micro-batch twice (the GradCache scheme):

    1. without gradients, to get the predictions of the whole batch;
    2. the loss is computed on all of them, and its gradient with respect to each prediction taken;
    3. each micro-batch runs again with gradients and back-propagates its slice of that gradient.

Memory stays that of one micro-batch, the gradient is that of the whole-batch loss, at the price of one
extra forward pass. The RNG state is replayed so dropout draws the same masks in passes 1 and 3, and
buffers (BatchNorm running statistics) are restored after pass 1, so they are updated once per micro-batch
as in plain accumulation. BatchNorm in train mode normalises with micro-batch statistics, as any
accumulation does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from effiminivlm.inference import forward_batch
from effiminivlm.runtime import autocast


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A collated batch cut into `parts` consecutive micro-batches (the last may be smaller). Per-item
    tensors and lists are sliced; the several-images layout (`all_pixel_values`, `image_index`) is
    re-indexed."""
    n = len(batch["item_id"])
    size = math.ceil(n / parts)
    out = []
    for start in range(0, n, size):
        stop = min(start + size, n)
        part: dict[str, Any] = {}
        for key, value in batch.items():
            if key in ("all_pixel_values", "image_index"):
                continue
            part[key] = value[start:stop] if value is not None else None
        if "image_index" in batch:
            index = batch["image_index"]
            keep = (index >= start) & (index < stop)
            part["all_pixel_values"] = batch["all_pixel_values"][keep]
            part["image_index"] = index[keep] - start
        out.append(part)
    return out


def _rng_state(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], dev: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], dev)


def backward_in_parts(model: torch.nn.Module, batch: dict[str, Any], dev: torch.device, precision: str,
                      loss_fn: Callable[..., torch.Tensor], target: torch.Tensor, weight: torch.Tensor,
                      scaler: torch.amp.GradScaler, parts: int) -> torch.Tensor | None:
    """Accumulate into `.grad` the gradient of `loss_fn` over the whole batch, running the model on `parts`
    micro-batches; returns the loss, or None (no gradient written) when it is not finite."""
    micro = split_batch(batch, parts)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    states, preds = [], []
    with torch.no_grad():
        for part in micro:
            states.append(_rng_state(dev))
            with autocast(dev, precision):
                preds.append(forward_batch(model, part, dev).float())
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    end_state = _rng_state(dev)
    pred = torch.cat(preds).requires_grad_(True)
    loss = loss_fn(pred, target, weight)
    if not torch.isfinite(loss):
        return None
    (grad,) = torch.autograd.grad(scaler.scale(loss), pred)
    for part, state, g in zip(micro, states, grad.split([len(p["item_id"]) for p in micro]), strict=True):
        _set_rng_state(state, dev)
        with autocast(dev, precision):
            out = forward_batch(model, part, dev)
        out.float().backward(g)
    _set_rng_state(end_state, dev)
    return loss.detach()
