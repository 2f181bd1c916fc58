"""The suite's ``certify`` step: fidelity certificates per designated model, encoder setting, PSNR and Lipschitz
source, then the degradation study over model pairs. Writes ``certificates.csv``, ``lipschitz.csv``, ``angles.csv``
and ``certify.json``, and returns the summary rows for ``results.csv``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.certify.degradation import degradation_study, rank_correlation
from nte_eval.certify.fidelity import (
    CERT_COLUMNS,
    certificate_rows,
    float64_module,
    measure,
    summarize,
    violations,
)
from nte_eval.certify.lipschitz import LipschitzBound, lipschitz_bounds
from nte_eval.data import ImageSet
from nte_eval.encoders import ENCODERS
from nte_eval.handles import ModelHandle
from nte_eval.suite import CertifyConfig, Suite, spec_name

SUMMARY_METRICS = ("cert_pass_rate", "certified_accuracy", "certified_fraction", "bound_tightness")


def _compact(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def fidelity_encoders(suite: Suite, designated: str, handle: ModelHandle, cfg: CertifyConfig) -> list:
    """The suite's encoder settings for ``designated``, each at every PSNR of ``cfg.psnr`` (default: its own),
    built, without duplicates."""
    out: dict[str, Any] = {}
    for name, params in suite.encoder_settings(designated):
        for db in cfg.psnr if cfg.psnr is not None else [None]:
            encoder = ENCODERS.get(name)(handle, **{**params, **({} if db is None else {"psnr": db})})
            out.setdefault(f"{name} {_compact(encoder.params())}", encoder)
    return list(out.values())


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write through a temporary file so an interrupted run never leaves half a file behind."""
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def certify_fidelity(suite: Suite, cfg: CertifyConfig, handles: dict[str, ModelHandle], data: ImageSet,
                     batch: int, log) -> tuple[pd.DataFrame, list[tuple[str, LipschitzBound]], list[dict]]:
    """Certificates for every designated model; returns (per-sample rows, Lipschitz bounds, one summary per
    designated model, encoder setting and Lipschitz source)."""
    frames, bounds, rows = [], [], []
    for d in (spec_name(s) for s in suite.designated_list()):
        handle = handles[d]
        module64 = float64_module(handle)
        measured = []
        for encoder in fidelity_encoders(suite, d, handle, cfg):
            encoder.fit()
            x_nte = torch.cat([encoder.encode(data.images[i:i + batch].to(handle.device), key=suite.seed,
                                              index=list(range(i, min(i + batch, len(data)))),
                                              record=False).images.cpu() for i in range(0, len(data), batch)])
            enc_params = _compact({**encoder.params(), "designated": d})
            m = measure(handle, module64, data.images, x_nte, batch)
            measured.append((encoder.name, enc_params, encoder.psnr, m))
        radius = max(float(m["change"].max()) for *_, m in measured)
        local_x = data.images[:cfg.local_samples].to(handle.device)
        found = lipschitz_bounds(handle, list(cfg.lipschitz), local_x, radius, seed=0)
        for bound in found.values():
            bounds.append((d, bound))
            log(f"certify {d}: lipschitz {bound.source} = "
                + (f"{bound.value:.4g} ({bound.status}; {bound.detail})" if bound.value is not None
                   else f"refused: {bound.detail}"))
            if bound.value is None:
                continue
            for name, enc_params, db, m in measured:
                part = certificate_rows(m, data.labels, bound, {"designated": d, "encoder": name,
                                                                "encoder_params": enc_params, "psnr": db})
                frames.append(part)
                rows.append({"designated": d, "encoder": name, "encoder_params": enc_params, "psnr": db,
                             "lipschitz": bound.source, "status": bound.status, "n": len(part), **summarize(part)})
    certs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CERT_COLUMNS)
    return certs, bounds, rows


