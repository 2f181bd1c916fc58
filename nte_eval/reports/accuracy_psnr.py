"""Accuracy against the NTEs' PSNR: without attack and under the best attack at or below each knowledge level
(``worst_case.csv``, cumulative levels), one row of panels per designated model and kind of NTE. Markers sit at
measured points only; the lines join measured points of one model and setting.
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from nte_eval.evaluate.labels import setting_name  # noqa: E402
from nte_eval.knowledge import KNOWLEDGE  # noqa: E402
from nte_eval.reports.figures import A4, LINESTYLES, MARKERS, short  # noqa: E402
from nte_eval.reports.headline import Headline, psnr_name  # noqa: E402

ROWS_PER_PAGE = 3
PANELS = {"no_attack": "no attack", **{f"best_{k}": f"best attack at or below {k}" for k in KNOWLEDGE}}


def psnr_points(results: pd.DataFrame, worst: pd.DataFrame, modality: str) -> pd.DataFrame:
    """The ``worst_case`` rows of the NTE encoders' settings with their achieved PSNR, the setting without its PSNR
    (``family``) and the panel row they belong to (``kind``)."""
    ident = results[(results.attack == "identity") & (results.role == "designated") & (results.metric == "psnr")]
    achieved = ident.groupby("encoder_params").value.first()
    w = worst[worst.summary.isin(PANELS) & worst.encoder.isin(["nte", "nte_tokens"])]
    params = w.encoder_params.map(json.loads)
    storable = params.map(lambda p: p.get("box", "none") != "none" and bool(p.get("quantize")))
    kind = ("soft-token NTEs" if modality == "text" else storable.map({False: "unboxed float NTEs",
                                                                       True: "storable 8-bit images"}))
    return w.assign(psnr=w.encoder_params.map(achieved), kind=kind,
                    family=[setting_name(e, p, psnr=False) for e, p in zip(w.encoder, w.encoder_params,
                                                                           strict=True)])


def _panel(ax: plt.Axes, part: pd.DataFrame, designated: str, multi: bool) -> None:
    """One panel: a line per (model, setting) through its measured points, in a band of their 95% intervals; the
    designated model thick and solid."""
    for i, (model, g) in enumerate(part.groupby("model", sort=False)):
        for j, (family, gs) in enumerate(g.groupby("family", sort=False)):
            curve = gs.sort_values("psnr")
            is_des = model == designated
            color = "black" if is_des else f"{0.1 + 0.1 * (i % 6):.1f}"
            ax.plot(curve.psnr, 100 * curve.value, linestyle="-" if is_des else LINESTYLES[i % len(LINESTYLES)],
                    marker="o" if is_des else MARKERS[(i + j) % len(MARKERS)], lw=2.6 if is_des else 1.0,
                    color=color, markersize=4,
                    label=f"{short(model)}{' (designated)' if is_des else ''}" + (f", {family}" if multi else ""))
            ax.fill_between(curve.psnr, 100 * curve.ci_low, 100 * curve.ci_high, color=color, alpha=0.12, lw=0)


def accuracy_psnr_pages(pdf: PdfPages, results: pd.DataFrame, worst: pd.DataFrame, h: Headline,
                        accuracy: str) -> None:
    """Per designated model and kind of NTE a row: every model without attack, then the unauthorized models under
    the best attack at or below each knowledge level, with the held threshold; at most ``ROWS_PER_PAGE`` rows a
    page."""
    points = psnr_points(results, worst, h.modality)
    rows = [(d, kind, g) for d in h.designated.designated.unique()
            for kind, g in points[points.designated == d].groupby("kind", sort=False)]
    name, unit = psnr_name(h.modality)
    per = math.ceil(len(rows) / math.ceil(len(rows) / ROWS_PER_PAGE)) if rows else 1  # spread evenly over the pages
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        fig, axes = plt.subplots(len(chunk), len(PANELS) + 1, figsize=A4, squeeze=False, layout="constrained",
                                 gridspec_kw={"width_ratios": [1] * len(PANELS) + [1.3]})
        fig.get_layout_engine().set(w_pad=0.1, h_pad=0.06)  # inches: rotated labels clear of the page edge
        fig.set_label("accuracy_psnr")
        for r, (designated, kind, part) in enumerate(chunk):
            multi = part.family.nunique() > 1
            for ax, (summary, title) in zip(axes[r], PANELS.items(), strict=False):
                panel = part[(part.summary == summary) & ((part.role == "unauthorized") | (summary == "no_attack"))]
                _panel(ax, panel, designated, multi)
                ax.axhline(h.threshold, color="black", ls=":", lw=0.8, label=h.threshold_label)
                if panel.empty:
                    ax.text(0.5, 0.5, "not tested", ha="center", transform=ax.transAxes, color="0.4")
                lo, hi = part.psnr.min(), part.psnr.max()
                pad = 1.0 if math.isclose(lo, hi) else 0.06 * (hi - lo)
                ax.set_xlim(lo - pad, hi + pad)
                ax.set_ylim(-2, 102)
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=6)
                ax.set_title(title if r == 0 else "", fontsize=7)
                ax.set_xlabel(f"{name} (dB)" if r == len(chunk) - 1 else "", fontsize=6.5)
            axes[r, 0].set_ylabel(f"{short(designated)}: {kind}\n{accuracy} (%)", fontsize=6.5)
            axes[r, -1].axis("off")
            axes[r, -1].legend(*axes[r, 0].get_legend_handles_labels(), fontsize=5.5, loc="center left",
                               frameon=False)
        fig.suptitle(f"Accuracy against the NTEs' achieved {name} ({unit}): without attack (designated model thick "
                     "and solid) and, for the unauthorized models,\nunder the best attack at or below each knowledge "
                     "level (levels are cumulative); markers at measured points", fontsize=9)
        pdf.savefig(fig)
        plt.close(fig)
