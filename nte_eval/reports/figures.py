"""The report's accuracy figures: the attack x model heatmap, and the best attack at or below each knowledge level per
unauthorized model (accuracy against PSNR: ``accuracy_psnr``). Readable in black and white: line styles, markers,
hatches and grey levels with the values written in the cells, never colour alone.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from nte_eval.evaluate.labels import attack_name  # noqa: E402
from nte_eval.knowledge import KNOWLEDGE  # noqa: E402
from nte_eval.metrics import widest_half_width  # noqa: E402

A4 = (11.69, 8.27)
LINESTYLES = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
MARKERS = ["s", "^", "v", "D", "x", "P", "*", "o"]
HATCHES = {"none": "", "method": "///", "surrogate": "xxx", "oracle": "..."}
GREYS = {"none": "1.0", "method": "0.8", "surrogate": "0.6", "oracle": "0.4"}


def short(model: str) -> str:
    return model.removeprefix("zoo:")


NO_VALUE = "#f2dfb6"  # the heatmaps' colour of a cell without a value (n/a or failed: the adaptation page says why)


def _heatmap(ax: plt.Axes, grid: pd.DataFrame, levels: list[str], designated: str, title: str):  # noqa: ANN202
    """Draw one grey heatmap with its values and knowledge-level separators; returns the image (for a colorbar)."""
    cmap = plt.get_cmap("Greys").with_extremes(bad=NO_VALUE)  # a model attack that could not adapt the model: never 0%
    im = ax.imshow(np.ma.masked_invalid(grid.values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(grid.values):
        shown = "n/a" if math.isnan(v) else f"{v:.0f}"
        ax.text(j, i, shown, ha="center", va="center", fontsize=5.5, color="white" if v > 55 else "black")
    ax.set_xticks(range(grid.shape[1]), [short(m) + (" (D)" if m == designated else "") for m in grid.columns],
                  rotation=35, ha="right", fontsize=6.5)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=5.5)
    for i in range(1, len(levels)):
        if levels[i] != levels[i - 1]:
            ax.axhline(i - 0.5, color="black", lw=1.5)
    for level in dict.fromkeys(levels):
        rows = [i for i, lv in enumerate(levels) if lv == level]
        ax.text(grid.shape[1] - 0.35, (rows[0] + rows[-1]) / 2, level, va="center", ha="left", fontsize=7,
                weight="bold", clip_on=False)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("model evaluated on the reconstruction ((D) = designated)", fontsize=7)
    ax.set_ylabel("attack setting (knowledge level at the right)", fontsize=7)
    return im


def heatmap_pages(pdf: PdfPages, results: pd.DataFrame, settings: pd.DataFrame,
                  knowledge: dict[tuple[str, str], str], accuracy: str = "top-1 accuracy") -> None:
    """Per encoder setting, accuracy (%) of every model after every attack, attacks grouped by knowledge level;
    two settings per page."""
    acc = results[(results.metric == "accuracy") & (results.attack != "certify")]
    rows = list(settings.itertuples(index=False))
    for start in range(0, len(rows), 2):
        chunk = rows[start:start + 2]
        fig, axes = plt.subplots(1, len(chunk), figsize=A4, squeeze=False, layout="constrained")
        fig.get_layout_engine().set(w_pad=0.15, h_pad=0.1)  # inches: labels and title clear of the page edge
        fig.set_label("attack_heatmap")
        im = None
        for ax, s in zip(axes[0], chunk, strict=True):
            part = acc[(acc.encoder == s.encoder) & (acc.encoder_params == s.encoder_params)]
            attacks = list(dict.fromkeys(zip(part.attack, part.attack_params, strict=True)))
            attacks.sort(key=lambda a: KNOWLEDGE.index(knowledge.get(a, "none")))
            models = [s.designated, *[m for m in dict.fromkeys(part.model) if m != s.designated]]
            values = part.set_index(["attack", "attack_params", "model"]).value
            grid = pd.DataFrame([[100 * values.get((a, p, m), math.nan) for m in models] for a, p in attacks],
                                index=[attack_name(a, p) for a, p in attacks], columns=models)
            im = _heatmap(ax, grid, [knowledge.get(a, "none") for a in attacks], s.designated,
                          f"{short(s.designated)}, {s.setting}")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.6, pad=0.02, label=f"{accuracy} after the attack (%)")
        n = int(acc.n.min()) if len(acc) else 0
        fig.suptitle("Accuracy (%) of every model on each attack's reconstruction of the NTEs, attacks grouped by "
                     "knowledge level (none < method < surrogate < oracle)\n"
                     f"n = {n}: each cell's exact 95% interval is up to \u00b1{widest_half_width(n):.1f} points (at "
                     "50%; results.csv has each one); n/a: a model attack that could not adapt that model (the "
                     "adaptation page says why)", fontsize=9)
        pdf.savefig(fig)
        plt.close(fig)


def knowledge_bars_pages(pdf: PdfPages, worst: pd.DataFrame, settings: pd.DataFrame,
                         accuracy: str = "top-1 accuracy") -> None:
    """Per encoder setting, each unauthorized model's accuracy under the best attack at or below each knowledge level
    (bars, hatched by level), its clean accuracy (dash), and the union over attacks beside its clean calibration,
    each with its 95% interval as an error bar; at most six settings a page, spread evenly over the pages."""
    wc = worst[worst.role == "unauthorized"]
    rows = list(settings.itertuples(index=False))
    per = math.ceil(len(rows) / math.ceil(len(rows) / 6)) if rows else 1
    ncols = math.ceil(per / 2) if per > 2 else per
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        fig, axes = plt.subplots(math.ceil(per / ncols), ncols, figsize=A4, squeeze=False)
        fig.set_label("knowledge_bars")
        for ax, s in zip(axes.flat, chunk, strict=False):
            part = wc[(wc.encoder == s.encoder) & (wc.encoder_params == s.encoder_params)]
            models = list(dict.fromkeys(part.model))
            table = part.set_index(["model", "summary"])
            x = np.arange(len(models))
            width = 0.7 / len(KNOWLEDGE)

            def column(summary: str, table: pd.DataFrame = table, models: list[str] = models) -> np.ndarray:
                """(value, low, high) in % per model for one summary row (NaN where it has none)."""
                return np.array([[100 * table[c].get((m, summary), math.nan) for m in models]
                                 for c in ("value", "ci_low", "ci_high")])

            def spread(v: np.ndarray) -> np.ndarray:
                return np.clip([v[0] - v[1], v[2] - v[0]], 0, None)

            for k, level in enumerate(KNOWLEDGE):
                v = column(f"best_{level}")
                ax.bar(x - 0.42 + (k + 0.5) * width, v[0], width, color=GREYS[level], edgecolor="black",
                       hatch=HATCHES[level], lw=0.6, label=f"best attack at or below {level}", yerr=spread(v),
                       error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "0.2"})
            clean = column("clean")
            ax.hlines(clean[0], x - 0.42, x + 0.28, colors="black", linestyles="--", lw=1, label="clean accuracy",
                      zorder=3)
            for summary, dx, face, label in (("union", 0.34, "black", "union over attacks (hindsight)"),
                                             ("union_clean", 0.44, "white", "same union on clean inputs")):
                v = column(summary)
                ax.errorbar(x + dx, v[0], yerr=spread(v), fmt="D", markersize=4, mfc=face, mec="black", ecolor="0.2",
                            elinewidth=0.7, capsize=1.5, label=label, zorder=3)
            ax.set_xticks(x, [short(m) for m in models], rotation=20, ha="right", fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_ylabel(f"{accuracy} (%)", fontsize=8)
            ax.set_title(f"{short(s.designated)}, {s.setting}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
        fig.suptitle("Unauthorized models: accuracy under the best single attack at or below each knowledge level "
                     "(levels are cumulative); error bars: exact 95% intervals", fontsize=10)
        fig.tight_layout(rect=(0, 0.07, 1, 0.96))
        pdf.savefig(fig)
        plt.close(fig)
