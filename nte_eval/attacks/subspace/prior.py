"""The public-image prior of the subspace attacks: what clean images look like in a view.

From public clean images: the mean image and, per frequency, the Hermitian second moment of their mean-free
blocks (a Gaussian prior that is stationary over tile positions and uses the whole image as context); when that
would be too large (frequencies times n^2), the per-tile covariance shared by every frequency.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch

from nte_eval.attacks.subspace.view import View, rows, whole_view

PER_FREQUENCY_LIMIT = 2**23  # frequencies * n^2 entries up to which the prior is kept per frequency
RIDGE = 1e-4  # relative ridge on covariances (times their mean eigenvalue)


def moments(samples: torch.Tensor, count: int) -> torch.Tensor:
    """sum of z z^H over the sample rows z of (..., S, n), divided by ``count`` (the number of images)."""
    return samples.transpose(-1, -2) @ samples.conj() / count


def block_moments(view: View, x: torch.Tensor, mean: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-frequency second moments (gh, gw', n, n) of the blocks of x - mean, per image."""
    total = sum(moments(view.to_blocks(x[i:i + chunk].to(mean) - mean), 1) for i in range(0, x.shape[0], chunk))
    return total / x.shape[0]


def patch_moments(patches: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mean: torch.Tensor,
                  chunk: int = 256) -> torch.Tensor:
    """Second moment (1, 1, n, n) of the patches of x - mean, per image."""
    total = sum(moments(patches(x[i:i + chunk].to(mean) - mean), 1) for i in range(0, x.shape[0], chunk))
    return (total / x.shape[0])[None, None]


def ridged(cov: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """cov + a white floor: ``ridge`` times the mean variance over all blocks (a pixel-noise floor, not per block,
    so that low-variance frequencies cannot make the fill amplify small mismatches)."""
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).real.mean().clamp_min(1e-30)
    return cov + ridge * scale * torch.eye(cov.shape[-1], dtype=cov.dtype)


class Prior:
    """Public clean images' statistics in a view, each computed when first needed: the mean image (1, C, H, W),
    the per-tile covariance ``tile_cov`` (1, 1, n, n) and ``cov``, the second moments the fill uses: per frequency
    (gh, gw', n, n) where small enough (frequencies * n^2 <= PER_FREQUENCY_LIMIT) or asked for, else ``tile_cov``.
    ``times`` / ``solve`` apply the ridged ``cov`` or its inverse to basis columns.

    ``source``: the per-frequency prior of another view whose (stationary) Gaussian this one restates in the
    whole-image view (see ``whole``); it is applied through the source's blocks, never as a dense matrix.
    """

    def __init__(self, view: View, images: torch.Tensor, per_frequency: bool | None = None,
                 source: Prior | None = None):
        self.view, self.images, self.source = view, images, source
        self.mean = images.double().mean(0, keepdim=True) if source is None else source.mean
        limit = view.frequencies * view.n**2 <= PER_FREQUENCY_LIMIT
        self.per_frequency = limit if per_frequency is None else per_frequency

    @cached_property
    def tile_cov(self) -> torch.Tensor:
        return patch_moments(self.view.patches, self.images, self.mean)

    @cached_property
    def cov(self) -> torch.Tensor:
        return block_moments(self.view, self.images, self.mean) if self.per_frequency else self.tile_cov

    @cached_property
    def _ridged(self) -> torch.Tensor:
        return ridged(self.cov)

    @cached_property
    def _chol(self) -> torch.Tensor:
        return torch.linalg.cholesky(self._ridged)

    def whole(self) -> Prior:
        """The same Gaussian in ``whole_view`` (one block: the image), for exact zero-padded subspaces."""
        return Prior(whole_view(self.view.shape), self.images, False, source=self)

    def times(self, u: torch.Tensor) -> torch.Tensor:
        """S u for basis columns u (..., n, k), S the ridged second moments."""
        return self._through(u, self.source._ridged) if self.source is not None else self._ridged @ u.to(
            self._ridged.dtype)

    def solve(self, u: torch.Tensor) -> torch.Tensor:
        """S^-1 u for basis columns u (..., n, k)."""
        if self.source is not None:
            return self._through(u, torch.cholesky_inverse(self.source._chol))
        u = u.to(self._chol.dtype)
        return torch.cholesky_solve(u.expand(*torch.broadcast_shapes(u.shape[:-2], self._chol.shape[:-2]),
                                             *u.shape[-2:]), self._chol)

    def _through(self, u: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
        """Whole-image columns (1, 1, N, k) -> images -> per-frequency ``mats`` of the source view -> columns."""
        src = self.source.view
        images = u[0, 0].T.reshape(-1, *src.shape)
        return src.from_blocks(rows(src.to_blocks(images), mats)).flatten(1).T[None, None]
