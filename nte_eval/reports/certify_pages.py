"""Report pages for the certification step, drawn from ``certificates.csv`` and ``angles.csv`` alone.

Readable in black and white: sources differ by marker, the heatmap is grey with its values written in each cell.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

SOURCE_MARKERS = {"product": "o", "lipsdp": "s", "local": "^"}


def fidelity_page(pdf: PdfPages, certs: pd.DataFrame) -> None:
    """Per designated model: measured logit change against its bound (log-log, y = x), one marker per Lipschitz
    source, with each source's pass rate and median tightness in the legend."""
    models = list(certs.designated.unique())
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(11.69, 8.27), squeeze=False)
    fig.set_label("fidelity")
    for ax, model in zip(axes[0], models, strict=True):
        part = certs[(certs.designated == model) & (certs.bound > 0) & (certs.measured_change > 0)]
        for source, g in part.groupby("lipschitz_source", sort=False):
            status = g.lipschitz_status.iloc[0]
            tight = float((g.measured_change / g.bound).median())
            ax.scatter(g.bound, g.measured_change, s=9, marker=SOURCE_MARKERS.get(source, "x"), facecolors="none",
                       edgecolors="black", linewidths=0.6,
                       label=f"{source} ({status}): pass {100 * g.passed.mean():.1f}%, median measured/bound "
                             f"{tight:.2g}")
        if len(part):
            lo = min(part.bound.min(), part.measured_change.min())
            hi = max(part.bound.max(), part.measured_change.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = bound")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=6, loc="upper left")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("bound L·‖A(x')−A(x)‖ on the logit change (logit units, l2)")
        ax.set_ylabel("measured logit change ‖f(x')−f(x)‖ (logit units, l2)")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Fidelity: every point below the dashed line is a bound that held (all encoder settings and PSNRs)")
    fig.tight_layout()
    pdf.savefig(fig)
    plt.close(fig)


def degradation_page(pdf: PdfPages, pairs: pd.DataFrame, rho: dict, psnr: float) -> None:
    """Median principal angle per (designated, other) pair as a grey heatmap, and the misalignment score against
    the accuracy drop with Spearman's rho (over unordered pairs, as in ``certify.json``)."""
    pairs = pairs.dropna(subset=["angle_median"])
    if pairs.empty:
        return
    short = lambda s: s.removeprefix("zoo:")  # noqa: E731
    names = list(dict.fromkeys([*pairs.designated, *pairs.model]))
    grid = np.full((len(names), len(names)), np.nan)
    for r in pairs.itertuples(index=False):
        grid[names.index(r.designated), names.index(r.model)] = r.angle_median
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.69, 8.27))
    fig.set_label("degradation")
    im = ax.imshow(grid, cmap="Greys", vmin=0, vmax=90)
    for i, j in zip(*np.where(~np.isnan(grid)), strict=True):
        ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if grid[i, j] > 45 else "black")
    for i in range(len(names)):
        ax.text(i, i, "D = B", ha="center", va="center", fontsize=5, color="0.5")
    ax.set_xticks(range(len(names)), [short(n) for n in names], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), [short(n) for n in names], fontsize=7)
    ax.set_xlabel("other model B (its sensitive subspace, sigma > tau)")
    ax.set_ylabel("designated model D (its NTE subspace S)")
    ax.set_title("median principal angle between S and B's sensitive subspace", fontsize=8)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="degrees")
    unordered = pairs.groupby(pairs.apply(lambda r: tuple(sorted((r.designated, r.model))), axis=1))
    points = unordered[["misalignment", "accuracy_drop"]].mean()  # the score is symmetric: one point per pair
    bx.scatter(points.misalignment, 100 * points.accuracy_drop, marker="o", facecolors="none", edgecolors="black")
    bx.set_xlabel("Hoffman-Wielandt misalignment of the two first layers (unitless, 0 to 2)")
    bx.set_ylabel(f"accuracy drop at {psnr:g} dB, mean of both directions (percentage points)")
    bx.set_title(f"Spearman rho = {rho['rho']:.3f} (p = {rho['p_value']:.3g}, {rho['pairs']} unordered pairs)",
                 fontsize=9)
    bx.grid(alpha=0.3)
    fig.suptitle("Degradation: first-layer geometry against the measured accuracy drop (angles.csv)")
    fig.tight_layout()
    pdf.savefig(fig)
    plt.close(fig)
