"""The suite's ``certify`` step: fidelity certificates per designated model, encoder setting, PSNR and Lipschitz
source, then the degradation study over model pairs. Writes ``certificates.csv``, ``lipschitz.csv``, ``angles.csv``
and ``certify.json``, and returns the summary rows for ``results.csv``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from nte_eval.certify.degradation import degradation_study, degradation_summary
from nte_eval.certify.fidelity import CERT_COLUMNS, certificate_rows, measure, summarize, violations
from nte_eval.certify.lipschitz import Float64Network, LipschitzBound, lipschitz_bounds
from nte_eval.data.images import ImageSet
from nte_eval.encoders import ENCODERS
from nte_eval.evaluate.batching import encode_all
from nte_eval.evaluate.labels import compact
from nte_eval.evaluate.run_folder import ANGLES, CERTIFICATES, CERTIFY, LIPSCHITZ, atomic_write
from nte_eval.evaluate.sections import CertifyConfig
from nte_eval.evaluate.suite import Suite
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import spec_name
from nte_eval.progress import Progress


def fidelity_encoders(suite: Suite, designated: str, handle: ModelHandle, cfg: CertifyConfig) -> list:
    """The suite's encoder settings for ``designated``, each at every PSNR of ``cfg.psnr`` (default: its own),
    built, without duplicates."""
    out: dict[str, Any] = {}
    for name, params in suite.encoder_settings(designated):
        for db in cfg.psnr if cfg.psnr is not None else [None]:
            encoder = ENCODERS.get(name)(handle, **{**params, **({} if db is None else {"psnr": db})})
            out.setdefault(f"{name} {compact(encoder.params())}", encoder)
    return list(out.values())


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write through a temporary file so an interrupted run never leaves half a file behind."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)


def certify_steps(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str]) -> int:
    """The steps ``certify_suite`` counts on the run's progress: per designated model one per encoder setting it
    measures and one per Lipschitz source, then one per degradation pair."""
    cfg, designated = suite.certify, [spec_name(s) for s in suite.designated_list()]
    if cfg is None:
        return 0
    steps = 0
    if cfg.fidelity:
        for d in designated:
            n = len(fidelity_encoders(suite, d, handles[d], cfg))
            steps += n + len(cfg.lipschitz) if n else 0
    if cfg.degradation:
        steps += len(evaluated if cfg.pairs == "all" else designated) * (len(evaluated) - 1)
    return steps


def certify_fidelity(suite: Suite, cfg: CertifyConfig, handles: dict[str, ModelHandle], data: ImageSet,
                     batch: int, log, progress: Progress
                     ) -> tuple[pd.DataFrame, list[tuple[str, LipschitzBound]], list[dict]]:
    """Certificates for every designated model; returns (per-sample rows, Lipschitz bounds, one summary per
    designated model, encoder setting and Lipschitz source)."""
    frames, bounds, rows = [], [], []
    for d in (spec_name(s) for s in suite.designated_list()):
        handle = handles[d]
        encoders = fidelity_encoders(suite, d, handle, cfg)
        if not encoders:
            log(f"certify {d}: no encoder setting applies to this designated model; nothing to certify")
            continue
        net = Float64Network(handle)  # the one float64 copy: measurement and every Lipschitz source share it
        measured = []
        bar = progress.bar(total=len(encoders) + len(cfg.lipschitz), desc=f"certify {d}", unit="step")
        for encoder in encoders:
            x_nte = encode_all(encoder, data.images, suite.keys[0], batch, handle.device)[0]
            tag = {"key": 0} if len(suite.keys) > 1 else {}  # certified with the first key (seeds)
            enc_params = compact({**encoder.params(), "designated": d, **tag})
            m = measure(net, data.images, x_nte, batch)
            measured.append((encoder.name, enc_params, encoder.psnr, m))
            bar.update()
            progress.advance()
        # the local estimate looks as far from A(x) as the largest first-layer change it has to cover
        radius = max(float(m["change"].max()) for *_, m in measured)
        found = {}
        for source in cfg.lipschitz:
            bar.set_postfix_str(f"lipschitz {source}")
            found.update(lipschitz_bounds(net, [source], data.images[:cfg.local_samples].to(handle.device), radius,
                                          seed=0))
            bar.update()
            progress.advance()
        bar.close()
        for bound in found.values():
            bounds.append((d, bound))
            log(f"certify {d}: lipschitz {bound.source} = "
                + (f"{bound.value:.4g} ({bound.status}; {bound.detail})" if bound.value is not None
                   else f"refused: {bound.detail}"))
            if bound.value is None:
                continue
            for name, enc_params, db, m in measured:
                truth = m["pred"] if data.label_free else data.labels  # label-free: its own clean prediction
                part = certificate_rows(m, truth, bound, {"designated": d, "encoder": name,
                                                                "encoder_params": enc_params, "psnr": db})
                frames.append(part)
                rows.append({"designated": d, "encoder": name, "encoder_params": enc_params, "psnr": db,
                             "lipschitz": bound.source, "status": bound.status, "n": len(part),
                             "metrics": summarize(part)})
    certs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CERT_COLUMNS)
    return certs, bounds, rows


def certify_suite(suite: Suite, handles: dict[str, ModelHandle], evaluated: list[str], data: ImageSet, out: Path,
                  batch: int, progress: Progress | None = None, log=print) -> tuple[list[tuple], pd.DataFrame]:
    """Run the ``certify`` section; write its files under ``out``. Returns (results rows as ``COLUMNS`` tuples,
    violating certificates). Each step of ``certify_steps`` advances ``progress``."""
    cfg, progress = suite.certify, progress or Progress(enabled=False)
    rows: list[tuple] = []
    certs = pd.DataFrame(columns=CERT_COLUMNS)
    summary: dict[str, Any] = {"config": cfg.model_dump()}
    if cfg.fidelity:
        certs, bounds, table = certify_fidelity(suite, cfg, handles, data, batch, log, progress)
        lip = pd.DataFrame([{"model": d, "source": b.source, "status": b.status, "value": b.value,
                             "detail": b.detail, "seconds": round(b.seconds, 3)} for d, b in bounds])
        _write_csv(certs, out / CERTIFICATES)
        _write_csv(lip, out / LIPSCHITZ)
        summary["fidelity"] = table
        rows = [(t["encoder"], t["encoder_params"], "certify", compact({"lipschitz": t["lipschitz"],
                                                                        "status": t["status"]}),
                 t["designated"], "designated", metric, value, t["n"])
                for t in table for metric, value in t["metrics"].items()]
    if cfg.degradation:
        designated = [spec_name(s) for s in suite.designated_list()]
        pair_models = evaluated if cfg.pairs == "all" else designated
        pairs = degradation_study({n: handles[n] for n in evaluated}, pair_models, data, cfg.degradation_psnr,
                                  cfg.tau, suite.keys[0], batch, progress)
        _write_csv(pairs, out / ANGLES)
        summary["degradation"] = degradation_summary(pairs, cfg.degradation_psnr)
    with atomic_write(out / CERTIFY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    return rows, violations(certs)


