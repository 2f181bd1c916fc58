"""Knowledge 'method' (Kerckhoffs): the attacker knows the encoder, its public settings and the designated
architecture's geometry, holds public clean images and the released NTE corpus, but not the weights or the key.
``blind_subspace`` and ``blind_fill`` estimate the noise subspace from statistics (``estimate``) and delete or fill
it (``fill``)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.estimate import estimate_subspace
from nte_eval.attacks.subspace.fill import Subspace
from nte_eval.errors import NTEError


class _Blind(Attack):
    """Shared fit: estimate the noise subspace from the NTE corpus against public clean images. ``oracle``: the
    attack that does the same with the true subspace (the sanity checks compare the two)."""

    knowledge = "method"
    oracle = "oracle_fill"
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
    oracle = "oracle_projection"
    projection = True

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.project(x)


class BlindFill(_Blind):
    """Estimates the noise subspace as blind_subspace does and fills it with its conditional mean given the rest.

    The Gaussian prior comes from public clean images; filling restores the content that projection discards.
    """

    name = "blind_fill"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.fill(x)
