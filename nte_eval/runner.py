"""Run a suite: every (designated model x encoder setting x attack) cell, every model evaluated, tidy results."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

import nte_eval
from nte_eval.data import ImageSet, check_images, load_data
from nte_eval.encoders import ENCODERS
from nte_eval.errors import NTEError
from nte_eval.handles import ModelHandle, load_model
from nte_eval.metrics import relative_change
from nte_eval.suite import Suite, expand, spec_name

COLUMNS = ["encoder", "encoder_params", "attack", "attack_params", "model", "role", "metric", "value", "n"]


def compact(params: dict[str, Any]) -> str:
    """Parameters as compact JSON with sorted keys (the results' key format)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


@dataclass
class Evaluated:
    """A model's clean logits on the evaluation data."""

    handle: ModelHandle
    logits: torch.Tensor

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(1)


def batched_logits(handle: ModelHandle, x: torch.Tensor, batch: int, device: str) -> torch.Tensor:
    return torch.cat([handle.logits(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def load_models(suite: Suite, device: str) -> dict[str, ModelHandle]:
    """Load every model named in the suite once, keyed by display name."""
    handles: dict[str, ModelHandle] = {}
    for spec in [*suite.designated_list(), *suite.models]:
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
    c, h, _ = first.input_size
    d = suite.data
    data = load_data(d.source, d.split, d.limit, d.root, d.size or h, c)
    check_images(data.images, f"data ({d.source})", channels=c)
    for name, handle in handles.items():
        if tuple(data.images.shape[1:]) != handle.input_size:
            raise NTEError(f"model {name} expects input {handle.input_size} but the data is "
                           f"{tuple(data.images.shape[1:])}; use models with one input size, or set data.size.")
    if (data.labels < 0).all():
        raise NTEError(f"data source {d.source!r} has no labels; accuracy needs a labelled source.")
    return data


def evaluate_cell(x_att: torch.Tensor, clean: ImageSet, models: dict[str, Evaluated], designated: str,
                  psnr: torch.Tensor, batch: int, device: str) -> list[tuple[str, str, str, float, int]]:
    """Metrics of every model on one cell's images: (model, role, metric, value, n)."""
    rows = []
    labels = clean.labels
    n = len(labels)
    for name, ev in models.items():
        logits = batched_logits(ev.handle, x_att, batch, device)
        preds = logits.argmax(1)
        ratio = torch.cat([relative_change(ev.handle.first_layer_response(x_att[i:i + batch].to(device)),
                                           ev.handle.first_layer_response(clean.images[i:i + batch].to(device)))
                           .cpu() for i in range(0, n, batch)])
        role = "designated" if name == designated else "unauthorized"
        for metric, value in (("clean_accuracy", (ev.preds == labels).float().mean()),
                              ("accuracy", (preds == labels).float().mean()),
                              ("agreement", (preds == ev.preds).float().mean()),
                              ("logit_change", (logits - ev.logits).norm(dim=1).mean()),
                              ("psnr", psnr.mean()),
                              ("first_layer_ratio", ratio.mean())):
            rows.append((name, role, metric, float(value), n))
    return rows


def environment() -> dict[str, str]:
    import numpy
    import timm

    return {"nte_eval": nte_eval.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__, "platform": platform.platform()}


def run_suite(suite: Suite, out: str | Path, device: str = "cpu", batch_size: int | None = None,
              progress: bool = True) -> pd.DataFrame:
    """Evaluate the suite and write ``results.csv``/``.parquet`` and ``manifest.json`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = batch_size or suite.batch_size
    t0 = time.time()
    handles = load_models(suite, device)
    data = load_suite_data(suite, handles)
    evaluated = {name: Evaluated(h, batched_logits(h, data.images, batch, device)) for name, h in handles.items()}
    designated = [spec_name(s) for s in suite.designated_list()]
    cells = [(d, enc.type, params, att.type, att_params) for d in designated for enc in suite.encoders
             for params in expand(enc) for att in suite.attacks for att_params in expand(att)]
    csv_path = out / "results.csv"
    csv_path.unlink(missing_ok=True)
    timings, subspaces, frames = [], {}, []
    for d, enc_type, params, att_type, att_params in tqdm(cells, desc="cells", disable=not progress):
        tc = time.time()
        encoder = ENCODERS.get(enc_type)(handles[d], **params).fit()
        images, psnrs = [], []
        for i in range(0, len(data), batch):
            res = encoder.encode(data.images[i:i + batch].to(device), key=suite.seed,
                                 index=list(range(i, min(i + batch, len(data)))))
            images.append(res.images.cpu())
            psnrs.append(res.psnr.cpu())
        enc_params = compact({**encoder.params(), "designated": d})
        subspaces[f"{enc_type} {enc_params}"] = res.info
        x_att = torch.cat(images)  # identity attack: the attacks issue adds reconstructions here
        # The cell's models: the designated one and every other model of the suite (unauthorized).
        models = {d: evaluated[d], **{k: v for k, v in evaluated.items() if k != d}}
        rows = evaluate_cell(x_att, data, models, d, torch.cat(psnrs), batch, device)
        frame = pd.DataFrame([(enc_type, enc_params, att_type, compact(att_params), *r) for r in rows],
                             columns=COLUMNS)
        frame.to_csv(csv_path, mode="a", header=not csv_path.exists(), index=False)
        frames.append(frame)
        timings.append({"designated": d, "encoder": enc_type, "encoder_params": enc_params, "attack": att_type,
                        "seconds": round(time.time() - tc, 3)})
    results = pd.concat(frames, ignore_index=True)
    results.to_parquet(out / "results.parquet", index=False)
    manifest = {"suite": suite.name, "config_hash": suite.config_hash(), "seed": suite.seed, "device": device,
                "batch_size": batch, "config": suite.model_dump(), "environment": environment(),
                "data": {"source": suite.data.source, "split": suite.data.split, "n": len(data),
                         "shape": list(data.images.shape[1:])},
                "models": {name: h.describe() for name, h in handles.items()}, "subspaces": subspaces,
                "timings": {"total_seconds": round(time.time() - t0, 3), "cells": timings}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return results


def headline(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per (designated, encoder setting): the designated model's first (column ``DESIGNATED``), then
    each unauthorized model's (blank in the designated model's own column)."""
    acc = results[results.metric == "accuracy"].copy()
    params = acc.encoder_params.map(json.loads)
    acc["designated"] = params.map(lambda p: p.pop("designated"))
    acc["setting"] = acc.encoder + " " + params.map(
        lambda p: " ".join(f"{k}={p[k]}" for k in ("psnr", "box", "quantize", "mode", "noise") if k in p))
    acc["column"] = acc.model.where(acc.role == "unauthorized", "DESIGNATED")
    table = acc.pivot_table(index=["designated", "setting"], columns="column", values="value", sort=False)
    table = table[["DESIGNATED", *[c for c in table.columns if c != "DESIGNATED"]]]
    table.columns.name = "accuracy %"
    return (100 * table).round(1)
