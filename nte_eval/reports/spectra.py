"""First-layer singular value spectra in pixel space (``spectra.csv``, written by the run) and their report page.

Each model is shown in the view its NTEs would use: the per-patch kernel matrix W D^-1 for non-overlapping and
Linear first layers, the circular image-space operator (all Fourier polyphase blocks) for overlapping stems. The
selection threshold tau is in the same units, so the directions below the line are the ones an NTE may use.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

FLOOR = 1e-12  # exact zeros are drawn here on the log axis
STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "v", "D", "x", "P", "*"]


def spectra_page(pdf: PdfPages, spectra: pd.DataFrame, taus: list[float], designated: list[str]) -> None:
    """All models' spectra, sorted descending, against the fraction of input directions; tau as a dotted line."""
    fig, ax = plt.subplots(figsize=(11.69, 8.27))
    fig.set_label("spectra")
    notes = []
    for i, (model, g) in enumerate(spectra.groupby("model", sort=False)):
        if g.sigma.isna().all():
            notes.append(f"{model}: {g.view.iloc[0]}")
            continue
        g = g.sort_values("sigma", ascending=False)
        total = g["count"].sum()
        x = (g["count"].cumsum() - g["count"] / 2) / total
        y = g.sigma.clip(lower=FLOOR)
        under = {tau: int(g["count"][g.sigma <= tau].sum()) for tau in taus}
        null = int(g["count"][g.exact_null].sum())
        is_des = model in designated
        label = (f"{model}{' (designated)' if is_des else ''}, {g.view.iloc[0]} view, {total} directions: "
                 + ", ".join(f"{n} <= tau={tau:g}" for tau, n in under.items()) + f", {null} exact null")
        ax.plot(x, y, STYLES[i % 4], color="black" if is_des else f"{0.15 + 0.12 * (i % 5):.2f}",
                lw=2.4 if is_des else 1.2, marker=MARKERS[i % 8], markevery=max(1, len(x) // 12), markersize=4,
                label=label)
    for tau in taus:
        ax.axhline(tau, color="black", ls=":", lw=1)
        ax.text(1.0, tau, f" tau = {tau:g}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
    ax.axhline(FLOOR, color="0.6", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the view's input directions, sorted by singular value (patch view: per patch; "
                  "operator view: per image)")
    ax.set_ylabel("singular value of W D^-1 (first-layer output per unit pixel value)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(fontsize=6.5, loc="lower center", ncol=2, frameon=False)
    title = (f"First-layer singular value spectra (pixel space, normalisation included; exact zeros drawn at "
             f"{FLOOR:g}); NTEs use the directions below tau")
    if notes:
        title += "\n" + "; ".join(notes)
    ax.set_title(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    pdf.savefig(fig)
    plt.close(fig)
