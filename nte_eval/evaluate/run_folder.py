"""The run folder's layout: the one place that names its files (results, journal, manifest, certificates, report,
example arrays)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import nte_eval

# 2: encoder_params records every declared encoder parameter (project_iters, and border in patch mode too), so runs
# written before cannot be resumed: their cell keys differ.
# 3: finished work is stored per item (cell x shard) under shards/, not journalled in cells.jsonl.
RESULTS_FORMAT = 3
RESULTS = "results.csv"  # tidy metrics, one row per cell, model and metric
RESULTS_PARQUET = "results.parquet"  # the same, as Parquet
SAMPLES = "samples.csv"  # per-sample correctness (for the unions)
PLAN = "plan.json"  # the run's items (cell x shard) and what the manifest says about the run
SHARDS = "shards"  # one checksummed Parquet file per finished item (resume, merge)
CLEAN = "clean"  # each model's clean logits and first-layer response norms per shard (computed once per run)
FITS = "fits"  # fitted attacks' states (a trained denoiser), so that no process fits one twice
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
FILES = (RESULTS, RESULTS_PARQUET, SAMPLES, PLAN, MANIFEST, WORST_CASE, WARNINGS, SPECTRA, CERTIFICATES,
         LIPSCHITZ, ANGLES, CERTIFY, REPORT, SUMMARY_MD, SUMMARY_TEX, TRANSFER_MATRIX, COLLAPSE_PSNR)
EXAMPLES = "examples"  # the gallery's image arrays (and PNGs), one file per cell
N_EXAMPLES = 3  # images kept per cell
PARTIAL = ".partial"  # marks a file still being written: report.partial.PID-X.pdf becomes report.pdf when whole
KEY_DOMAIN = "nte-eval key fingerprint v1:"  # hashed before the key, so the fingerprint is no other hash of it


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``, renamed over it once written: a kill or error leaves no half file.
    The name is the writer's own, so that processes writing the same file (``--shard``) never share one."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}{PARTIAL}.{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")  # own per writer
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_run_file(name: str) -> bool:
    """Whether a run folder's entry is nte-eval's (a run file, the examples, a partial file), not the user's."""
    return name in FILES or name in (EXAMPLES, SHARDS, CLEAN, FITS) or PARTIAL in name


def key_fingerprint(key: int | str) -> str:
    """Identifies the NTE key in files and reports, which never hold the key (a guessable key stays guessable)."""
    return hashlib.sha256(f"{KEY_DOMAIN}{key}".encode()).hexdigest()[:12]


def example_file(out: Path, *key: str) -> Path:
    """The file of one cell's reconstructions (key: encoder, encoder_params, attack, attack_params), of one
    setting's NTEs (key: encoder, encoder_params) or of the clean images (no key)."""
    name = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16] if key else "clean"
    return Path(out) / EXAMPLES / f"{name}.npy"


def save_examples(path: Path, images: torch.Tensor) -> None:
    """Write the first ``N_EXAMPLES`` images atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        np.save(tmp, images[:N_EXAMPLES].detach().cpu().float().numpy())


def environment() -> dict[str, str]:
    """Versions of what produced the results, for the manifest."""
    import timm  # slow to import (torchvision): suite validation reads this module's names first

    return {"nte_eval": nte_eval.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform()}
