"""The parts model attacks are composed from: their parameters' types, finding normalisation layers, recomputing
BatchNorm statistics, seeded batches, and a gradient loop that stops with ``Diverged`` on a non-finite loss. The
model stays in eval mode throughout (no dropout, fixed statistics during gradient steps), so an adapted model
predicts each image the same in any batch, and its seed fixes it bit for bit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from nte_eval.attacks.model.base import Diverged
from nte_eval.models.handle import ModelHandle

Epochs = Annotated[int, Field(ge=1, le=1000)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
BatchSize = Annotated[int, Field(ge=2, le=4096)]

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
    """Index batches over ``count`` items, in order or shuffled by ``generator``: as many as batches of ``size`` need,
    of near-equal sizes (no short last batch: BatchNorm needs two samples, and a tail must not weigh as a batch)."""
    order = torch.arange(count) if generator is None else torch.randperm(count, generator=generator)
    yield from order.tensor_split(max(1, -(-count // size)))


@torch.no_grad()
def recalibrate(handle: ModelHandle, images: torch.Tensor, size: int) -> None:
    """AdaBN: every BatchNorm layer's running mean and variance set to the moments of its input over all of
    ``images`` (pooled exactly over batches of about ``size``, each normalised by its own statistics as in training),
    the rest of the model unchanged."""
    layers = batch_norms(handle.module)
    if not layers:
        return
    sums: dict[nn.Module, list] = {m: [0, 0.0, 0.0] for m in layers}  # samples, sum, sum of squares per channel

    def gather(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double().transpose(0, 1).flatten(1)  # channels first
        total = sums[layer]
        total[0] += x.shape[1]
        total[1] = total[1] + x.sum(1)
        total[2] = total[2] + x.square().sum(1)

    hooks = [m.register_forward_pre_hook(gather) for m in layers]
    for m in layers:
        m.train()
    try:
        for idx in batches(len(images), size):
            handle.logits(images[idx].to(handle.device))
    finally:
        for hook in hooks:
            hook.remove()
        handle.module.eval()
    for m, (n, total, squares) in sums.items():
        mean = total / n
        m.running_mean.copy_(mean)
        m.running_var.copy_((squares / n - mean.square()).clamp_min(0) * n / max(n - 1, 1))  # unbiased, as BatchNorm


def descend(module: nn.Module, params: list[nn.Parameter], loss_of: Callable[[torch.Tensor, int], torch.Tensor],
            count: int, size: int, epochs: int, lr: float, generator: torch.Generator, what: str,
            on_epoch: Callable[[int], None] | None = None) -> None:
    """Adam on ``params`` (the only parameters of ``module`` given gradients) for ``epochs`` passes over ``count``
    items in seeded batches of ``size``; ``loss_of(idx, epoch)`` is a batch's loss; ``on_epoch(epoch)`` runs after
    each epoch. Diverged names the epoch whose loss is not finite."""
    chosen = {id(p) for p in params}
    for p in module.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.Adam(params, lr=lr)
    for epoch in range(epochs):
        for idx in batches(count, size, generator):
            loss = loss_of(idx, epoch)
            if not torch.isfinite(loss):
                raise Diverged(f"{what}: the loss became {float(loss.detach())} in epoch {epoch + 1} of {epochs} "
                               f"(lr {lr:g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """The Shannon entropy (nats) of each row's softmax."""
    logp = logits.log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def logits_of(handle: ModelHandle, images: torch.Tensor, size: int) -> torch.Tensor:
    """The model's logits (on the CPU) for ``images``, in batches of ``size``."""
    return torch.cat([handle.logits(images[i:i + size].to(handle.device)).cpu() for i in range(0, len(images), size)])


def accuracy(handle: ModelHandle, images: torch.Tensor, labels: torch.Tensor, size: int) -> float:
    """The share of ``images`` the model labels right, in batches of ``size``."""
    return float((logits_of(handle, images, size).argmax(1) == labels).double().mean()) if len(images) else 0.0
