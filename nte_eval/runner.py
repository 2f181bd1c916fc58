"""Run a suite: every (designated model x encoder setting x attack) cell, every model evaluated, tidy results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.attacks.base import ATTACKS, build_attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.oracle import designated_subspace
from nte_eval.attacks.synthetic import probe
from nte_eval.certify.degradation import degradation_warnings
from nte_eval.certify.fidelity import CERT_COLUMNS, violations
from nte_eval.certify.run import certify_steps, certify_suite
from nte_eval.data.images import ImageSet
from nte_eval.data.sources import source
from nte_eval.encoders import ENCODERS, sample_seed
from nte_eval.errors import NTEError
from nte_eval.evaluate.batching import apply_attack, batched_logits, encode_all, first_layer_responses
from nte_eval.evaluate.cells import Evaluated, estimate_angle, evaluate_cell
from nte_eval.evaluate.checks import run_checks
from nte_eval.evaluate.inputs import load_models, load_public, load_suite_data
from nte_eval.evaluate.labels import compact, knowledge_of, setting_name
from nte_eval.evaluate.run_folder import (
    ANGLES,
    CERTIFICATES,
    MANIFEST,
    RESULTS_PARQUET,
    SPECTRA,
    WARNINGS,
    WORST_CASE,
    atomic_write,
    environment,
    example_file,
    key_fingerprint,
    save_examples,
)
from nte_eval.evaluate.spectra import spectrum_rows
from nte_eval.evaluate.store import COLUMNS, SAMPLE_COLUMNS, ResultStore, cell_key, replacing
from nte_eval.evaluate.suite import Suite
from nte_eval.evaluate.worst_case import worst_case
from nte_eval.metrics import psnr
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import spec_name
from nte_eval.progress import Progress


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", batch_size: int | None = None,
              progress: bool | Progress = True, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print, attacks: bool = True) -> pd.DataFrame:
    """Evaluate every cell of the suite, then its ``certify`` section; write ``results.csv``/``.parquet``,
    ``samples.csv``, ``worst_case.csv``, ``warnings.json``, ``manifest.json`` (and the certification files) under
    ``out``. With ``resume``, journalled cells are skipped; ``attacks=False`` runs the certification alone.

    A certificate that a certified Lipschitz bound does not keep is a bug: after every file is written, it raises
    NTEError naming how many failed and the first one. With ``overwrite``, a previous run in ``out`` stays untouched
    until this one is complete (built beside it, then swapped in).

    ``progress``: show bars, or a ``Progress`` whose overall bar this run extends by its cells and certification
    steps (the command line plans the report on it too); this function does not close a ``Progress`` it is given."""
    bars = progress if isinstance(progress, Progress) else Progress(progress)
    try:
        with replacing(Path(out), overwrite and not resume, log) as work:
            return _run_cells(suite, work, device, batch_size, bars, resume, overwrite, log, attacks)
    finally:
        if bars is not progress:
            bars.close()


def _run_cells(suite: Suite, out: Path, device: str, batch_size: int | None, progress: Progress, resume: bool,
               overwrite: bool, log: Callable[[str], None], attacks: bool) -> pd.DataFrame:
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
    store = ResultStore(out, suite.config_hash(), resume=resume, overwrite=overwrite)
    evaluated = {n: Evaluated(handles[n], batched_logits(handles[n], data.images, batch, device),
                              first_layer_responses(handles[n], data.images, batch, device))
                 for n in evaluated_names}
    attacker_seed = sample_seed(f"attacker/{suite.seed}", 0) % 2**31
    tuned = any(ATTACKS.get(a).strength is not None for a, _ in attack_settings)  # probe_psnr has a use
    public_fit = None if public is None else public.subset(fit_subset(len(public), suite.fit_samples, attacker_seed))
    nte_fit = fit_subset(len(data), suite.fit_samples, attacker_seed + 1)
    kind = source(suite.data.source)
    metric = kind.metric(suite.data.task)
    timings, subspaces = [], {}
    cell_keys = [cell_key(e.name, compact({**e.params(), "designated": d}), a, compact(p))
                 for (d, _), e in encoders.items() for a, p in attack_settings]
    save_examples(example_file(out), data.images)
    done = sum(store.is_done(k) for k in cell_keys)
    if attacks:
        log(f"{len(encoders)} encoder setting(s) x {len(attack_settings)} attack setting(s) = {len(cell_keys)} cells, "
            f"{len(evaluated_names)} models, {len(data)} {kind.unit}"
            + (f"; {done} cells already done" if done else ""))
    cert_steps = certify_steps(suite, handles, evaluated_names)
    cert_done = suite.certify is not None and store.is_done(certify_key(suite))
    progress.start((len(cell_keys) if attacks else 0) + cert_steps,
                   done=(done if attacks else 0) + (cert_steps if cert_done else 0))
    for number, ((d, _), encoder) in enumerate(encoders.items() if attacks else (), 1):
        enc_params = compact({**encoder.params(), "designated": d})
        keys = [cell_key(encoder.name, enc_params, a, compact(p)) for a, p in attack_settings]
        if all(store.is_done(k) for k in keys):
            continue
        log(f"setting {number}/{len(encoders)}: {d}, {setting_name(encoder.name, enc_params)}: encoding, then "
            f"{sum(not store.is_done(k) for k in keys)} attack(s), each evaluated on {len(evaluated_names)} models")
        tc = time.time()
        x_nte, subspaces[f"{encoder.name} {enc_params}"] = encode_all(encoder, data.images, suite.seed, batch, device)
        save_examples(example_file(out, encoder.name, enc_params), x_nte)
        encoded_correct = batched_logits(handles[d], x_nte, batch, device).argmax(1) == data.labels
        pairs = (probe(encoder, public_fit.images, attacker_seed) if tuned and public is not None
                 and data.modality == "image" else None)
        context = AttackContext(seed=attacker_seed, device=device, public=public_fit, ntes=x_nte[nte_fit],
                                encoder=encoder.public_settings(), designated=handles[d],
                                surrogates={s: handles[s] for s in surrogate_names if s != d}, progress=progress)
        truth = cache(partial(designated_subspace, context))  # for estimate_angle, built at most once
        # The cell's models: the designated one and every other evaluated model (unauthorized).
        models = {d: evaluated[d], **{k: v for k, v in evaluated.items() if k != d}}
        timings.append({"designated": d, "encoder_params": enc_params, "stage": "encode",
                        "seconds": round(time.time() - tc, 3)})
        for (att_name, att_params), key in zip(attack_settings, keys, strict=True):
            if store.is_done(key):
                continue
            tc = time.time()
            steps = progress.bar(total=3, desc=att_name, unit="stage")
            attack = build_attack({"type": att_name, **att_params}).fit(context)
            steps.update()
            x_rec = apply_attack(attack, x_nte, batch, device)
            x_cal = apply_attack(attack, data.images, batch, device)
            steps.update()
            rows, samples = evaluate_cell(x_nte, x_rec, x_cal, data, models, d, encoded_correct, batch, device,
                                          metric)
            angle = estimate_angle(attack, truth)
            if angle is not None:  # how close a blind estimate came to the truth (the weak-estimator check reads it)
                rows.append((d, "designated", "estimate_angle_deg", angle, len(data)))
            if pairs is not None and attack.strength is not None:  # a label-free score to choose the strength by
                score = psnr(apply_attack(attack, pairs.ntes, batch, device), pairs.clean).mean()
                rows.append((d, "designated", "probe_psnr", float(score), len(pairs.clean)))
            steps.update()
            steps.close()
            head = (encoder.name, enc_params, att_name, compact(att_params))
            save_examples(example_file(out, *head), x_rec)
            store.add(key, pd.DataFrame([(*head, *r) for r in rows], columns=COLUMNS),
                      pd.DataFrame([(*head, *r) for r in samples], columns=SAMPLE_COLUMNS))
            timings.append({"designated": d, "encoder_params": enc_params, "attack": att_name,
                            "attack_params": compact(att_params), "seconds": round(time.time() - tc, 3)})
            progress.advance()
    broken = _certify(suite, handles, evaluated_names, data, out, batch, store, progress, log, timings)
    with atomic_write(out / SPECTRA) as tmp:
        pd.concat([spectrum_rows(n, handles[n]) for n in evaluated_names]).to_csv(tmp, index=False)
    results, samples = store.load()
    with atomic_write(out / RESULTS_PARQUET) as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_write(out / WORST_CASE) as tmp:
        worst_case(results, samples, knowledge_of).to_csv(tmp, index=False)
    warnings = run_checks(results, out)
    if (out / ANGLES).exists():
        warnings += degradation_warnings(pd.read_csv(out / ANGLES))
    for w in warnings:
        log(f"warning [{w['check']}]: {w['message']}")
    with atomic_write(out / WARNINGS) as tmp:
        tmp.write_text(json.dumps(warnings, indent=2))
    # the key (the suite's seed) regenerates every NTE's noise: files hold its fingerprint, never the key
    manifest = {"suite": suite.name, "config_hash": suite.config_hash(), "status": "complete",
                "key_fingerprint": key_fingerprint(suite.seed), "device": device, "batch_size": batch,
                "config": suite.model_dump(exclude={"seed"}), "environment": environment(),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "data": {"source": suite.data.source, "split": suite.data.split, "n": len(data),
                         "modality": data.modality, "metric": metric,
                         "shape": list(data.images.shape[1:]),
                         "chance": float(torch.bincount(data.labels).max()) / len(data)},
                "public": None if public is None else {"n": len(public), **suite.public_config().model_dump()},
                "fit_samples": {"limit": suite.fit_samples, "ntes": len(nte_fit),
                                "public": None if public_fit is None else len(public_fit)},
                "models": {name: h.describe() for name, h in handles.items()}, "subspaces": subspaces,
                "attacks": [{"type": a, "params": p, "knowledge": knowledge_of(a, compact(p))}
                            for a, p in attack_settings],
                "timings": {"total_seconds": round(time.time() - t0, 3), "resumed": resume, "cells": timings}}
    with atomic_write(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
    if len(broken):
        raise NTEError(f"{len(broken)} certificate(s) of a certified Lipschitz bound failed (first: "
                       f"{broken.iloc[0].designated}, sample {broken.iloc[0]['sample']}, "
                       f"{broken.iloc[0].lipschitz_source}): a bug in nte-eval; see {out / CERTIFICATES} "
                       f"(column passed) and report it.")
    return results


def fit_subset(n: int, limit: int, seed: int) -> list[int]:
    """The sorted positions of a seeded random subset of ``limit`` of ``n`` items (all of them when ``n <= limit``):
    what a corpus-fitting attack sees, the same in every run of the suite."""
    if n <= limit:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def certify_key(suite: Suite) -> str:
    """The journal key of the suite's ``certify`` section (one cell)."""
    return cell_key("certify", compact(suite.certify.model_dump()), "", "")


def _certify(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
             batch: int, store: ResultStore, progress: Progress, log: Callable[[str], None],
             timings: list[dict[str, Any]]) -> pd.DataFrame:
    """The suite's ``certify`` section as one journalled cell; returns the failing certificates (none expected)."""
    if suite.certify is None:
        return pd.DataFrame()
    key = certify_key(suite)
    if store.is_done(key):
        path = out / CERTIFICATES
        return violations(pd.read_csv(path)) if path.exists() else pd.DataFrame(columns=CERT_COLUMNS)
    tc = time.time()
    rows, broken = certify_suite(suite, handles, evaluated, data, out, batch, progress, log)
    store.add(key, pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(columns=SAMPLE_COLUMNS))
    timings.append({"stage": "certify", "seconds": round(time.time() - tc, 3)})
    return broken
