"""Model attacks that fine-tune the unauthorized model: ``noise_finetune`` (public labelled images plus noise of
the NTEs' kind) and ``self_train`` (the released NTEs, pseudo-labelled by the model itself)."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.model.base import ModelAttack, NotApplicable
from nte_eval.attacks.model.training import (
    BatchSize,
    Epochs,
    LearningRate,
    accuracy,
    descend,
    entropy,
    logits_of,
    recalibrate,
)
from nte_eval.attacks.subspace.estimate import estimate_subspace
from nte_eval.encoders import ENCODERS
from nte_eval.encoders.base import scale_to_psnr
from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle


class NoiseFinetune(ModelAttack):
    """Fine-tune the unauthorized model on the public labelled images with noise of the NTEs' kind added, fresh
    noise each epoch: the model learns to ignore that noise.

    ``subspace: blind`` (knowledge 'method'): the noise lies in the subspace estimated from the released corpus as
    ``blind_fill`` estimates it (white noise projected on it, per patch or block, at ``psnr``). ``subspace: oracle``
    (knowledge 'oracle', the upper bound): the noise is the encoder's own, made with the designated model and the
    encoder's public settings under the attacker's keys. ``psnr``: the noise's pixel PSNR (None: the encoder's).
    ``layers``: train the first layer only, or all. ``holdout``: the share of the public images kept out of training,
    with noise of their own, on which the attacker (who has their labels) keeps the best epoch, the unadapted model
    included (0: the last epoch). Needs labelled public images in the model's classes; BatchNorm statistics are
    recomputed on the noisy images each epoch."""

    name = "noise_finetune"
    subspace: Literal["blind", "oracle"] = "blind"
    epochs: Epochs = 5
    lr: LearningRate = 1e-3
    layers: Literal["first", "all"] = "all"
    psnr: Annotated[float | None, Field(ge=-20, le=100)] = None
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    batch_size: BatchSize = 64

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.knowledge = "oracle" if self.subspace == "oracle" else "method"

    def fit(self, context: AttackContext) -> NoiseFinetune:
        super().fit(context)
        self.unusable: str | None = None
        public, settings = self.context.public, self.context.encoder
        psnr = self.psnr if self.psnr is not None else settings["params"].get("psnr")
        if public.label_free:
            self.unusable = "the public images have no labels to fine-tune on"
        elif psnr is None:
            self.unusable = f"the encoder {settings['type']!r} states no PSNR; set noise_finetune's psnr"
        else:
            try:
                self._noise_maker(settings, float(psnr))
            except NTEError as e:
                self.unusable = f"no noise of the NTEs' kind can be made here: {e}"
        return self

    def _noise_maker(self, settings: dict[str, Any], psnr: float) -> None:
        public = self.context.public.images
        if self.subspace == "oracle":
            params = {**settings["params"], **({"psnr": psnr} if "psnr" in settings["params"] else {})}
            encoder = ENCODERS.get(settings["type"])(self.context.designated, **params).fit()
            key = f"noise_finetune/{self.context.seed}"
            self.noisy = lambda epoch: torch.cat([encoder.encode(
                public[i:i + self.batch_size].to(self.context.device), key=f"{key}/{epoch}",
                index=list(range(i, min(i + self.batch_size, len(public)))), record=False).images.cpu()
                for i in range(0, len(public), self.batch_size)])
            return
        subspace = estimate_subspace(settings, public, self.context.ntes, None)

        def noisy(epoch: int) -> torch.Tensor:
            gen = torch.Generator().manual_seed(int(self.context.seed) * 1_000_003 + epoch)
            white = torch.randn(public.shape, generator=gen)
            hidden = white - (subspace.project(public + white) - subspace.project(public))  # its part in the subspace
            return public + scale_to_psnr(hidden, psnr)
        self.noisy = noisy

    def adapt(self, handle: ModelHandle, generator: torch.Generator) -> None:
        if self.unusable:
            raise NotApplicable(self.unusable)
        public, labels = self.context.public.images, self.context.public.labels
        classes = handle.num_classes or int(handle.logits(public[:1].to(handle.device)).shape[1])
        if int(labels.min()) < 0 or int(labels.max()) >= classes:
            raise NotApplicable(f"the public labels span {int(labels.min())}..{int(labels.max())}, not {handle.spec}'s "
                                f"{classes} classes (or some public images have no label)")
        order = torch.randperm(len(labels), generator=generator)
        held, train = order[:round(len(labels) * self.holdout)], order[round(len(labels) * self.holdout):]
        if len(train) < 2:
            raise NotApplicable(f"{len(labels)} public images leave {len(train)} to train on after the holdout")
        check = self.noisy(self.epochs)[held]  # noise no training epoch draws
        module = handle.module
        best = (accuracy(handle, check, labels[held], self.batch_size), copy.deepcopy(module.state_dict()))
        made: dict[int, torch.Tensor] = {}

        def loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
            if epoch not in made:
                made.clear()
                made[epoch] = self.noisy(epoch)
                recalibrate(handle, made[epoch], self.batch_size)
            x = made[epoch][train[idx]].to(handle.device)
            return F.cross_entropy(handle.forward_grad(x), labels[train[idx]].to(handle.device))

        def select(epoch: int) -> None:
            nonlocal best
            recalibrate(handle, made[epoch], self.batch_size)
            score = accuracy(handle, check, labels[held], self.batch_size) if len(held) else 1.0
            if score >= best[0] or not len(held):  # ties: the later epoch
                best = (score, copy.deepcopy(module.state_dict()))

        params = list((module.get_submodule(handle.first.path) if self.layers == "first" else module).parameters())
        descend(module, params, loss, len(train), self.batch_size, self.epochs, self.lr, generator,
                f"noise_finetune on {handle.spec}", select)
        module.load_state_dict(best[1])


class SelfTrain(ModelAttack):
    """Self-training on the released NTEs: each epoch the model pseudo-labels the corpus with its own predictions
    and is fine-tuned (all parameters) on those it is at least ``threshold`` confident of, plus SHOT's information
    maximisation (``diversity`` times: confident and diverse predictions, mean entropy minus the entropy of the mean
    prediction; 0 turns it off).

    Assumes the attacker holds the released corpus (knowledge 'method' hands it out) and no labels. BatchNorm
    statistics are recomputed on the corpus before and after training and fixed during it."""

    name = "self_train"
    epochs: Epochs = 5
    lr: LearningRate = 1e-4
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.9
    diversity: Annotated[float, Field(ge=0, le=100)] = 1.0
    batch_size: BatchSize = 64

    def adapt(self, handle: ModelHandle, generator: torch.Generator) -> None:
        ntes, device = self.context.ntes, handle.device
        recalibrate(handle, ntes, self.batch_size)
        pseudo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
            if epoch not in pseudo:
                pseudo.clear()
                confidence, labels = logits_of(handle, ntes, self.batch_size).softmax(1).max(1)
                pseudo[epoch] = labels, confidence >= self.threshold
            labels, keep = pseudo[epoch]
            logits = handle.forward_grad(ntes[idx].to(device))
            sure = keep[idx].to(device)
            total = logits.sum() * 0  # keeps the graph when no sample is confident
            if sure.any():
                total = total + F.cross_entropy(logits[sure], labels[idx].to(device)[sure])
            if self.diversity:
                mean = logits.softmax(1).mean(0)
                total = total + self.diversity * (entropy(logits).mean() + (mean * mean.clamp_min(1e-12).log()).sum())
            return total

        descend(handle.module, list(handle.module.parameters()), loss, len(ntes), self.batch_size, self.epochs,
                self.lr, generator, f"self_train on {handle.spec}")
        recalibrate(handle, ntes, self.batch_size)
