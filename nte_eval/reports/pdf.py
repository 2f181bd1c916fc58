"""A first PDF report from ``results.csv`` and ``manifest.json``: the headline table and accuracy against PSNR.

(The "Reports" issue extends this to the full report: attacks, certificates, spectra, gallery.)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

LINESTYLES = ["-", "--", "-.", ":"]
SUMMARY_ORDER = ["clean", "no_attack", "best_none", "best_method", "best_surrogate", "best_oracle", "best_single",
                 "union", "union_clean"]
MARKERS = ["o", "s", "^", "v", "D", "x", "P", "*"]


def _title_page(pdf: PdfPages, manifest: dict, headline: pd.DataFrame) -> None:
    fig = plt.figure(figsize=(11.69, 8.27))
    env = manifest.get("environment", {})
    lines = [f"nte-eval report: {manifest.get('suite')}",
             f"data: {manifest['data']['source']} / {manifest['data']['split']}, n = {manifest['data']['n']}, "
             f"seed {manifest.get('seed')}, config {manifest.get('config_hash')}",
             f"nte-eval {env.get('nte_eval')}, torch {env.get('torch')}, timm {env.get('timm')}",
             "Accuracy in %. PSNR is pixel-space PSNR with peak 1 (= 8-bit PSNR, peak 255)."]
    fig.text(0.04, 0.96, lines[0], fontsize=16, weight="bold", va="top")
    fig.text(0.04, 0.92, "\n".join(lines[1:]), fontsize=9, va="top", family="monospace")
    fig.text(0.04, 0.80, headline.to_string(max_colwidth=40), fontsize=6, va="top", family="monospace")
    pdf.savefig(fig)
    plt.close(fig)


def _psnr_page(pdf: PdfPages, table: pd.DataFrame, designated: str) -> None:
    """Accuracy against the achieved PSNR for one designated model's NTEs, unboxed and storable side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(11.69, 5.5), sharey=True)
    sub = table[(table.designated == designated) & (table.encoder == "nte")]
    for ax, storable in zip(axes, (False, True), strict=True):
        part = sub[sub.storable == storable]
        for i, (model, g) in enumerate(part.groupby("model", sort=False)):
            g = 100 * g.groupby("psnr").accuracy.mean().sort_index()
            is_des = model == designated
            ax.plot(g.index, g.values, LINESTYLES[i % 4] if not is_des else "-", marker=MARKERS[i % 8],
                    lw=3 if is_des else 1.2, color="black" if is_des else None,
                    label=f"{model} (designated)" if is_des else model)
        ax.set_title(f"{'storable 8-bit' if storable else 'unboxed float'} NTEs", fontsize=10)
        ax.set_xlabel("achieved PSNR of the NTEs (dB, pixel space, peak 1)")
        ax.grid(alpha=0.3)
        if len(part):
            ax.legend(fontsize=7)
    axes[0].set_ylabel("top-1 accuracy (%)")
    fig.suptitle(f"Accuracy against PSNR, designated: {designated}")
    pdf.savefig(fig)
    plt.close(fig)


def _text_page(pdf: PdfPages, title: str, body: str) -> None:
    fig = plt.figure(figsize=(11.69, 8.27))
    fig.text(0.03, 0.96, title, fontsize=12, weight="bold", va="top")
    fig.text(0.03, 0.92, body, fontsize=5.5, va="top", family="monospace")
    pdf.savefig(fig)
    plt.close(fig)


def _worst_case_pages(pdf: PdfPages, wc: pd.DataFrame) -> None:
    """Per designated model: each model's accuracy clean, without attack, under the best attack of each knowledge
    level, the best single attack, and the per-sample union beside its clean calibration."""
    wc = wc.assign(setting=wc.encoder + " " + wc.encoder_params.map(
        lambda p: " ".join(f"{k}={v}" for k, v in json.loads(p).items() if k != "designated")))
    for designated, part in wc.groupby("designated", sort=False):
        table = part.pivot_table(index=["setting", "model"], columns="summary", values="value", aggfunc="first",
                                 sort=False)
        table = (100 * table[[c for c in SUMMARY_ORDER if c in table.columns]]).round(1)
        best = part[part.summary == "best_single"].groupby(["setting", "model"], sort=False).attack.first()
        table["best attack"] = best
        note = ("best_single is the headline (one reconstruction, committed to without labels); union is the "
                "per-sample best of all attacks,\nan upper bound inflated by lucky hits: compare it with union_clean, "
                "the same union on clean inputs.\n\n")
        _text_page(pdf, f"Attacks, designated {designated} (accuracy %)", note + table.to_string(max_colwidth=70))


def _certify_pages(pdf: PdfPages, run_dir: Path) -> None:
    """The certification step: its tables as text, the fidelity scatter and the degradation page."""
    from nte_eval.certify.run import certification_table, degradation_line
    from nte_eval.reports.certify_pages import degradation_page, fidelity_page

    body = certification_table(run_dir).to_string() + "\n\n" + degradation_line(run_dir)
    lip = run_dir / "lipschitz.csv"
    if lip.exists():
        body += "\n\nLipschitz bounds of the network after the first layer:\n" + pd.read_csv(lip).to_string(
            index=False, max_colwidth=90)
    _text_page(pdf, "Certification (certified accuracy %, pass rate %, median measured/bound)", body)
    if (run_dir / "certificates.csv").exists():
        fidelity_page(pdf, pd.read_csv(run_dir / "certificates.csv"))
    degradation = json.loads((run_dir / "certify.json").read_text()).get("degradation")
    if degradation and (run_dir / "angles.csv").exists():
        degradation_page(pdf, pd.read_csv(run_dir / "angles.csv"), degradation["spearman_misalignment"],
                         degradation["psnr"])


def write_report(run_dir: str | Path) -> Path:
    """Build ``report.pdf`` (and ``transfer_matrix.csv``, ``collapse_psnr.csv``) in ``run_dir`` from its
    ``results.csv`` and ``manifest.json`` alone."""
    from nte_eval.reports.tables import collapse_psnr, transfer_matrix, wide
    from nte_eval.runner import headline
    from nte_eval.store import COLUMNS, read_rows

    run_dir = Path(run_dir)
    results = read_rows(run_dir / "results.csv", COLUMNS)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    table = wide(results[results.attack == "identity"])
    path = run_dir / "report.pdf"
    with PdfPages(path) as pdf:
        _title_page(pdf, manifest, headline(results))
        matrix = transfer_matrix(results)
        matrix.to_csv(run_dir / "transfer_matrix.csv", index=False)
        collapse_psnr(results).to_csv(run_dir / "collapse_psnr.csv", index=False)
        worst = run_dir / "worst_case.csv"
        if worst.exists():
            _worst_case_pages(pdf, pd.read_csv(worst, keep_default_na=False))
        if (run_dir / "certify.json").exists():
            _certify_pages(pdf, run_dir)
        for designated in table.designated.unique():
            _psnr_page(pdf, table, designated)
            part = matrix[matrix.designated == designated].drop(columns="designated").dropna(axis=1, how="all")
            _text_page(pdf, f"Transfer matrix, designated {designated} (accuracy %, PSNR in dB pixel space)",
                       part.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return path
