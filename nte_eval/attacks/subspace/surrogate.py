"""Knowledge 'surrogate': the attacker holds other models (never the designated one) and removes or fills their
low-sensitivity subspaces, hoping they overlap the designated model's."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Literal

import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.fill import Subspace
from nte_eval.attacks.subspace.model import model_subspace
from nte_eval.attacks.text import EmbeddingDecoder
from nte_eval.errors import NTEError, did_you_mean
from nte_eval.geometry.subspace import DEFAULT_SELECT

SWEEPS = 10  # alternating-projection sweeps when several surrogates are combined


class SurrogateProjection(Attack):
    """Removes (or fills) the low-sensitivity subspaces of surrogate models, or keeps only their sensitive ones.

    Each subspace is the one an NTE encoder with ``select`` and ``view`` (its ``mode``) would choose for that model.

    ``models``: surrogate names (empty: all). ``mode``: ``remove`` deletes the sum of the surrogates' subspaces
    (replaced by the public mean's), ``keep`` keeps the sum of their sensitive subspaces (deletes only what every
    surrogate is insensitive to), ``fill`` fills each surrogate's subspace in turn. With one surrogate ``remove``
    and ``keep`` coincide. Several subspaces are combined by alternating projections.

    On text (surrogate text models over the designated vocabulary), ``remove`` decodes each soft token to the stored
    entry nearest in the surrogates' embedding spaces (concatenated); ``select``/``view`` do not apply.
    """

    name = "surrogate_projection"
    projection = True
    knowledge = "surrogate"
    models: list[str] = []
    select: str = DEFAULT_SELECT
    view: Literal["auto", "patch", "operator"] = "auto"
    mode: Literal["remove", "keep", "fill"] = "remove"
    modalities = ("image", "text")

    def check_surrogates(self, names: Collection[str]) -> None:
        for name in self.models:
            if name not in names:
                raise NTEError(f"surrogate_projection.models: no surrogate {name!r}; the surrogates are "
                               f"{sorted(names)}.{did_you_mean(name, names)}")

    def fit(self, context: AttackContext) -> SurrogateProjection:
        super().fit(context)
        held = self.context.surrogates
        self.check_surrogates(held)
        names = self.models or sorted(held)
        self.decoder: EmbeddingDecoder | None = None
        if all(held[n].modality == "text" for n in names):
            if self.mode != "remove":
                raise NTEError(f"surrogate_projection: mode {self.mode!r} has no text form; use mode 'remove' "
                               "(decoding in the surrogates' embedding spaces).")
            self.decoder = EmbeddingDecoder([held[n].embedding for n in names])
            return self
        public = self.context.public.images
        self.subspaces: list[Subspace] = [model_subspace(held[n], self.select, self.view, "correct", public)
                                          for n in names]
        return self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder is not None:
            return self.decoder.project(x)
        y = x.double()
        if self.mode == "fill":
            for sub in self.subspaces:
                y = sub.fill(y)
            return y.to(x.dtype)
        if len(self.subspaces) == 1:
            return self.subspaces[0].project(x)
        if self.mode == "remove":  # onto the intersection of the subspaces' complements
            return alternate(y, [sub.project for sub in self.subspaces]).to(x.dtype)
        mean = self.subspaces[0].prior.mean  # every prior holds the public mean image: all maps are affine about it
        inside = alternate(y, [lambda v, s=sub: v - s.project(v) + mean for sub in self.subspaces])
        return (y - inside + mean).to(x.dtype)  # keep: remove only the intersection of the subspaces


def alternate(y: torch.Tensor, projections: list[Callable[[torch.Tensor], torch.Tensor]],
              tol: float = 1e-6) -> torch.Tensor:
    """Alternating projections (von Neumann): converge to the projection onto the intersection of their ranges."""
    for _ in range(SWEEPS):
        before = y
        for project in projections:
            y = project(y)
        if (y - before).norm() <= tol * y.norm():
            break
    return y
