"""Knowledge 'oracle': the designated model's weights are known, so its exact low-sensitivity subspace is too.
These attacks are the upper bounds of subspace reconstruction: if ``oracle_fill`` cannot restore the unauthorized
models, no attacker working on the subspace can."""

from __future__ import annotations

import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.fill import Subspace
from nte_eval.attacks.subspace.model import model_subspace
from nte_eval.attacks.text import EmbeddingDecoder
from nte_eval.geometry.subspace import DEFAULT_SELECT


def designated_subspace(context: AttackContext) -> Subspace | EmbeddingDecoder:
    """The designated model's subspace as the encoder selected it (its public settings). Baselines (no view) get
    the subspace of a default NTE encoder on the designated model. A text model: decoding with its embeddings."""
    if context.designated.modality == "text":
        return EmbeddingDecoder([context.designated.embedding])
    settings = context.encoder
    params = settings.get("params", {}) if settings.get("view") else {}
    return model_subspace(context.designated, params.get("select", DEFAULT_SELECT), settings.get("view") or "auto",
                         params.get("border", "correct"), context.public.images)


class _Oracle(Attack):
    """Shared fit: the designated model's subspace, exactly as the encoder selected it."""

    knowledge = "oracle"
    modalities = ("image", "text")

    def fit(self, context: AttackContext) -> _Oracle:
        super().fit(context)
        self.subspace = designated_subspace(self.context)
        return self


class OracleProjection(_Oracle):
    """Replaces the designated model's own low-sensitivity subspace with the public mean's (exact removal); on text,
    decodes each soft token to the stored entry nearest in the designated embedding space (exact recovery)."""

    name = "oracle_projection"
    projection = True

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.project(x)


class OracleFill(_Oracle):
    """Fills the designated model's own subspace with its Gaussian conditional mean given the rest of the image.

    The prior comes from public clean images; in the operator view it is stationary (per Fourier block) and, at a
    zero-padded border, the subspace is the encoder's border-corrected one, built exactly in image space.
    """

    name = "oracle_fill"
    modalities = ("image",)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.subspace.fill(x)
