"""Running a suite's items in one process: its inputs loaded once, each encoder setting's NTEs and fitted attacks
(``Setting``) and each shard's clean outputs (``Clean``) reused across items. The local runner, the ``--workers``
processes and the Ray executor's actors all run their items through a ``Worker``; whoever holds the run folder writes
what it yields."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.attacks.base import build_attack
from nte_eval.attacks.model.base import model_step
from nte_eval.attacks.preprocessing import Identity
from nte_eval.encoders import ENCODERS, Encoder, sample_seed
from nte_eval.errors import NTEError
from nte_eval.evaluate.batching import apply_attack, batched_logits
from nte_eval.evaluate.cells import evaluate_cell, nte_metrics, predictions
from nte_eval.evaluate.fits import FitStore
from nte_eval.evaluate.inputs import load_models, load_public, load_suite_data
from nte_eval.evaluate.labels import compact
from nte_eval.evaluate.run_folder import N_EXAMPLES
from nte_eval.evaluate.setting import Clean, RunInputs, Setting
from nte_eval.evaluate.shards import Item, shard_ranges
from nte_eval.evaluate.store import CELL
from nte_eval.evaluate.suite import Suite
from nte_eval.models.load import spec_name
from nte_eval.progress import Progress

Work = tuple[Item, tuple[str, int], int]  # an item, its (designated model, encoder number), its attack number


@dataclass
class Done:
    """A finished item: its per-sample rows, its record (cell metrics, seconds, encoder info) and, for the first
    shard, the images the gallery shows: (key of ``run_folder.example_file``, images)."""

    item: Item
    frame: pd.DataFrame
    record: dict[str, Any]
    examples: list[tuple[tuple[str, ...], torch.Tensor]] = field(default_factory=list)


def fit_subset(n: int, limit: int, seed: int) -> list[int]:
    """The sorted positions of a seeded random subset of ``limit`` of ``n`` items (all of them when ``n <= limit``):
    what a corpus-fitting attack sees, the same in every run of the suite."""
    if n <= limit:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def _refuse_repeats(key: str, settings: list[str]) -> None:
    """Two entries that give the same setting would be one cell measured twice: an NTEError naming it."""
    seen = {s for s in settings if settings.count(s) > 1}
    if seen:
        raise NTEError(f"{key}: the setting {sorted(seen)[0]} appears more than once (a sweep value repeated, or a "
                       f"default written out beside the entry that has it); remove the repeat.")


class Worker:
    """A suite's models, data and public images, loaded once, and the items they run. ``cache``: where the clean
    outputs per shard are kept (the run folder's, or a worker's own folder); ``fits``: the fitted attacks' states
    (default: none kept)."""

    def __init__(self, suite: Suite, cache: Path, device: str = "cpu", batch: int | None = None,
                 progress: Progress | None = None, log: Callable[[str], None] = print, fits: FitStore | None = None):
        self.suite, self.device, self.batch = suite, device, batch or suite.batch_size
        self.progress, self.log = progress or Progress(enabled=False), log
        self.handles = load_models(suite, device)
        self.data = load_suite_data(suite, self.handles)
        self.public = load_public(suite, self.data, self.handles[spec_name(suite.designated_list()[0])])
        designated = [spec_name(s) for s in suite.designated_list()]
        self.evaluated = [n for n in self.handles if n in designated or n in {spec_name(s) for s in suite.models}]
        # Every encoder and attack is built (and so validated) before any work starts; with several NTE keys
        # (seeds), every encoder setting once per key, its cells tagged with the key's number (never the key).
        self.encoders: dict[tuple[str, int], Encoder] = {}
        self.tags: dict[tuple[str, int], dict[str, int]] = {}
        for d in designated:
            for i, ((name, params), k) in enumerate(product(suite.encoder_settings(d), range(len(suite.keys)))):
                self.encoders[d, i] = ENCODERS.get(name)(self.handles[d], **params)
                self.tags[d, i] = {"key": k} if len(suite.keys) > 1 else {}
        self.attack_settings = [(name, build_attack({"type": name, **params}).params())
                                for name, params in suite.attack_settings()]
        _refuse_repeats("attacks", [f"{a} {compact(p)}" for a, p in self.attack_settings])
        _refuse_repeats("encoders", [f"{d}: {e.name} {compact({**e.params(), **self.tags[d, i]})}"
                                     for (d, i), e in self.encoders.items()])
        attacker_seed = sample_seed(f"attacker/{suite.keys[0]}", 0) % 2**31
        self.public_fit = (None if self.public is None else
                           self.public.subset(fit_subset(len(self.public), suite.fit_samples, attacker_seed)))
        self.nte_fit = fit_subset(len(self.data), suite.fit_samples, attacker_seed + 1)
        self.inputs = RunInputs(self.data, self.public_fit, self.nte_fit, self.handles,
                                [spec_name(s) for s in suite.surrogates], attacker_seed, self.batch,
                                device, self.progress, fits or FitStore(None))
        self.clean = Clean(self.handles, self.evaluated, cache, self.batch, device)
        self.calibrations: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._setting: tuple[tuple[str, int], Setting] | None = None

    def work(self) -> list[Work]:
        """Every cell item of the suite, in order: designated model, encoder setting, attack setting, shard."""
        ranges = shard_ranges(len(self.data), self.suite.shard_size)
        return [(Item("cell", (e.name, compact({**e.params(), "designated": d, **self.tags[d, i]}), a, compact(p)),
                      *r), (d, i), j)
                for (d, i), e in self.encoders.items() for j, (a, p) in enumerate(self.attack_settings)
                for r in ranges]

    def setting(self, key: tuple[str, int]) -> Setting:
        """The encoder setting ``key``, kept until another is asked for (one setting's corpus in memory)."""
        if self._setting is None or self._setting[0] != key:
            self._setting = None  # the previous one's corpus is freed first
            tag = self.tags[key]
            self._setting = key, Setting(self.inputs, key[0], self.encoders[key], self.attack_settings,
                                         self.suite.keys[tag.get("key", 0)], tag)
        return self._setting[1]

    def run(self, work: list[Work]) -> Iterator[Done]:
        """Run the items, setting by setting and shard by shard, yielding each as it finishes."""
        keys = list(self.encoders)
        for key in dict.fromkeys(k for _, k, _ in work):
            here = [w for w in work if w[1] == key]
            setting = self.setting(key)
            self.log(f"setting {keys.index(key) + 1}/{len(keys)}: {key[0]}, {setting.name}: {len(here)} item(s) to "
                     f"run, each evaluated on {len(self.evaluated)} models")
            for start, stop in dict.fromkeys((w[0].start, w[0].stop) for w in here):
                yield from self._shard(setting, [w for w in here if w[0].start == start], start, stop)

    def _shard(self, setting: Setting, work: list[Work], start: int, stop: int) -> Iterator[Done]:
        d, batch, device = setting.designated, self.batch, self.device
        clean = self.data.subset(slice(start, stop))  # an imagefolder's shard is read from disk here
        x_nte = setting.ntes(clean.images, start)
        models = self.clean.shard(clean.images, start, first=d)
        nte_logits = {d: batched_logits(self.handles[d], x_nte, batch, device, start)}  # every model's, if identity
        encoded_pred = nte_logits[d].argmax(1)
        measured = nte_metrics(x_nte, clean)
        for number, (item, _, j) in enumerate(work):
            tc = time.time()
            steps = self.progress.bar(total=3, desc=item.cell[2], unit="stage")
            attack, extra = setting.attack(j)
            steps.update()
            evaluated, skipped = models, {}
            if isinstance(attack, Identity):  # the NTEs as they are, and the clean images as the calibration
                x_rec, calibration = x_nte, {n: ev.preds for n, ev in models.items()}
                nte_logits |= {n: batched_logits(ev.handle, x_nte, batch, device, start)
                               for n, ev in models.items() if n not in nte_logits}
            else:
                x_rec = apply_attack(attack, x_nte, batch, device)
                if model_step(attack) is not None:  # adapted unauthorized models, on the NTEs and the clean images
                    evaluated, skipped = setting.adapted(j, models)
                    extra = extra + [(m, "unauthorized", "not_applicable" if status == "not applicable" else
                                      "adaptation_failed", 1.0, len(self.data)) for m, (status, _) in skipped.items()]
                calibration = self.calibrations.get((j, start)) or predictions(
                    evaluated, apply_attack(attack, clean.images, batch, device), batch, device, start)
                if attack.knowledge == "none":  # it ignores the encoder: the same on every setting's clean images
                    self.calibrations[j, start] = calibration
            steps.update()
            frame = evaluate_cell(x_nte, x_rec, calibration, clean, evaluated, d, encoded_pred, batch, device, start,
                                  nte_logits if x_rec is x_nte else None, measured)
            for column, value in zip(CELL, item.cell, strict=True):
                frame.insert(CELL.index(column), column, value)
            steps.update()
            steps.close()
            examples = [] if start else [(item.cell, x_rec[:N_EXAMPLES])]
            if start == 0 and number == 0:
                examples.append((item.cell[:2], x_nte[:N_EXAMPLES]))
            record = {"cell_metrics": extra, "seconds": round(time.time() - tc, 3),
                      "setting": f"{item.cell[0]} {item.cell[1]}", "encoder_info": setting.info}
            yield Done(item, frame, record | ({"adaptation": skipped} if skipped else {}), examples)
