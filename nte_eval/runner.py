"""Run a suite: every (designated model x encoder setting x attack) cell, every model evaluated, tidy results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.attacks.base import build_attack
from nte_eval.certify.degradation import degradation_warnings
from nte_eval.certify.fidelity import CERT_COLUMNS, violations
from nte_eval.certify.run import certify_steps, certify_suite
from nte_eval.data.images import ImageSet
from nte_eval.data.sources import source
from nte_eval.encoders import ENCODERS, sample_seed
from nte_eval.errors import NTEError
from nte_eval.evaluate.batching import apply_attack, batched_logits
from nte_eval.evaluate.cells import evaluate_cell, predictions
from nte_eval.evaluate.inputs import load_models, load_public, load_suite_data
from nte_eval.evaluate.labels import compact, knowledge_of
from nte_eval.evaluate.merge import merge_tables
from nte_eval.evaluate.run_folder import (
    ANGLES,
    CERTIFICATES,
    PLAN,
    SPECTRA,
    WARNINGS,
    atomic_write,
    environment,
    example_file,
    key_fingerprint,
    save_examples,
)
from nte_eval.evaluate.setting import Clean, RunInputs, Setting
from nte_eval.evaluate.shards import Item, owns, shard_ranges, verified_items
from nte_eval.evaluate.spectra import spectrum_rows
from nte_eval.evaluate.store import CELL, COLUMNS, ResultStore, cell_key, replacing
from nte_eval.evaluate.suite import Suite
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import spec_name
from nte_eval.progress import Progress

SHARD_OVERWRITE = ("--shard and --overwrite do not go together: the processes of one run share its folder. Delete the "
                   "folder (or choose another --out) before starting them.")


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", batch_size: int | None = None,
              progress: bool | Progress = True, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print, attacks: bool = True,
              shard: tuple[int, int] | None = None) -> pd.DataFrame | None:
    """Evaluate every cell of the suite, then its ``certify`` section; write ``results.csv``/``.parquet``,
    ``samples.csv``, ``worst_case.csv``, ``warnings.json``, ``manifest.json`` (and the certification files) under
    ``out``. With ``resume``, finished items are skipped; ``attacks=False`` runs the certification alone.

    Work is done in items, one per (designated model, encoder setting, attack setting, shard of ``shard_size``
    samples), each stored as a checksummed file under ``shards/``; the tables are merged from them at the end
    (``merge``). ``shard=(I, N)`` runs only this process's share of the items (``--shard I/N``) in a folder other
    processes of the same suite may fill too, and merges only when every item is there; it returns None otherwise.

    A certificate that a certified Lipschitz bound does not keep is a bug: after every file is written, it raises
    NTEError naming how many failed and the first one. With ``overwrite``, a previous run in ``out`` stays untouched
    until this one is complete (built beside it, then swapped in).

    ``progress``: show bars, or a ``Progress`` whose overall bar this run extends by its items and certification
    steps (the command line plans the report on it too); this function does not close a ``Progress`` it is given."""
    if shard is not None and overwrite:
        raise NTEError(SHARD_OVERWRITE)
    bars = progress if isinstance(progress, Progress) else Progress(progress)
    try:
        with replacing(Path(out), overwrite and not resume, log) as work:
            return _run_items(suite, work, device, batch_size, bars, resume, overwrite, log, attacks, shard)
    finally:
        if bars is not progress:
            bars.close()


def _run_items(suite: Suite, out: Path, device: str, batch_size: int | None, progress: Progress, resume: bool,
               overwrite: bool, log: Callable[[str], None], attacks: bool,
               shard: tuple[int, int] | None) -> pd.DataFrame | None:
    """``run_suite`` in the folder ``out`` it writes to."""
    batch = batch_size or suite.batch_size
    t0 = time.time()
    handles = load_models(suite, device)
    data = load_suite_data(suite, handles)
    public = load_public(suite, data, handles[spec_name(suite.designated_list()[0])])
    designated = [spec_name(s) for s in suite.designated_list()]
    surrogate_names = [spec_name(s) for s in suite.surrogates]
    evaluated_names = [n for n in handles if n in designated or n in {spec_name(s) for s in suite.models}]
    # Every encoder and attack is built (and so validated) before any work starts.
    encoders = {(d, i): ENCODERS.get(name)(handles[d], **params)
                for d in designated for i, (name, params) in enumerate(suite.encoder_settings(d))}
    attack_settings = [(name, build_attack({"type": name, **params}).params())
                       for name, params in suite.attack_settings()]
    store = ResultStore(out, suite.config_hash(), resume=resume, overwrite=overwrite, join=shard is not None,
                        log=log)
    attacker_seed = sample_seed(f"attacker/{suite.seed}", 0) % 2**31
    public_fit = None if public is None else public.subset(fit_subset(len(public), suite.fit_samples, attacker_seed))
    nte_fit = fit_subset(len(data), suite.fit_samples, attacker_seed + 1)
    kind = source(suite.data.source)
    metric = kind.metric(suite.data.task)
    ranges = shard_ranges(len(data), suite.shard_size)
    work = [(Item("cell", (e.name, compact({**e.params(), "designated": d}), a, compact(p)), *r), (d, i), j)
            for (d, i), e in (encoders.items() if attacks else ()) for j, (a, p) in enumerate(attack_settings)
            for r in ranges]
    cert_item = None if suite.certify is None else Item("certify", (certify_key(suite),), 0, 0)
    plan = [w[0] for w in work] + ([cert_item] if cert_item else [])
    with atomic_write(out / PLAN) as tmp:
        tmp.write_text(json.dumps({
            "config_hash": suite.config_hash(), "metric": metric, "items": [it.record() for it in plan],
            "manifest": _manifest(suite, device, batch, data, metric, public, public_fit, nte_fit, handles,
                                  attack_settings)}, indent=1, default=str))
    mine = [w for w in work if shard is None or owns(w[0], shard)]
    todo = [w for w in mine if not store.is_done(w[0].id)]
    save_examples(example_file(out), data.images)
    if attacks:
        cells = len(encoders) * len(attack_settings)
        log(f"{len(encoders)} encoder setting(s) x {len(attack_settings)} attack setting(s) = {cells} cells"
            + (f" x {len(ranges)} shards of {suite.shard_size}" if len(ranges) > 1 else "")
            + f", {len(evaluated_names)} models, {len(data)} {kind.unit}"
            + (f"; this process (--shard {shard[0]}/{shard[1]}) runs {len(mine)} of {len(work)} items" if shard else "")
            + (f"; {len(mine) - len(todo)} items already done" if len(todo) < len(mine) else ""))
    certifies = cert_item is not None and (shard is None or owns(cert_item, shard))
    cert_steps = certify_steps(suite, handles, evaluated_names) if certifies else 0
    cert_done = certifies and store.is_done(cert_item.id)
    progress.start(len(mine) + cert_steps, done=len(mine) - len(todo) + (cert_steps if cert_done else 0))
    inputs = RunInputs(data, public_fit, nte_fit, handles, surrogate_names, suite.seed, attacker_seed, batch, device,
                       progress)
    evaluated = Clean(handles, evaluated_names, data, batch, device)
    calibrations: dict[tuple[int, tuple[int, int]], dict[str, torch.Tensor]] = {}
    for number, ((d, i), encoder) in enumerate(encoders.items(), 1):
        here = [w for w in todo if w[1] == (d, i)]
        if not here:
            continue
        setting = Setting(inputs, d, encoder, attack_settings)
        log(f"setting {number}/{len(encoders)}: {d}, {setting.name}: {len(here)} item(s) to run, each evaluated on "
            f"{len(evaluated_names)} models")
        for start, stop in dict.fromkeys((w[0].start, w[0].stop) for w in here):
            x_nte = setting.ntes(start, stop)
            if start == 0:
                save_examples(example_file(out, encoder.name, here[0][0].cell[1]), x_nte)
            clean = data.subset(slice(start, stop))
            models = evaluated.shard(start, stop, first=d)
            encoded_pred = batched_logits(handles[d], x_nte, batch, device, start).argmax(1)
            for item, _, j in (w for w in here if w[0].start == start):
                tc = time.time()
                steps = progress.bar(total=3, desc=item.cell[2], unit="stage")
                attack, extra = setting.attack(j)
                steps.update()
                x_rec = apply_attack(attack, x_nte, batch, device)
                cal_key = (j, (start, stop))
                calibration = calibrations.get(cal_key) or predictions(
                    models, apply_attack(attack, clean.images, batch, device), batch, device, start)
                if attack.knowledge == "none":  # it ignores the encoder: the same on every setting's clean images
                    calibrations[cal_key] = calibration
                steps.update()
                frame = evaluate_cell(x_nte, x_rec, calibration, clean, models, d, encoded_pred, batch, device, start)
                for column, value in zip(CELL, item.cell, strict=True):
                    frame.insert(CELL.index(column), column, value)
                steps.update()
                steps.close()
                if start == 0:
                    save_examples(example_file(out, *item.cell), x_rec)
                store.add(item, frame, {"cell_metrics": extra, "seconds": round(time.time() - tc, 3),
                                        "setting": f"{encoder.name} {item.cell[1]}", "encoder_info": setting.info})
                progress.advance()
    if certifies:
        _certify(suite, handles, evaluated_names, data, out, batch, store, cert_item, progress, log)
    with atomic_write(out / SPECTRA) as tmp:
        pd.concat([spectrum_rows(n, handles[n]) for n in evaluated_names]).to_csv(tmp, index=False)
    if shard is not None:
        missing = len(plan) - len(verified_items(out, log))
        if missing > 0:
            log(f"--shard {shard[0]}/{shard[1]}: this process's items are done; {missing} item(s) of other processes "
                f"are not there yet. Once every process has finished: nte-eval merge {out}")
            return None
    results = finish_run(out, log, round(time.time() - t0, 3), resume)
    path = out / CERTIFICATES
    broken = violations(pd.read_csv(path)) if path.exists() else pd.DataFrame(columns=CERT_COLUMNS)
    if len(broken):
        raise NTEError(f"{len(broken)} certificate(s) of a certified Lipschitz bound failed (first: "
                       f"{broken.iloc[0].designated}, sample {broken.iloc[0]['sample']}, "
                       f"{broken.iloc[0].lipschitz_source}): a bug in nte-eval; see {out / CERTIFICATES} "
                       f"(column passed) and report it.")
    return results


def finish_run(out: Path, log: Callable[[str], None], total_seconds: float | None = None,
               resumed: bool = False) -> pd.DataFrame:
    """Merge the item files into the run's tables, run the sanity checks (and the degradation study's), write
    warnings.json and the manifest; what ends every run and what `nte-eval merge DIR` does."""
    results, warnings = merge_tables(out, log, total_seconds, resumed)
    if (out / ANGLES).exists():
        warnings += degradation_warnings(pd.read_csv(out / ANGLES))
    for w in warnings:
        log(f"warning [{w['check']}]: {w['message']}")
    with atomic_write(out / WARNINGS) as tmp:
        tmp.write_text(json.dumps(warnings, indent=2))
    return results


def _manifest(suite: Suite, device: str, batch: int, data: ImageSet, metric: str, public: ImageSet | None,
              public_fit: ImageSet | None, nte_fit: list[int], handles: dict[str, ModelHandle],
              attack_settings: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """What the manifest says about the run (merge adds its status, timings and the encoders' subspaces). The key
    (the suite's seed) regenerates every NTE's noise: files hold its fingerprint, never the key."""
    return {"suite": suite.name, "config_hash": suite.config_hash(), "key_fingerprint": key_fingerprint(suite.seed),
            "device": device, "batch_size": batch, "shard_size": suite.shard_size,
            "config": suite.model_dump(exclude={"seed"}), "environment": environment(),
            "data": {"source": suite.data.source, "split": suite.data.split, "n": len(data),
                     "modality": data.modality, "metric": metric, "shape": list(data.images.shape[1:]),
                     "chance": float(torch.bincount(data.labels).max()) / len(data)},
            "public": None if public is None else {"n": len(public), **suite.public_config().model_dump()},
            "fit_samples": {"limit": suite.fit_samples, "ntes": len(nte_fit),
                            "public": None if public_fit is None else len(public_fit)},
            "models": {name: h.describe() for name, h in handles.items()},
            "attacks": [{"type": a, "params": p, "knowledge": knowledge_of(a, compact(p))}
                        for a, p in attack_settings]}


def fit_subset(n: int, limit: int, seed: int) -> list[int]:
    """The sorted positions of a seeded random subset of ``limit`` of ``n`` items (all of them when ``n <= limit``):
    what a corpus-fitting attack sees, the same in every run of the suite."""
    if n <= limit:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def certify_key(suite: Suite) -> str:
    """The cell key of the suite's ``certify`` section (one item)."""
    return cell_key("certify", compact(suite.certify.model_dump()), "", "")


def _certify(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
             batch: int, store: ResultStore, item: Item, progress: Progress, log: Callable[[str], None]) -> None:
    """The suite's ``certify`` section as one item (its summary rows in the item file)."""
    if store.is_done(item.id):
        return
    tc = time.time()
    rows, _ = certify_suite(suite, handles, evaluated, data, out, batch, progress, log)
    store.add(item, pd.DataFrame(rows, columns=COLUMNS), {"seconds": round(time.time() - tc, 3)})
