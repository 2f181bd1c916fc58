"""Batch-by-batch evaluation on the run's device: logits, first-layer responses, encoding and attacks."""

from __future__ import annotations

from typing import Any

import torch

from nte_eval.attacks import Attack
from nte_eval.encoders import Encoder
from nte_eval.models.handle import ModelHandle


def batched_logits(handle: ModelHandle, x: torch.Tensor, batch: int, device: str, start: int = 0) -> torch.Tensor:
    """Logits of every sample, batch by batch; each batch with its positions in the data (a VLM's questions), the
    first sample of ``x`` being at position ``start``."""
    return torch.cat([handle.logits(x[i:i + batch].to(device), list(range(start + i, start + min(i + batch, len(x)))))
                      .cpu() for i in range(0, len(x), batch)])


def first_layer_responses(handle: ModelHandle, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([handle.first_layer_response(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def first_layer_norms(handle: ModelHandle, x: torch.Tensor, batch: int, device: str,
                      reference: torch.Tensor | None = None) -> torch.Tensor:
    """||A(x)|| per sample, or ||A(x) - A(reference)|| with a ``reference``; batch by batch, so that no layer
    response of more than one batch is held (a ResNet stem's is 200 KB per image at 224 px)."""
    norms = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device)
        a = (handle.first_layer_response(xb) if reference is None
             else handle.first_layer_change(xb, reference[i:i + batch].to(device)))
        norms.append(a.flatten(1).norm(dim=1).cpu())
    return torch.cat(norms)


def encode_all(encoder: Encoder, x: torch.Tensor, key: int | str, batch: int, device: str | torch.device,
               index: list[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The encoder's output for every image (on the CPU), batch by batch with each image's own index (its position in
    the data: ``index``, default 0, 1, ...), and the encoder's info record."""
    encoder.fit()
    index = list(range(len(x))) if index is None else index
    images = []
    for i in range(0, len(x), batch):
        res = encoder.encode(x[i:i + batch].to(device), key=key, index=index[i:i + batch], record=False)
        images.append(res.images.cpu())
    return torch.cat(images), res.info


def apply_attack(attack: Attack, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([attack(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])
