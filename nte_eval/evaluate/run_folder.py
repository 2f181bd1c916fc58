"""The run folder's layout: the one place that names its files (results, journal, manifest, certificates, report,
example arrays)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

FILES = ("results.csv", "samples.csv", "cells.jsonl", "manifest.json", "results.parquet", "worst_case.csv",
         "warnings.json", "report.pdf", "certificates.csv", "lipschitz.csv", "angles.csv", "certify.json",
         "spectra.csv", "summary.md", "summary.tex", "transfer_matrix.csv", "collapse_psnr.csv")
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
