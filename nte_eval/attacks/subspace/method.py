"""Knowledge 'method' (Kerckhoffs): the attacker knows the encoder, its public settings and the designated
architecture's geometry, holds public clean images and the released NTE corpus, but not the weights or the key.
It estimates the noise subspace from statistics and deletes or fills it (see ``views`` for the machinery)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.views import (
    Subspace,
    View,
    apply_blocks,
    estimate_subspace,
    moments,
    noise_directions,
    patch_moments,
    patch_view,
    projection_map,
    ridged,
)
from nte_eval.errors import NTEError


class _Blind(Attack):
    """Shared fit: estimate the noise subspace from the NTE corpus against public clean images."""

    knowledge = "method"
    rank: Annotated[int | None, Field(ge=0)] = None
    n_ntes: Annotated[int | None, Field(ge=2)] = None

    def fit(self, context: AttackContext) -> _Blind:
        super().fit(context)
        ntes = self.context.ntes[:self.n_ntes]
        settings = self.context.encoder
        if tuple(ntes.shape[1:]) != tuple(settings["input_size"]):
            raise NTEError(f"attack {self.name!r}: the NTEs have shape {tuple(ntes.shape[1:])}, the encoder's input "
                           f"size is {tuple(settings['input_size'])}.")
        self.subspace: Subspace = estimate_subspace(settings, self.context.public.images, ntes, self.rank)
        return self


class BlindSubspace(_Blind):
    """Estimates the noise subspace from NTE vs clean statistics and replaces it with the public mean's.

    The estimate: top eigenvectors of the NTE second moments minus the public clean ones, whitened by the clean ones.

    ``rank``: the noise dimension per patch (per Fourier block in the operator view, or per unfolded patch where
    the designated layer has an exact null space); None or 0: estimated from the largest eigenvalue gap (or, for
    that null space, from the public number of output channels). ``n_ntes``: how many NTEs to use (None: all).
    """

    name = "blind_subspace"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.project(x)


class BlindFill(_Blind):
    """Estimates the noise subspace as blind_subspace does and fills it with its conditional mean given the rest.

    The Gaussian prior comes from public clean images; filling restores the content that projection discards.
    """

    name = "blind_fill"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.fill(x)


class HighfreqProjection(Attack):
    """Keeps the principal directions of public clean patches holding ``energy`` of their variance; no NTE needed.

    Or the top ``components``. The low-variance rest is replaced with the public mean's.
    """

    name = "highfreq_projection"
    knowledge = "method"
    strength = ("energy", -1)
    energy: Annotated[float, Field(gt=0, lt=1)] = 0.99
    components: Annotated[int | None, Field(ge=1)] = None

    def fit(self, context: AttackContext) -> HighfreqProjection:
        super().fit(context)
        settings, public = self.context.encoder, self.context.public.images
        self.view = patch_view(tuple(settings["input_size"]), tuple(settings["first_layer"]["kernel"]))
        self.mean = public.double().mean(0, keepdim=True)
        if public.shape[0] * self.view.tiles >= self.view.n:
            lam, vec = torch.linalg.eigh(patch_moments(self.view.patches, public, self.mean)[0, 0])
            lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
        else:  # fewer patches than dimensions (a Linear layer): principal directions from the patches' Gram matrix
            p = self.view.patches(public - self.mean)
            lam, u = torch.linalg.eigh(p @ p.T)
            lam, u = lam.flip(0).clamp_min(0), u.flip(1)
            vec = p.T @ u / lam.sqrt().clamp_min(1e-30)
        share = lam.cumsum(0) / lam.sum().clamp_min(1e-30)
        keep = self.components or int((share < self.energy).sum()) + 1
        self.map = projection_map(visible=vec[:, :min(keep, vec.shape[1])][None, None])
        return self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return apply_blocks(self.view, self.map, x, self.mean)


class TileAverage(Attack):
    """Against tiled noise (one vector in every patch): estimates the repeated pattern per image and removes it.

    The pattern: the mean over the image's tiles of (tile - public mean tile at that position).

    Tiles are the designated layer's stride (the period of tiled noise; the kernel for patchify layers).
    ``shrink``: weigh the estimate per direction by how much of its variance over the NTE corpus is noise rather
    than the clean images' own tile averages (a Wiener weight, from public images and the corpus), so that the
    images' own content is kept. With a single tile (a Linear layer) there is nothing to average: images pass.
    """

    name = "tile_average"
    knowledge = "method"
    shrink: bool = True

    def fit(self, context: AttackContext) -> TileAverage:
        super().fit(context)
        settings = self.context.encoder
        self.view = View(tuple(settings["input_size"]), tuple(settings["first_layer"]["stride"]))
        self.mean = self.context.public.images.double().mean(0, keepdim=True)
        self.weight = None
        if self.shrink and self.view.tiles > 1:
            public, ntes = self.context.public.images, self.context.ntes
            self.view.check(ntes)
            clean = moments(self.pattern(public), public.shape[0])[None, None]
            lam, dirs = noise_directions(clean, self.pattern(ntes)[None, None], ntes.shape[0])
            gain = ((lam - 1) / lam.clamp_min(1e-30)).clamp(0, 1)  # noise share of each direction's variance
            dual = torch.cholesky_solve(dirs, torch.linalg.cholesky(ridged(clean)))
            self.weight = ((dirs * gain[..., None, :]) @ dual.mH)[0, 0]
        return self

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Per image, the mean over its tiles of the deviation from the public mean image: (B, n)."""
        return self.view.patches(x.double() - self.mean).view(x.shape[0], -1, self.view.n).mean(1)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.view.check(x)
        x = x.to(self.mean.device)  # fitted on the context's (CPU) tensors
        if self.view.tiles == 1:
            return x
        pattern = self.pattern(x) if self.weight is None else self.pattern(x) @ self.weight.T
        (th, tw), (gh, gw), c = self.view.tile, self.view.grid, x.shape[1]
        tile = pattern.view(-1, 1, 1, c, th, tw).permute(0, 3, 1, 4, 2, 5).expand(-1, c, gh, th, gw, tw)
        out = self.view.pad(x.double()) - tile.reshape(x.shape[0], c, gh * th, gw * tw)
        return out[..., :x.shape[2], :x.shape[3]].to(x.dtype)
