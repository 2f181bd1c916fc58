"""What the runner computes once and reuses across items: every evaluated model's clean logits and first-layer
response norms per shard (``Clean``), and per (designated model, encoder setting) its NTEs shard by shard, the
attackers' context and each attack fitted once (``Setting``; fits that save a state are kept in a ``FitStore``)."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from nte_eval.attacks.base import Attack, build_attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.model.base import Diverged, NotApplicable, apply_changes, changed, model_step
from nte_eval.attacks.subspace.oracle import designated_subspace
from nte_eval.attacks.synthetic import Probe, probe
from nte_eval.data.images import ImageSet
from nte_eval.encoders import Encoder
from nte_eval.evaluate.batching import apply_attack, batched_logits, encode_all, first_layer_norms
from nte_eval.evaluate.cells import Evaluated, estimate_angle
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.labels import compact, setting_name
from nte_eval.evaluate.run_folder import atomic_write
from nte_eval.metrics import psnr
from nte_eval.models.handle import ModelHandle
from nte_eval.progress import Progress


class Clean:
    """Every evaluated model's clean logits and first-layer response norms, computed once per shard of the data per
    run and kept on disk under ``folder`` (a resumed run or another ``--shard`` process reuses them), so that memory
    holds one shard's at a time, whatever the data set's size."""

    def __init__(self, handles: dict[str, ModelHandle], names: list[str], folder: Path, batch: int, device: str):
        self.handles, self.names, self.folder, self.batch, self.device = handles, names, folder, batch, device
        self._shard: tuple[tuple[int, int], dict[str, Evaluated]] | None = None

    def shard(self, x: torch.Tensor, start: int, first: str) -> dict[str, Evaluated]:
        """The models on the clean samples ``x`` at positions ``start``, ... (the designated model ``first`` first)."""
        span = (start, start + len(x))
        if self._shard is None or self._shard[0] != span:
            self._shard = span, {n: self._evaluated(n, x, start) for n in self.names}
        models = self._shard[1]
        return {first: models[first], **{k: v for k, v in models.items() if k != first}}

    def _evaluated(self, name: str, x: torch.Tensor, start: int) -> Evaluated:
        handle = self.handles[name]
        path = self.folder / f"{hashlib.sha1(name.encode()).hexdigest()[:12]}-{start}-{start + len(x)}.pt"
        if path.is_file():
            try:
                saved = torch.load(path, weights_only=True)
                return Evaluated(handle, saved["logits"], saved["norms"])
            except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):  # damaged: computed again below
                pass
        logits = batched_logits(handle, x, self.batch, self.device, start)
        norms = first_layer_norms(handle, x, self.batch, self.device)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            torch.save({"logits": logits, "norms": norms}, tmp)
        return Evaluated(handle, logits, norms)


@dataclass
class RunInputs:
    """The run's inputs every setting reads: data, the attackers' public images and corpus subset, models, the
    attackers' seed."""

    data: ImageSet
    public_fit: ImageSet | None
    nte_fit: list[int]
    handles: dict[str, ModelHandle]
    surrogates: list[str]
    attacker_seed: int
    batch: int
    device: str
    progress: Progress
    fits: FitStore


