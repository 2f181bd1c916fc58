"""Model attacks on the normalisation layers, with the released NTEs alone (no labels): ``bn_adapt`` (AdaBN) and
``tent`` (entropy minimisation, Wang et al., ICLR 2021)."""

from __future__ import annotations

import torch

from nte_eval.attacks.model.base import ModelAttack, NotApplicable
from nte_eval.attacks.model.training import (
    BatchSize,
    Epochs,
    LearningRate,
    batch_norms,
    descend,
    entropy,
    norm_affine,
    recalibrate,
)
from nte_eval.models.handle import ModelHandle


class BNAdapt(ModelAttack):
    """AdaBN: recompute every BatchNorm layer's statistics on the released NTEs; no labels, no training.

    Assumes the attacker holds the released corpus (knowledge 'method' is the level that hands it out; nothing else
    of that level is used) and a model with BatchNorm layers; any other model is "not applicable". ``batch_size``:
    the batches the statistics are averaged over."""

    name = "bn_adapt"
    batch_size: BatchSize = 64

    def adapt(self, handle: ModelHandle, generator: torch.Generator) -> None:
        if not batch_norms(handle.module):
            raise NotApplicable(f"{handle.spec} has no BatchNorm layer with running statistics")
        recalibrate(handle, self.context.ntes, self.batch_size)


class Tent(ModelAttack):
    """Tent: minimise the entropy of the model's predictions on the released NTEs by training only the affine
    parameters (scale, shift) of its normalisation layers (BatchNorm, LayerNorm, GroupNorm), in seeded batches.

    Assumes the attacker holds the released corpus (knowledge 'method' hands it out) and a model with normalisation
    layers; any other model is "not applicable". A BatchNorm model's statistics are first recomputed on the corpus
    (as ``bn_adapt``) and kept fixed during the gradient steps, then recomputed again, so that a prediction does not
    depend on the batch it is evaluated in (the original adapts them on each test batch)."""

    name = "tent"
    epochs: Epochs = 5
    lr: LearningRate = 1e-3
    batch_size: BatchSize = 64

    def adapt(self, handle: ModelHandle, generator: torch.Generator) -> None:
        params = norm_affine(handle.module)
        if not params:
            raise NotApplicable(f"{handle.spec} has no normalisation layer with affine parameters")
        ntes, device = self.context.ntes, handle.device
        recalibrate(handle, ntes, self.batch_size)
        descend(handle.module, params, lambda idx, _: entropy(handle.forward_grad(ntes[idx].to(device))).mean(),
                len(ntes), self.batch_size, self.epochs, self.lr, generator, f"tent on {handle.spec}")
        recalibrate(handle, ntes, self.batch_size)
