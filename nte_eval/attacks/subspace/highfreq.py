"""``highfreq_projection`` (knowledge 'method'): a generic attack that needs no NTE, only public clean images and
the designated kernel size; it keeps the principal directions of clean patches and drops the rest."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.fill import apply_blocks, projection_map
from nte_eval.attacks.subspace.prior import patch_moments
from nte_eval.attacks.subspace.view import patch_view


class HighfreqProjection(Attack):
    """Keeps the principal directions of public clean patches holding ``energy`` of their variance; no NTE needed.

    Or the top ``components``. The low-variance rest is replaced with the public mean's.
    """

    name = "highfreq_projection"
    projection = True
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
