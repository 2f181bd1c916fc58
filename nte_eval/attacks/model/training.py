"""The parts model attacks are composed from: finding normalisation layers, recomputing BatchNorm statistics,
seeded batches, and a gradient loop that stops with ``Diverged`` on a non-finite loss. The model stays in eval mode
throughout (no dropout, fixed statistics during gradient steps), so an adapted model predicts each image the same in
any batch, and its seed fixes it bit for bit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from nte_eval.attacks.model.base import Diverged
from nte_eval.models.handle import ModelHandle

BatchNorms = (nn.modules.batchnorm._BatchNorm,)
Norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, BatchNorms) and m.track_running_stats]


def norm_affine(module: nn.Module) -> list[nn.Parameter]:
    """The affine parameters (scale and shift) of every normalisation layer: what Tent trains."""
    return [p for m in module.modules() if isinstance(m, Norms)
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)) if isinstance(p, nn.Parameter)]


def batches(count: int, size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over ``count`` items: in order, or shuffled by ``generator``."""
    order = torch.arange(count) if generator is None else torch.randperm(count, generator=generator)
    yield from order.split(size)


@torch.no_grad()
def recalibrate(handle: ModelHandle, images: torch.Tensor, size: int) -> None:
    """AdaBN: every BatchNorm layer's running mean and variance recomputed on ``images`` (the average over batches of
    ``size``, in order), the rest of the model unchanged."""
    layers = batch_norms(handle.module)
    if not layers:
        return
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    try:
        for idx in batches(len(images), size):
            handle.forward(handle.normalize(images[idx].to(handle.device)))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        handle.module.eval()


def descend(module: nn.Module, params: list[nn.Parameter], loss_of: Callable[[torch.Tensor, int], torch.Tensor],
            count: int, size: int, epochs: int, lr: float, generator: torch.Generator, what: str,
            on_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Adam on ``params`` (the only parameters of ``module`` given gradients) for ``epochs`` passes over ``count``
    items in seeded batches of ``size``; ``loss_of(idx, epoch)`` is a batch's loss; ``on_epoch(epoch)`` runs after
    each epoch. Returns each epoch's mean loss; Diverged names the epoch whose loss is not finite."""
    chosen = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.Adam(params, lr=lr)
    means = []
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for idx in batches(count, size, generator):
            loss = loss_of(idx, epoch)
            if not torch.isfinite(loss):
                raise Diverged(f"{what}: the loss became {float(loss)} in epoch {epoch + 1} of {epochs} (lr {lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        means.append(total / seen)
        if on_epoch is not None:
            on_epoch(epoch)
    return means


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The Shannon entropy (nats) of each row's softmax."""
    logp = logits.log_softmax(1)
    return -(logp.exp() * logp).sum(1)


@torch.no_grad()
def accuracy(handle: ModelHandle, images: torch.Tensor, labels: torch.Tensor, size: int) -> float:
    """The share of ``images`` the model labels right, in batches of ``size``."""
    right = sum(int((handle.forward(handle.normalize(images[i:i + size].to(handle.device))).argmax(1).cpu()
                     == labels[i:i + size]).sum()) for i in range(0, len(images), size))
    return right / max(len(images), 1)
