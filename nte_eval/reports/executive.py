"""Page 1 of the report, the executive summary a reviewer reads first: what was evaluated and what the verdicts mean
(n, the threshold), one verdict per designated model and setting (its utility, the lowest knowledge level that broke
the NTEs and the accuracy restored, the robustness for the owner), and one figure of the same numbers.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from nte_eval.knowledge import KNOWLEDGE  # noqa: E402
from nte_eval.reports.figures import A4, GREYS, HATCHES, short  # noqa: E402
from nte_eval.reports.headline import LABEL_FREE, Headline  # noqa: E402
from nte_eval.reports.verdict import MAX_CHANCE, MIN_N, bounds  # noqa: E402

FONT = 8.0
PITCH = 1.29 * FONT / 72 / A4[1]  # one line of matplotlib's sans-serif text, as a share of the page height
WIDTH = int(0.94 * A4[0] * 72 / (0.55 * FONT))  # characters per line, with room for wide glyphs
FIGURE = 0.24  # the least share of page 1 the figure keeps (its axes), above its tick labels; verdicts beyond continue


def facts(h: Headline, manifest: dict, accuracy: str) -> str:
    """What was evaluated, and what "held", "useful" and "uninformative" mean in this run's numbers."""
    data = manifest.get("data", {})
    n = ", ".join(str(v) for v in sorted(set(h.settings.n)))
    chance = h.chance_text
    unit = "texts" if h.modality == "text" else "images"
    return (f"Suite {manifest.get('suite')}, finished {manifest.get('finished', 'unknown')}: n = {n} evaluated {unit} "
            f"({data.get('source')}), {accuracy} in %" + (f" ({LABEL_FREE})" if h.label_free else "")
            + ", each with its exact 95% interval (Clopper-Pearson; error "
            "bars in the figures). Held = every unauthorized model's 95% interval under "
            + (f"its own threshold (chance: {chance}; + {h.margin:g} points)" if h.label_free else
               f"{h.threshold:.1f}% (chance {chance} + {h.margin:g} points)")
            + " under the best attack at or below a knowledge level; NOT held = an "
            "interval wholly above it; inconclusive otherwise, with about the n that would decide. The levels are "
            "cumulative (none < method < surrogate < oracle: an attacker runs every attack of the levels below "
            f"its own). Useful = the designated model at most {h.margin:g} points below its clean accuracy on the "
            f"NTEs. Uninformative, never held: n < {MIN_N}, one class, chance >= {100 * MAX_CHANCE:g}%, or no "
            f"unauthorized model above the threshold on clean inputs. Sanity-check warnings: {len(h.warnings)}. The "
            "following pages hold every table and figure.")


def _figure(ax: plt.Axes, h: Headline, accuracy: str) -> None:
    """Per setting: the designated model on its NTEs and under its worst benign processing, and the most accurate
    unauthorized model under the best attack at or below each knowledge level, each with its 95% interval as an
    error bar; the threshold dashed."""
    x = np.arange(len(h.settings))
    shape = (len(x), len(KNOWLEDGE))
    levels = [h.levels[c].to_numpy().reshape(shape) for c in ("max unauthorized %", "CI low %", "CI high %")]
    bars = [("designated model on its NTEs", h.designated["NTE %"], bounds(h.designated["NTE % CI"]), "black", ""),
            ("designated model, worst benign processing", h.owner["worst benign %"],
             bounds(h.owner["worst benign % CI"]), "0.45", "")]
    bars += [(f"best unauthorized model, attacks \u2264 {level}", levels[0][:, k], (levels[1][:, k], levels[2][:, k]),
              GREYS[level], HATCHES[level]) for k, level in enumerate(KNOWLEDGE)]
    width = 0.84 / len(bars)
    for k, (label, values, (low, high), color, hatch) in enumerate(bars):
        values = np.asarray(values, dtype=float)
        spread = np.clip([values - np.asarray(low, dtype=float), np.asarray(high, dtype=float) - values], 0, None)
        ax.bar(x - 0.42 + (k + 0.5) * width, values, width, color=color, hatch=hatch, edgecolor="black", lw=0.5,
               label=label, yerr=spread, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"})
    ax.axhline(h.threshold, color="black", ls="--", lw=1, label=h.threshold_label)
    for i, status in enumerate(h.settings.standing):
        if status != "useful":
            ax.text(i, 104, status.upper(), ha="center", fontsize=7, weight="bold")
    labels = [textwrap.fill(f"{short(d)}: {s}", 24) for d, s in zip(h.settings.designated, h.settings.setting,
                                                                       strict=True)]
    ax.set_xticks(x, labels, fontsize=6.5)
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_ylim(0, 110)
    ax.set_ylabel(f"{accuracy} (%)", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=4, frameon=False)


def executive_pages(pdf: PdfPages, h: Headline, manifest: dict, accuracy: str) -> None:
    """The executive summary: the facts and the verdicts, with the figure at the bottom of its first page (verdicts
    that do not fit continue on the next page)."""
    wrap = textwrap.TextWrapper(WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
    paragraphs = [wrap.wrap(facts(h, manifest, accuracy)), *(wrap.wrap(f"- {v}") for v in h.verdicts)]
    page = 0
    while paragraphs or page == 0:
        fig = plt.figure(figsize=A4)
        fig.set_label("executive_summary")
        fig.text(0.03, 0.96, f"nte-eval report: {manifest.get('suite')}, executive summary"
                 + (" (continued)" if page else ""), fontsize=15, weight="bold", va="top")
        top, bottom = 0.9, (0.1 + FIGURE + 0.08 if page == 0 else 0.04)
        while paragraphs and (top - len(paragraphs[0]) * PITCH >= bottom or (page and top == 0.9)):
            lines = paragraphs.pop(0)
            fig.text(0.03, top, "\n".join(lines), fontsize=FONT, va="top")
            top -= (len(lines) + 0.5) * PITCH
        if page == 0:
            _figure(fig.add_axes((0.06, 0.1, 0.9, top - 0.18)), h, accuracy)
        pdf.savefig(fig)
        plt.close(fig)
        page += 1
