"""Block views of images, the common ground of the subspace attacks.

Images are split into non-overlapping tiles (th, tw); the rfft2 over the tile grid of each of the
n = C*th*tw polyphase components gives, per frequency, a complex vector of n entries (``polyphase_rfft``).
- patch view: tiles of the first layer's kernel (a ViT/ConvNeXt patchify layer; a Linear first layer is one tile,
  the whole image). A per-patch subspace acts identically at every frequency, so patches and blocks are two
  descriptions of one thing. A layer whose kernel does not tile the image (an overlapping stem, a baseline
  encoder's designated ResNet) gets kernel-sized tiles of the image padded with its edge values, cut back after.
- operator view: tiles of the stride. A strided convolution with circular padding is block-diagonal over the
  frequencies, so its low-sensitivity subspace is one subspace per frequency (``OperatorSubspace``).
- whole-image view: one tile, the image itself; used for the exact subspaces of zero-padded operators, which are
  not per-frequency (the border couples frequencies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nte_eval.errors import NTEError
from nte_eval.geometry.conv import polyphase_irfft, polyphase_rfft

MAX_DIM = 16384  # largest tile dimension n the dense covariances accept


@dataclass(frozen=True)
class View:
    """Images (C, H, W) <-> per-frequency polyphase blocks with step ``tile`` (see the module docstring)."""

    shape: tuple[int, int, int]
    tile: tuple[int, int]

    def __post_init__(self) -> None:
        if self.n > MAX_DIM:
            raise NTEError(f"a {self.tile[0]}x{self.tile[1]} tile of {self.shape[0]} channels has n = {self.n} "
                           f"entries, more than the {MAX_DIM} a dense covariance allows: subspace attacks cannot "
                           "handle this first layer at this input size.")

    @property
    def padded(self) -> tuple[int, int, int]:
        c, h, w = self.shape
        th, tw = self.tile
        return (c, -(-h // th) * th, -(-w // tw) * tw)

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = self.padded
        return (h // self.tile[0], w // self.tile[1])

    @property
    def n(self) -> int:
        return self.shape[0] * self.tile[0] * self.tile[1]

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def frequencies(self) -> int:
        return self.grid[0] * (self.grid[1] // 2 + 1)

    def check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise NTEError(f"this attack was fitted for images {self.shape} (the encoder's input size), got "
                           f"{tuple(x.shape[1:])}; evaluate images of the designated model's input size.")

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w = self.padded
        if (h, w) == tuple(x.shape[-2:]):
            return x
        return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (gh, gw//2+1, B, n) complex128."""
        return polyphase_rfft(self.pad(x.double()), self.tile)

    def from_blocks(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        return polyphase_irfft(z, self.tile, self.padded)[..., :h, :w]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B * tiles, n) float64 tiles in (C, th, tw) order."""
        x = self.pad(x.double())
        (th, tw), (gh, gw), c = self.tile, self.grid, x.shape[1]
        return x.reshape(-1, c, gh, th, gw, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, self.n)


def patch_view(shape: tuple[int, ...], kernel: tuple[int, ...]) -> View:
    """Tiles of the first layer's kernel."""
    return View(tuple(shape), tuple(kernel))


def operator_view(shape: tuple[int, ...], stride: tuple[int, ...]) -> View:
    """Tiles of the first layer's stride; the image must be a whole number of them."""
    _, h, w = shape
    if h % stride[0] or w % stride[1]:
        raise NTEError(f"operator view: the image size {h}x{w} must be a multiple of the stride {tuple(stride)}.")
    return View(tuple(shape), tuple(stride))


def whole_view(shape: tuple[int, ...]) -> View:
    """One tile: the image itself."""
    return View(tuple(shape), tuple(shape[1:]))


def rows(z: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Apply per-frequency matrices (..., n, n') to row vectors z (..., B, n'): each row v becomes mat @ v."""
    return z @ mat.to(z.dtype).transpose(-1, -2)
