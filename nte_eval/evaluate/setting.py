"""What the runner computes once and reuses across items: every evaluated model's clean logits and first-layer
responses per shard (``Clean``), and per (designated model, encoder setting) its NTEs shard by shard, the attackers'
context and each attack fitted once (``Setting``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import torch

from nte_eval.attacks.base import Attack, build_attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.oracle import designated_subspace
from nte_eval.attacks.synthetic import probe
from nte_eval.data.images import ImageSet
from nte_eval.encoders import Encoder
from nte_eval.evaluate.batching import apply_attack, batched_logits, encode_all, first_layer_responses
from nte_eval.evaluate.cells import Evaluated, estimate_angle
from nte_eval.evaluate.labels import compact, setting_name
from nte_eval.metrics import psnr
from nte_eval.models.handle import ModelHandle
from nte_eval.progress import Progress


class Clean:
    """Every evaluated model's clean logits and first-layer responses, computed once per shard of the data."""

    def __init__(self, handles: dict[str, ModelHandle], names: list[str], data: ImageSet, batch: int, device: str):
        self.handles, self.names, self.data, self.batch, self.device = handles, names, data, batch, device
        self._shards: dict[tuple[int, int], dict[str, Evaluated]] = {}

    def shard(self, start: int, stop: int, first: str) -> dict[str, Evaluated]:
        """The models on samples ``start:stop``, ``first`` (the designated model) first."""
        if (start, stop) not in self._shards:
            x = self.data.images[start:stop]
            self._shards[start, stop] = {
                n: Evaluated(self.handles[n], batched_logits(self.handles[n], x, self.batch, self.device, start),
                             first_layer_responses(self.handles[n], x, self.batch, self.device)) for n in self.names}
        models = self._shards[start, stop]
        return {first: models[first], **{k: v for k, v in models.items() if k != first}}


@dataclass
class RunInputs:
    """The run's inputs every setting reads: data, the attackers' public images and corpus subset, models, seeds."""

    data: ImageSet
    public_fit: ImageSet | None
    nte_fit: list[int]
    handles: dict[str, ModelHandle]
    surrogates: list[str]
    key: int | str
    attacker_seed: int
    batch: int
    device: str
    progress: Progress


class Setting:
    """One (designated model, encoder setting): its NTEs on any shard, the attackers' context (fitted on the NTEs of
    the run's ``fit_samples`` subset) and each attack setting fitted once, with its cell-level measurements."""

    def __init__(self, inputs: RunInputs, designated: str, encoder: Encoder,
                 attack_settings: list[tuple[str, dict[str, Any]]]):
        self.inputs, self.designated, self.encoder, self.attack_settings = inputs, designated, encoder, attack_settings
        self.name = setting_name(encoder.name, compact({**encoder.params(), "designated": designated}))
        i = inputs
        self.fit_ntes, self.info = encode_all(encoder, i.data.images[i.nte_fit], i.key, i.batch, i.device, i.nte_fit)
        self.fit_position = {p: k for k, p in enumerate(i.nte_fit)}
        tuned = any(build_attack({"type": a, **p}).strength is not None for a, p in attack_settings)
        self.pairs = (probe(encoder, i.public_fit.images, i.attacker_seed) if tuned and i.public_fit is not None
                      and i.data.modality == "image" else None)  # probe_psnr has a use
        self.context = AttackContext(seed=i.attacker_seed, device=i.device, public=i.public_fit, ntes=self.fit_ntes,
                                     encoder=encoder.public_settings(), designated=i.handles[designated],
                                     surrogates={s: i.handles[s] for s in i.surrogates if s != designated},
                                     progress=i.progress)
        self.truth = cache(partial(designated_subspace, self.context))  # for estimate_angle, built at most once
        self.fitted: dict[int, tuple[Attack, list[tuple]]] = {}

    def ntes(self, start: int, stop: int) -> torch.Tensor:
        """The NTEs of samples ``start:stop`` (each keyed by its position: the same whatever the shard)."""
        positions = range(start, stop)
        if all(p in self.fit_position for p in positions):
            return self.fit_ntes[[self.fit_position[p] for p in positions]]
        i = self.inputs
        return encode_all(self.encoder, i.data.images[start:stop], i.key, i.batch, i.device, list(positions))[0]

    def attack(self, number: int) -> tuple[Attack, list[tuple]]:
        """Attack setting ``number`` fitted on this setting's context, and its cell-level (model, role, metric,
        value, n) rows: a blind estimate's angle to the true subspace, the label-free probe's PSNR."""
        if number not in self.fitted:
            name, params = self.attack_settings[number]
            attack = build_attack({"type": name, **params}).fit(self.context)
            rows, n, d = [], len(self.inputs.data), self.designated
            angle = estimate_angle(attack, self.truth)
            if angle is not None:  # how close a blind estimate came to the truth (the weak-estimator check reads it)
                rows.append((d, "designated", "estimate_angle_deg", angle, n))
            if self.pairs is not None and attack.strength is not None:  # a label-free score to choose the strength by
                restored = apply_attack(attack, self.pairs.ntes, self.inputs.batch, self.inputs.device)
                rows.append((d, "designated", "probe_psnr", float(psnr(restored, self.pairs.clean).mean()),
                             len(self.pairs.clean)))
            self.fitted[number] = attack, rows
        return self.fitted[number]
