"""The run folder's layout: the one place that names its files (results, journal, manifest, certificates, report,
example arrays)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import timm
import torch

import nte_eval

# 2: encoder_params records every declared encoder parameter (project_iters, and border in patch mode too), so runs
# written before cannot be resumed: their cell keys differ.
RESULTS_FORMAT = 2
RESULTS = "results.csv"  # tidy metrics, one row per cell, model and metric
RESULTS_PARQUET = "results.parquet"  # the same, as Parquet
SAMPLES = "samples.csv"  # per-sample correctness (for the unions)
JOURNAL = "cells.jsonl"  # one line per finished cell (resume)
MANIFEST = "manifest.json"  # versions, seeds, config hash, timings
WORST_CASE = "worst_case.csv"  # best single attack, per level, unions
WARNINGS = "warnings.json"  # the sanity checks' warnings
SPECTRA = "spectra.csv"  # first-layer singular values per model
CERTIFICATES = "certificates.csv"  # fidelity certificates per sample
LIPSCHITZ = "lipschitz.csv"  # each Lipschitz source's bound or refusal
ANGLES = "angles.csv"  # the degradation study's model pairs
CERTIFY = "certify.json"  # the certification's summary
REPORT = "report.pdf"  # the report
SUMMARY_MD = "summary.md"  # the report's tables as Markdown
SUMMARY_TEX = "summary.tex"  # ... and as LaTeX
TRANSFER_MATRIX = "transfer_matrix.csv"  # accuracy per designated and unauthorized model
COLLAPSE_PSNR = "collapse_psnr.csv"  # the PSNR at which each model collapses
FILES = (RESULTS, RESULTS_PARQUET, SAMPLES, JOURNAL, MANIFEST, WORST_CASE, WARNINGS, SPECTRA, CERTIFICATES,
         LIPSCHITZ, ANGLES, CERTIFY, REPORT, SUMMARY_MD, SUMMARY_TEX, TRANSFER_MATRIX, COLLAPSE_PSNR)
EXAMPLES = "examples"  # the gallery's image arrays (and PNGs), one file per cell
N_EXAMPLES = 3  # images kept per cell


def example_file(out: Path, *key: str) -> Path:
    """The file of one cell's reconstructions (key: encoder, encoder_params, attack, attack_params), of one
    setting's NTEs (key: encoder, encoder_params) or of the clean images (no key)."""
    name = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16] if key else "clean"
    return Path(out) / EXAMPLES / f"{name}.npy"


def save_examples(path: Path, images: torch.Tensor) -> None:
    """Write the first ``N_EXAMPLES`` images atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.save(f, images[:N_EXAMPLES].detach().cpu().float().numpy())
    os.replace(tmp, path)


def environment() -> dict[str, str]:
    """Versions of what produced the results, for the manifest."""
    return {"nte_eval": nte_eval.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform()}
