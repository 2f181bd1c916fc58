"""The first linear operator's geometry (a convolution on normalised pixels) and what subspace code reads of a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class FirstLayer:
    """The first linear operator as a convolution on normalised pixels (a Linear is a full-image kernel)."""

    path: str
    kind: str  # "conv2d" or "linear"
    weight: torch.Tensor  # (m, C, kh, kw), detached
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def kernel(self) -> tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3])

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def patch_dim(self) -> int:
        """d = C * kh * kw, the number of pixels one output position sees."""
        return self.weight[0].numel()

    @property
    def non_overlapping(self) -> bool:
        return self.stride == self.kernel and self.padding == (0, 0)

    def geometry(self) -> dict[str, Any]:
        return {"layer": self.path, "kind": self.kind, "kernel": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding), "in_channels": self.weight.shape[1], "out_channels": self.out_channels}


class HasFirstLayer(Protocol):
    """What the geometry needs of a model: its first layer, normalisation std, input size and a memo for derived
    quantities (``nte_eval.models.handle.ModelHandle`` is one)."""

    spec: str
    first: FirstLayer
    std: torch.Tensor
    input_size: tuple[int, int, int]
    memo: dict[Any, Any]

    def pixel_operator(self, dtype: torch.dtype = torch.float64) -> torch.Tensor: ...


@dataclass(frozen=True)
class PixelLayer:
    """A first layer whose kernel already acts on pixels (unit std) on images of ``input_size``: a folded W D^-1 or a
    layer an attacker fitted from data. What ``PixelConv`` reads of a model, without a model."""

    first: FirstLayer
    input_size: tuple[int, int, int]

    @property
    def std(self) -> torch.Tensor:
        return torch.ones(1, self.input_size[0], 1, 1, dtype=self.first.weight.dtype)