def certify_suite(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
                  batch: int, progress: bool = True, log=print) -> tuple[list[tuple], pd.DataFrame]:
    """Run the ``certify`` section; write its files under ``out``. Returns (results rows as ``COLUMNS`` tuples,
    violating certificates)."""
    cfg = suite.certify
    rows: list[tuple] = []
    certs = pd.DataFrame(columns=CERT_COLUMNS)
    summary: dict[str, Any] = {"config": cfg.model_dump()}
    if cfg.fidelity:
        certs, bounds, table = certify_fidelity(suite, cfg, handles, data, batch, log)
        lip = pd.DataFrame([{"model": d, "source": b.source, "status": b.status, "value": b.value,
                             "detail": b.detail, "seconds": round(b.seconds, 3)} for d, b in bounds])
        _write_csv(certs, out / "certificates.csv")
        _write_csv(lip, out / "lipschitz.csv")
        summary["fidelity"] = table
        rows = [(t["encoder"], t["encoder_params"], "certify", _compact({"lipschitz": t["lipschitz"],
                                                                          "status": t["status"]}),
                 t["designated"], "designated", metric, t[metric], t["n"]) for t in table for metric in SUMMARY_METRICS]
    if cfg.degradation:
        designated = [spec_name(s) for s in suite.designated_list()]
        pair_models = evaluated if cfg.pairs == "all" else designated
        pairs = degradation_study({n: handles[n] for n in evaluated}, pair_models, data, cfg.degradation_psnr,
                                  cfg.tau, suite.seed, batch, progress)
        _write_csv(pairs, out / "angles.csv")
        summary["degradation"] = {
            "psnr": cfg.degradation_psnr, "pairs": len(pairs),
            "spearman_misalignment": rank_correlation(pairs, "misalignment"),
            "spearman_predicted_energy": rank_correlation(pairs, "energy_predicted"),
            "energy_agree_fraction": float(pairs.energy_agrees.mean()) if len(pairs) else math.nan,
            "lower_bound_holds": bool(pairs.lower_bound_holds.dropna().all()) if len(pairs) else None}
    (out / "certify.json").write_text(json.dumps(summary, indent=2, default=str))
    return rows, violations(certs)


def certification_table(out: Path) -> pd.DataFrame:
    """Certified accuracy (%), pass rate (%) and median tightness per designated model, encoder setting, PSNR and
    Lipschitz source, from ``certify.json``; refused sources appear with their reason in ``lipschitz.csv``."""
    from nte_eval.runner import setting_label

    table = pd.DataFrame(json.loads((Path(out) / "certify.json").read_text()).get("fidelity", []))
    if table.empty:
        return table
    params = table.encoder_params.map(json.loads)
    table["setting"] = table.encoder + " " + params.map(lambda p: setting_label({k: v for k, v in p.items()
                                                                                  if k != "psnr"}))
    table["source"] = table.lipschitz + " (" + table.status + ")"
    table["certified %"] = (100 * table.certified_accuracy).round(1)
    table["pass %"] = (100 * table.cert_pass_rate).round(1)
    table["tightness"] = table.bound_tightness.map(lambda v: f"{v:.2g}")
    return table.set_index(["designated", "setting", "psnr", "source"])[["certified %", "pass %", "tightness"]]


def degradation_line(out: Path) -> str:
    """One line: Spearman's rho of misalignment against accuracy drop, and the energy agreement."""
    deg = json.loads((Path(out) / "certify.json").read_text()).get("degradation")
    if not deg:
        return ""
    rho = deg["spearman_misalignment"]
    return (f"Degradation at {deg['psnr']:g} dB over {deg['pairs']} model pairs: Spearman rho(misalignment, accuracy "
            f"drop) = {rho['rho']:.3f} (p = {rho['p_value']:.3g}); predicted/measured first-layer energy agree for "
            f"{100 * deg['energy_agree_fraction']:.0f}% of pairs; principal-angle lower bound "
            f"{'holds for every pair' if deg['lower_bound_holds'] else 'FAILS for some pair'} (angles.csv).")