class Setting:
    """One (designated model, encoder setting, NTE key): its NTEs on any shard, the attackers' context (fitted on the
    NTEs of the run's ``fit_samples`` subset, encoded only when an attack above knowledge 'none' needs them) and each
    attack setting fitted once, with its cell-level measurements. ``tag``: the key's number in the cell key, when
    the suite has several keys."""

    def __init__(self, inputs: RunInputs, designated: str, encoder: Encoder,
                 attack_settings: list[tuple[str, dict[str, Any]]], key: int | str, tag: dict[str, int]):
        self.inputs, self.designated, self.encoder, self.attack_settings = inputs, designated, encoder, attack_settings
        self.key = key
        self.params = compact({**encoder.params(), "designated": designated, **tag})  # the cells' encoder_params
        self.name = setting_name(encoder.name, self.params)
        self.info: dict[str, Any] | None = None  # the encoder's record, from its first encoding
        self.fit_ntes: torch.Tensor | None = None
        self.fit_position = {p: k for k, p in enumerate(inputs.nte_fit)}  # data position -> row of fit_ntes
        self.fitted: dict[int, tuple[Attack, list[tuple]]] = {}
        self.blind = AttackContext(seed=inputs.attacker_seed, device=inputs.device, progress=inputs.progress,
                                   knowledge="none")  # what a knowledge-'none' attack is given: nothing
        self.needs_corpus = any(build_attack({"type": a, **p}).knowledge != "none" for a, p in attack_settings)

    def _encode(self, x: torch.Tensor, positions: list[int]) -> torch.Tensor:
        i = self.inputs
        ntes, info = encode_all(self.encoder, x, self.key, i.batch, i.device, positions)
        self.info = self.info or info
        return ntes

    @cached_property
    def context(self) -> AttackContext:
        """Everything an attacker above knowledge 'none' may be given, the released corpus (the NTEs of the
        ``fit_samples`` subset) included."""
        i = self.inputs
        self.fit_ntes = self._encode(i.data.images[i.nte_fit], i.nte_fit)
        return AttackContext(seed=i.attacker_seed, device=i.device, public=i.public_fit, ntes=self.fit_ntes,
                             encoder=self.encoder.public_settings(), designated=i.handles[self.designated],
                             surrogates={s: i.handles[s] for s in i.surrogates if s != self.designated},
                             progress=i.progress)

    @cached_property
    def pairs(self) -> Probe | None:
        """The label-free probe (the attacker's own NTEs of public images), for attacks with a strength."""
        i = self.inputs
        if i.public_fit is None or i.data.modality != "image":
            return None
        return probe(self.encoder, i.public_fit.images, i.attacker_seed)

    @cached_property
    def truth(self) -> Any:
        """The designated model's true subspace (for the blind estimates' angle)."""
        return designated_subspace(self.context)

    def ntes(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The NTEs of the clean samples ``x`` at positions ``start``, ... (each keyed by its position: the same
        whatever the shard)."""
        positions = list(range(start, start + len(x)))
        if self.needs_corpus:
            self.context  # encodes the corpus subset first, so that the shard reuses what it holds  # noqa: B018
        fit = self.fit_position if self.fit_ntes is not None else {}
        if positions and all(p in fit for p in positions):
            return self.fit_ntes[[fit[p] for p in positions]]
        return self._encode(x, positions)

    def fit_key(self, number: int, what: str = "") -> str:
        """The ``FitStore`` key of attack setting ``number`` fitted on this setting (``what``: which part of it)."""
        name, params = self.attack_settings[number]
        return FitStore.key(f"{self.encoder.name} {self.params}{what}", name, params)

    def attack(self, number: int) -> tuple[Attack, list[tuple]]:
        """Attack setting ``number`` fitted on this setting's context, and its cell-level (model, role, metric,
        value, n) rows: a blind estimate's angle to the true subspace, the label-free probe's PSNR."""
        if number not in self.fitted:
            name, params = self.attack_settings[number]
            attack = build_attack({"type": name, **params})
            context = self.blind if attack.knowledge == "none" else self.context
            key = self.fit_key(number)
            state = self.inputs.fits.get(key)
            if state is not None:  # fitted before, in this run (another process, or before a restart)
                attack.restore(context, state)
            else:
                attack.fit(context)
                state = attack.state()
                if state is not None:
                    self.inputs.fits.put(key, state)
            rows, n, d = [], len(self.inputs.data), self.designated
            angle = estimate_angle(attack, lambda: self.truth)
            if angle is not None:  # how close a blind estimate came to the truth (the weak-estimator check reads it)
                rows.append((d, "designated", "estimate_angle_deg", angle, n))
            if attack.strength is not None and self.pairs is not None:  # a label-free score to choose the strength by
                restored = apply_attack(attack, self.pairs.ntes, self.inputs.batch, self.inputs.device)
                rows.append((d, "designated", "probe_psnr", float(psnr(restored, self.pairs.clean).mean()),
                             len(self.pairs.clean)))
            self.fitted[number] = attack, rows
        return self.fitted[number]

    def adapted(self, number: int, models: dict[str, Evaluated]) -> tuple[dict[str, Evaluated], dict[str, list[str]]]:
        """The models as attack setting ``number`` (a model attack, or a chain with one) hands them the NTEs: each
        unauthorized model adapted (restored from the fits when adapted before; never kept in memory here), the
        designated one as it is; and per model it could not adapt, [status, reason] ("not applicable" or "failed")
        in place of the model."""
        step = model_step(self.attack(number)[0])
        out, skipped = {}, {}
        for model, ev in models.items():
            if model == self.designated:
                out[model] = ev
                continue
            key = self.fit_key(number, f" adapted {model}")
            state, handle = self.inputs.fits.get(key, keep=False), None
            if state is None:
                try:
                    handle = step.adapted(ev.handle)
                    state = {"changed": changed(ev.handle.module.state_dict(), handle.module)}
                except (NotApplicable, Diverged) as e:
                    state = {"status": "not applicable" if isinstance(e, NotApplicable) else "failed",
                             "reason": str(e)}
                self.inputs.fits.put(key, state, keep=False)
            if "status" in state:
                skipped[model] = [state["status"], state["reason"]]
            else:
                out[model] = Evaluated(handle or apply_changes(ev.handle, state["changed"]), ev.logits,
                                       ev.response_norm)
        return out, skipped
