"""Run a suite: every (designated model x encoder setting x attack) cell, every model evaluated, tidy results."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import nte_eval
from nte_eval.attacks.base import Attack, AttackContext, build_attack
from nte_eval.checks import run_checks
from nte_eval.data import ImageSet, check_images, load_data
from nte_eval.encoders import ENCODERS, Encoder, sample_seed
from nte_eval.errors import NTEError
from nte_eval.glue import TASKS, task_metric
from nte_eval.handles import ModelHandle, load_model
from nte_eval.metrics import psnr, relative_change
from nte_eval.reports.gallery import example_file, save_examples
from nte_eval.reports.spectra import spectrum_rows
from nte_eval.store import COLUMNS, SAMPLE_COLUMNS, ResultStore, cell_key, setting_name
from nte_eval.suite import Suite, spec_name
from nte_eval.summary import worst_case
from nte_eval.tokens import bytes_per_example, recovered, token_psnr


def compact(params: dict[str, Any]) -> str:
    """Parameters as compact JSON with sorted keys (the results' key format)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass
class Evaluated:
    """A model's clean logits and clean first-layer responses on the evaluation data."""

    handle: ModelHandle
    logits: torch.Tensor
    response: torch.Tensor

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(1)


def batched_logits(handle: ModelHandle, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    """Logits of every sample, batch by batch; each batch with its positions in the data (a VLM's questions)."""
    return torch.cat([handle.logits(x[i:i + batch].to(device), list(range(i, min(i + batch, len(x))))).cpu()
                      for i in range(0, len(x), batch)])


def first_layer_responses(handle: ModelHandle, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([handle.first_layer_response(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def encode_all(encoder: Encoder, x: torch.Tensor, key: int | str, batch: int,
               device: str | torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """The encoder's output for every image (on the CPU), batch by batch with each image's own index, and the
    encoder's info record."""
    encoder.fit()
    images = []
    for i in range(0, len(x), batch):
        res = encoder.encode(x[i:i + batch].to(device), key=key, index=list(range(i, min(i + batch, len(x)))),
                             record=False)
        images.append(res.images.cpu())
    return torch.cat(images), res.info


def load_models(suite: Suite, device: str) -> dict[str, ModelHandle]:
    """Load every model named in the suite once, keyed by display name."""
    handles: dict[str, ModelHandle] = {}
    for spec in [*suite.designated_list(), *suite.models, *suite.surrogates]:
        name = spec_name(spec)
        if name not in handles:
            clean = {k: v for k, v in spec.items() if k != "name"} if isinstance(spec, dict) else spec
            handle = load_model(clean)
            handle.spec = name
            handles[name] = handle.to(device)
    return handles


def load_suite_data(suite: Suite, handles: dict[str, ModelHandle]) -> ImageSet:
    """Load the suite's data at the designated model's input size, and check every model accepts it."""
    first = handles[spec_name(suite.designated_list()[0])]
    d = suite.data
    if d.modality == "text":
        return load_text_data(suite, handles)
    if first.modality != "image":
        raise NTEError(f"data source {d.source!r} holds images, but the designated model {first.spec} is a text model.")
    c, h, _ = first.input_size
    if d.source == "mmbench_tsv":
        from nte_eval.mmbench import load_mmbench_tsv

        data = load_mmbench_tsv(d.path, d.size or h, d.limit)
        for name, handle in handles.items():
            if not hasattr(handle, "bind"):
                raise NTEError(f"model {name} is not a vision-language model; mmbench_tsv questions need hf-vlm: "
                               "models for every role.")
            handle.bind(data.extras)
    else:
        data = load_data(d.source, d.split, d.limit, d.root, d.size or h, c)
    check_images(data.images, f"data ({d.source})", channels=c)
    for name, handle in handles.items():
        if handle.modality != "image":
            raise NTEError(f"model {name} is a text model but the data ({d.source}) holds images.")
        if getattr(handle, "resizes_input", False) and name != first.spec:
            continue  # a VLM resizes what it is given (its processor would); the designated one gets its own size
        if tuple(data.images.shape[1:]) != handle.input_size:
            raise NTEError(f"model {name} expects input {handle.input_size} but the data is "
                           f"{tuple(data.images.shape[1:])}; use models with one input size, or set data.size.")
    if (data.labels < 0).all():
        raise NTEError(f"data source {d.source!r} has no labels; accuracy needs a labelled source.")
    return data


def load_text_data(suite: Suite, handles: dict[str, ModelHandle]) -> ImageSet:
    """A GLUE TSV file tokenised by the designated model's tokenizer, as packed clean tokens; every text model in the
    suite must share that vocabulary (soft tokens are rows over it)."""
    from nte_eval.glue import load_glue_tsv

    d = suite.data
    designated = handles[spec_name(suite.designated_list()[0])]
    for name, handle in handles.items():
        if handle.modality != "text":
            raise NTEError(f"model {name} is an image model but the data ({d.source}) is text; use hf-text: models.")
        if handle.vocabulary != designated.vocabulary or handle.vocab_size != designated.vocab_size:
            raise NTEError(f"tokenizer mismatch: {name} (vocabulary {handle.vocabulary}, {handle.vocab_size} "
                           f"rows) and the designated {designated.spec} (vocabulary {designated.vocabulary}, "
                           f"{designated.vocab_size} rows) do not share one vocabulary, so the same soft tokens mean "
                           "different words to them. Compare models over one tokenizer (e.g. all BERT uncased).")
    text = load_glue_tsv(d.path, d.task, d.limit)
    limit = getattr(designated.module.config, "max_position_embeddings", None)
    if limit is not None and d.max_length > limit:
        raise NTEError(f"data.max_length {d.max_length} exceeds {designated.spec}'s {limit} positions; lower it.")
    designated.max_length = d.max_length
    packed = designated.tokenize(text.texts, text.pairs)
    segments = designated.segment_ids(text.texts, text.pairs)
    extras = [{"text": t, "pair": p, "segments": s}
              for t, p, s in zip(text.texts, text.pairs or [None] * len(text.texts), segments, strict=True)]
    for handle in handles.values():
        handle.bind(extras)  # sentence pairs: every BERT-style model reads the same segment ids
    return ImageSet(packed, text.labels, text.class_names, text.names, extras, "text")


def load_public_text(suite: Suite, data: ImageSet, designated: ModelHandle) -> ImageSet | None:
    """The attackers' public clean texts (a GLUE TSV), tokenised like the data; none may be an evaluated text."""
    from nte_eval.glue import load_glue_tsv

    cfg = suite.public
    if cfg is None:
        return None
    if cfg.source != "glue_tsv" or not cfg.path:
        raise NTEError("public: text attackers' public data is a GLUE TSV: {source: glue_tsv, path: train.tsv}.")
    text = load_glue_tsv(cfg.path, cfg.task or suite.data.task, cfg.limit)
    evaluated = {(e["text"], e["pair"]) for e in data.extras}
    overlap = sum((t, p) in evaluated for t, p in zip(text.texts, text.pairs or [None] * len(text.texts),
                                                     strict=True))
    if overlap:
        raise NTEError(f"{overlap} public text(s) are also evaluated texts; the attackers' public texts must be "
                       "disjoint from the data (e.g. data dev.tsv, public train.tsv).")
    return ImageSet(designated.tokenize(text.texts, text.pairs), text.labels, text.class_names, text.names,
                    modality="text")


def load_public(suite: Suite, data: ImageSet, designated: ModelHandle) -> ImageSet | None:
    """The attackers' public clean images at the data's size; an error if any of them is an evaluated image."""
    if data.modality == "text":
        return load_public_text(suite, data, designated)
    cfg = suite.public_config()
    if cfg is None:
        return None
    c, h, _ = data.images.shape[1:]
    public = load_data(cfg.source, cfg.split, cfg.limit, cfg.root, cfg.size or h, c)
    check_images(public.images, f"public ({cfg.source})", channels=c)
    if tuple(public.images.shape[1:]) != tuple(data.images.shape[1:]):
        raise NTEError(f"public images are {tuple(public.images.shape[1:])} but the data is "
                       f"{tuple(data.images.shape[1:])}; set public.size.")
    seen = {_digest(x) for x in data.images}
    overlap = sum(_digest(x) in seen for x in public.images)
    if overlap:
        raise NTEError(f"{overlap} public image(s) are also evaluated images; the attackers' public images must be "
                       f"disjoint from the data (e.g. data split 'test', public split 'train').")
    return public


def _digest(x: torch.Tensor) -> bytes:
    return hashlib.sha1(torch.round(x * 255).to(torch.uint8).numpy().tobytes()).digest()


def public_settings(encoder: Encoder) -> dict[str, Any]:
    """What a method-knowledge attacker knows (Kerckhoffs): the encoder, its settings and the designated
    architecture's first-layer geometry and normalisation; never the key or the weights."""
    h = encoder.handle
    if h.modality == "text":
        v, dim = h.embedding.shape
        return {"type": encoder.name, "params": encoder.params(), "view": None, "vocab_size": v,
                "embedding_dim": dim, "vocabulary": h.vocabulary}
    geometry = {k: v for k, v in h.first.geometry().items() if k != "layer"}
    return {"type": encoder.name, "params": encoder.params(), "view": getattr(encoder, "mode", None),
            "first_layer": geometry, "mean": h.mean.flatten().tolist(), "std": h.std.flatten().tolist(),
            "input_size": list(h.input_size)}


def apply_attack(attack: Attack, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([attack(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def _bits(correct: torch.Tensor) -> str:
    return "".join("1" if c else "0" for c in correct.tolist())


def logit_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| per sample over the finite logits (a VLM scores the options a question lacks -inf)."""
    both = torch.isfinite(new) & torch.isfinite(old)
    return torch.where(both, new - old, torch.zeros_like(new)).norm(dim=1)


def input_metrics(x_nte: torch.Tensor, x_rec: torch.Tensor, clean: ImageSet) -> list[tuple[str, torch.Tensor]]:
    """The cell's input-space measurements: pixel PSNRs for images; for text the NTEs' token PSNR and the share of
    tokens the reconstruction reads back right (argmax), and the NTEs' storage per example (sparse format; in the
    results so that a resumed run keeps it). A reconstruction's token PSNR would depend on the slot count
    (a hard token that is wrong everywhere scores 10 log10(K / 2) dB), so token recovery replaces it."""
    if clean.modality == "text":
        return [("psnr", token_psnr(x_nte, clean.images).mean()),
                ("token_recovery", recovered(x_rec, clean.images).mean()),
                ("bytes_per_example", torch.tensor(bytes_per_example(x_nte)))]
    return [("psnr", psnr(x_nte, clean.images).mean()), ("recon_psnr", psnr(x_rec, clean.images).mean()),
            ("change_psnr", psnr(x_rec, x_nte).mean())]


def evaluate_cell(x_nte: torch.Tensor, x_rec: torch.Tensor, x_cal: torch.Tensor, clean: ImageSet,
                  models: dict[str, Evaluated], designated: str, encoded_correct: torch.Tensor, batch: int,
                  device: str, metric: str = "accuracy") -> tuple[list[tuple], list[tuple]]:
    """Metrics of every model on one cell: (model, role, metric, value, n) rows and per-sample correctness rows
    (model, input, bits) for the reconstructions of the NTEs ('attacked') and of the clean images ('clean').
    ``metric``: a GLUE task's own metric (``mcc``, ``f1``), added beside accuracy on the NTEs' reconstructions
    and on clean inputs (``clean_mcc``...)."""
    rows, samples = [], []
    labels = clean.labels
    n = len(labels)
    measured = input_metrics(x_nte, x_rec, clean)
    for name, ev in models.items():
        logits = batched_logits(ev.handle, x_rec, batch, device)
        correct = logits.argmax(1) == labels
        cal_correct = batched_logits(ev.handle, x_cal, batch, device).argmax(1) == labels
        ratio = relative_change(first_layer_responses(ev.handle, x_rec, batch, device), ev.response)
        role = "designated" if name == designated else "unauthorized"
        metrics = [("clean_accuracy", (ev.preds == labels).double().mean()),
                   ("accuracy", correct.double().mean()),
                   ("agreement", (logits.argmax(1) == ev.preds).double().mean()),
                   ("logit_change", logit_change(logits, ev.logits).mean()),
                   *measured,
                   ("first_layer_ratio", ratio.mean()),
                   ("attacked_clean_accuracy", cal_correct.double().mean())]
        if metric != "accuracy":
            metrics += [(metric, task_metric(metric, logits.argmax(1), labels)),
                        (f"clean_{metric}", task_metric(metric, ev.preds, labels))]
        if role == "designated":
            metrics.append(("encoded_accuracy", encoded_correct.double().mean()))
        rows += [(name, role, metric_name, float(value), n) for metric_name, value in metrics]
        samples += [(name, "attacked", _bits(correct)), (name, "clean", _bits(cal_correct))]
    return rows, samples


def environment() -> dict[str, str]:
    import numpy
    import timm

    return {"nte_eval": nte_eval.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


@functools.cache
def knowledge_of(attack: str, params: str) -> str:
    """An attack setting's threat-model level (a chain's is its strongest step's)."""
    return build_attack({"type": attack, **json.loads(params)}).knowledge


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", batch_size: int | None = None,
              progress: bool = True, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print, attacks: bool = True) -> pd.DataFrame:
    """Evaluate every cell of the suite, then its ``certify`` section; write ``results.csv``/``.parquet``,
    ``samples.csv``, ``worst_case.csv``, ``warnings.json``, ``manifest.json`` (and the certification files) under
    ``out``. With ``resume``, journalled cells are skipped; ``attacks=False`` runs the certification alone.

    A certificate that a certified Lipschitz bound does not keep is a bug: after every file is written, it raises
    NTEError naming how many failed and the first one."""
    out = Path(out)
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
    metric = TASKS[suite.data.task].metric if data.modality == "text" else "accuracy"
    timings, subspaces = [], {}
    cell_keys = [cell_key(e.name, compact({**e.params(), "designated": d}), a, compact(p))
                 for (d, _), e in encoders.items() for a, p in attack_settings]
    save_examples(example_file(out), data.images)
    done = sum(store.is_done(k) for k in cell_keys)
    if attacks:
        unit = "texts" if data.modality == "text" else "images"
        log(f"{len(encoders)} encoder setting(s) x {len(attack_settings)} attack setting(s) = {len(cell_keys)} cells, "
            f"{len(evaluated_names)} models, {len(data)} {unit}" + (f"; {done} cells already done" if done else ""))
    overall = tqdm(total=len(cell_keys), desc="cells", disable=not progress or not attacks, initial=done)
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
        context = AttackContext(seed=attacker_seed, device=device, public=public, ntes=x_nte,
                                encoder=public_settings(encoder), designated=handles[d],
                                surrogates={s: handles[s] for s in surrogate_names if s != d})
        # The cell's models: the designated one and every other evaluated model (unauthorized).
        models = {d: evaluated[d], **{k: v for k, v in evaluated.items() if k != d}}
        timings.append({"designated": d, "encoder_params": enc_params, "stage": "encode",
                        "seconds": round(time.time() - tc, 3)})
        for (att_name, att_params), key in zip(attack_settings, keys, strict=True):
            if store.is_done(key):
                continue
            tc = time.time()
            steps = tqdm(total=3, desc=f"{att_name}", leave=False, disable=not progress)
            attack = build_attack({"type": att_name, **att_params}).fit(context)
            steps.update()
            x_rec = apply_attack(attack, x_nte, batch, device)
            x_cal = apply_attack(attack, data.images, batch, device)
            steps.update()
            rows, samples = evaluate_cell(x_nte, x_rec, x_cal, data, models, d, encoded_correct, batch, device,
                                          metric)
            steps.update()
            steps.close()
            head = (encoder.name, enc_params, att_name, compact(att_params))
            save_examples(example_file(out, *head), x_rec)
            store.add(key, pd.DataFrame([(*head, *r) for r in rows], columns=COLUMNS),
                      pd.DataFrame([(*head, *r) for r in samples], columns=SAMPLE_COLUMNS))
            timings.append({"designated": d, "encoder_params": enc_params, "attack": att_name,
                            "attack_params": compact(att_params), "seconds": round(time.time() - tc, 3)})
            overall.update()
    overall.close()
    broken = _certify(suite, handles, evaluated_names, data, out, batch, store, progress, log, timings)
    pd.concat([spectrum_rows(n, handles[n]) for n in evaluated_names]).to_csv(out / "spectra.csv", index=False)
    results, samples = store.load()
    results.to_parquet(out / "results.parquet", index=False)
    worst_case(results, samples, knowledge_of).to_csv(out / "worst_case.csv", index=False)
    warnings = run_checks(results)
    if (out / "angles.csv").exists():
        from nte_eval.certify.degradation import degradation_warnings

        warnings += degradation_warnings(pd.read_csv(out / "angles.csv"))
    for w in warnings:
        log(f"warning [{w['check']}]: {w['message']}")
    (out / "warnings.json").write_text(json.dumps(warnings, indent=2))
    manifest = {"suite": suite.name, "config_hash": suite.config_hash(), "status": "complete", "seed": suite.seed,
                "device": device, "batch_size": batch, "config": suite.model_dump(), "environment": environment(),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "data": {"source": suite.data.source, "split": suite.data.split, "n": len(data),
                         "modality": data.modality, "metric": metric,
                         "shape": list(data.images.shape[1:]),
                         "chance": float(torch.bincount(data.labels).max()) / len(data)},
                "public": None if public is None else {"n": len(public), **suite.public_config().model_dump()},
                "models": {name: h.describe() for name, h in handles.items()}, "subspaces": subspaces,
                "attacks": [{"type": a, "params": p, "knowledge": knowledge_of(a, compact(p))}
                            for a, p in attack_settings],
                "timings": {"total_seconds": round(time.time() - t0, 3), "resumed": resume, "cells": timings}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    if len(broken):
        raise NTEError(f"{len(broken)} certificate(s) of a certified Lipschitz bound failed (first: "
                       f"{broken.iloc[0].designated}, sample {broken.iloc[0]['sample']}, "
                       f"{broken.iloc[0].lipschitz_source}): a bug in nte-eval; see {out / 'certificates.csv'} "
                       f"(column passed) and report it.")
    return results


def _certify(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
             batch: int, store: ResultStore, progress: bool, log: Callable[[str], None],
             timings: list[dict[str, Any]]) -> pd.DataFrame:
    """The suite's ``certify`` section as one journalled cell; returns the failing certificates (none expected)."""
    if suite.certify is None:
        return pd.DataFrame()
    from nte_eval.certify.fidelity import CERT_COLUMNS, violations
    from nte_eval.certify.run import certify_suite

    key = cell_key("certify", compact(suite.certify.model_dump()), "", "")
    if store.is_done(key):
        path = out / "certificates.csv"
        return violations(pd.read_csv(path)) if path.exists() else pd.DataFrame(columns=CERT_COLUMNS)
    tc = time.time()
    rows, broken = certify_suite(suite, handles, evaluated, data, out, batch, progress, log)
    store.add(key, pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(columns=SAMPLE_COLUMNS))
    timings.append({"stage": "certify", "seconds": round(time.time() - tc, 3)})
    return broken
