"""Baselines at the same pixel-space PSNR as the NTE: Gaussian noise and an adversarial example (PGD-L2)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from nte_eval.encoders.base import PSNR, Encoder, EncodeResult, check_box, finish, keyed_normal, scale_to_psnr
from nte_eval.metrics import noise_norm_for_psnr
from nte_eval.models.handle import ModelHandle


class GaussianEncoder(Encoder):
    """i.i.d. Gaussian pixel noise scaled to exactly the target pixel-space PSNR (before any box)."""

    name = "gaussian"
    psnr: PSNR = 30.0
    box: Literal["none", "clip"] = "none"
    quantize: bool = False

    def __init__(self, handle: ModelHandle, **params: Any):
        super().__init__(handle, **params)
        check_box(self.box, self.quantize)

    def encode(self, x: torch.Tensor, key: int | str, index: torch.Tensor | list[int] | None = None,
               labels: torch.Tensor | None = None, record: bool = True) -> EncodeResult:
        self.handle.check_input(x)
        delta = scale_to_psnr(keyed_normal(tuple(x.shape[1:]), key, self.indices(x, index), x.device, x.dtype),
                              self.psnr)
        out = x + delta if self.box == "none" else (x + delta).clamp(0, 1)
        return finish(x, out, self.handle, self.quantize, {"mode": "gaussian"}, record)


class _PixelModel(nn.Module):
    """Adapter so torchattacks sees a model on [0, 1] pixels (normalisation inside, as it expects)."""

    def __init__(self, handle: ModelHandle, index: list[int]):
        super().__init__()
        self.inner, self.handle, self.index = handle.module, handle, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.handle.forward_grad(x, self.index)


class AdversarialEncoder(Encoder):
    """torchattacks PGD-L2 on the designated model, its L2 budget set to the target pixel-space PSNR.

    It attacks the designated model's clean predictions (no labels needed). PGD keeps images in [0, 1], so these
    are always boxed; ``box`` only matters for the quantize option.
    """

    name = "adversarial"
    psnr: PSNR = 30.0
    box: Literal["clip"] = "clip"
    quantize: bool = False
    steps: Annotated[int, Field(ge=1)] = 20

    def encode(self, x: torch.Tensor, key: int | str, index: torch.Tensor | list[int] | None = None,
               labels: torch.Tensor | None = None, record: bool = True) -> EncodeResult:
        import torchattacks

        idx = self.indices(x, index)
        self.handle.check_input(x)
        eps = noise_norm_for_psnr(self.psnr, x[0].numel())
        target = self.handle.logits(x, idx).argmax(1) if labels is None else labels.to(x.device)
        attack = torchattacks.PGDL2(_PixelModel(self.handle, idx), eps=eps, alpha=2.5 * eps / self.steps,
                                    steps=self.steps, random_start=False)
        out = attack(x, target).detach()
        return finish(x, out, self.handle, self.quantize, {"mode": "pgd_l2", "eps_l2": eps}, record)
