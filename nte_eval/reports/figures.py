"""The report's accuracy figures: accuracy against PSNR, the attack x model heatmap, and the best attack of each
knowledge level per unauthorized model. Readable in black and white: line styles, markers, hatches and grey levels
with the values written in the cells, never colour alone.
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
from nte_eval.reports.headline import psnr_name  # noqa: E402

A4 = (11.69, 8.27)
LINESTYLES = ["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
MARKERS = ["s", "^", "v", "D", "x", "P", "*", "o"]
HATCHES = {"none": "", "method": "///", "surrogate": "xxx", "oracle": "..."}
GREYS = {"none": "1.0", "method": "0.8", "surrogate": "0.6", "oracle": "0.4"}


def short(model: str) -> str:
    return model.removeprefix("zoo:")


def psnr_page(pdf: PdfPages, table: pd.DataFrame, designated: str, modality: str = "image",
              accuracy: str = "top-1 accuracy") -> None:
    """Accuracy against the achieved PSNR for one designated model's NTEs without attack (images: unboxed and
    storable side by side; text: the soft-token NTEs); the designated model is the thick solid line."""
    sub = table[table.designated == designated]
    if modality == "text":
        panels = [("soft-token NTEs", sub[sub.encoder == "nte_tokens"])]
    else:
        sub = sub[sub.encoder == "nte"]
        panels = [("storable 8-bit images" if storable else "unboxed float NTEs", sub[sub.storable == storable])
                  for storable in (False, True)]
    name, unit = psnr_name(modality)
    fig, axes = plt.subplots(1, len(panels), figsize=(11.69, 6.0), sharey=True, squeeze=False)
    fig.set_label("accuracy_psnr")
    for ax, (title, part) in zip(axes[0], panels, strict=True):
        for i, (model, g) in enumerate(part.groupby("model", sort=False)):
            for j, (setting, gs) in enumerate(g.groupby("setting", sort=False)):
                curve = 100 * gs.groupby("psnr").accuracy.mean().sort_index()
                is_des = model == designated
                ax.plot(curve.index, curve.values, linestyle="-" if is_des else LINESTYLES[i % len(LINESTYLES)],
                        marker="o" if is_des else MARKERS[(i + j) % len(MARKERS)], lw=3 if is_des else 1.2,
                        color="black" if is_des else f"{0.1 + 0.1 * (i % 6):.1f}", markersize=5,
                        label=f"{short(model)}{' (designated)' if is_des else ''}"
                              + (f", {setting}" if part.setting.nunique() > 1 else ""))
        ax.set_title(title, fontsize=10)
        lo, hi = ax.get_xlim()
        if len(part) and hi - lo < 2:  # one PSNR only: show +-1 dB around it, not its float noise
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.set_xlabel(f"achieved {name} of the NTEs (dB, {unit})")
        ax.grid(alpha=0.3)
        if len(part):
            ax.legend(fontsize=6.5)
        else:
            ax.text(0.5, 0.5, "no such setting in this suite", ha="center", transform=ax.transAxes, color="0.4")
    axes[0, 0].set_ylabel(f"{accuracy} without attack (%)")
    axes[0, 0].set_ylim(-2, 102)
    fig.suptitle(f"Accuracy against {name}, designated {designated} (thick solid line)")
    fig.tight_layout()
    pdf.savefig(fig)
    plt.close(fig)


def _heatmap(ax: plt.Axes, grid: pd.DataFrame, levels: list[str], designated: str, title: str):  # noqa: ANN202
    """Draw one grey heatmap with its values and knowledge-level separators; returns the image (for a colorbar)."""
    im = ax.imshow(grid.values, cmap="Greys", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(grid.values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5.5, color="white" if v > 55 else "black")
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
        fig, axes = plt.subplots(1, 2, figsize=A4, squeeze=False)
        fig.set_label("attack_heatmap")
        im = None
        for ax, s in zip(axes[0], chunk, strict=False):
            part = acc[(acc.encoder == s.encoder) & (acc.encoder_params == s.encoder_params)]
            attacks = list(dict.fromkeys(zip(part.attack, part.attack_params, strict=True)))
            attacks.sort(key=lambda a: KNOWLEDGE.index(knowledge.get(a, "none")))
            models = [s.designated, *[m for m in dict.fromkeys(part.model) if m != s.designated]]
            values = part.set_index(["attack", "attack_params", "model"]).value
            grid = pd.DataFrame([[100 * values.get((a, p, m), math.nan) for m in models] for a, p in attacks],
                                index=[attack_name(a, p) for a, p in attacks], columns=models)
            im = _heatmap(ax, grid, [knowledge.get(a, "none") for a in attacks], s.designated,
                          f"{short(s.designated)}, {s.setting}")
        for ax in axes[0][len(chunk):]:
            ax.axis("off")
        fig.colorbar(im, cax=fig.add_axes((0.94, 0.2, 0.012, 0.6)), label=f"{accuracy} after the attack (%)")
        fig.suptitle("Accuracy (%) of every model on each attack's reconstruction of the NTEs, attacks grouped by "
                     "knowledge level (none < method < surrogate < oracle)", fontsize=10)
        fig.subplots_adjust(left=0.15, right=0.86, top=0.92, bottom=0.12, wspace=0.85)
        pdf.savefig(fig)
        plt.close(fig)


def knowledge_bars_pages(pdf: PdfPages, worst: pd.DataFrame, settings: pd.DataFrame,
                         accuracy: str = "top-1 accuracy") -> None:
    """Per encoder setting, each unauthorized model's accuracy under the best attack of each knowledge level (bars,
    hatched by level), its clean accuracy (dash), and the union over attacks beside its clean calibration."""
    wc = worst[worst.role == "unauthorized"]
    rows = list(settings.itertuples(index=False))
    for start in range(0, len(rows), 4):
        chunk = rows[start:start + 4]
        fig, axes = plt.subplots(2, 2, figsize=A4, squeeze=False)
        fig.set_label("knowledge_bars")
        for ax, s in zip(axes.flat, chunk, strict=False):
            part = wc[(wc.encoder == s.encoder) & (wc.encoder_params == s.encoder_params)]
            models = list(dict.fromkeys(part.model))
            v = part.set_index(["model", "summary"]).value
            x = np.arange(len(models))
            width = 0.7 / len(KNOWLEDGE)
            for k, level in enumerate(KNOWLEDGE):
                heights = [100 * v.get((m, f"best_{level}"), math.nan) for m in models]
                ax.bar(x - 0.42 + (k + 0.5) * width, heights, width, color=GREYS[level], edgecolor="black",
                       hatch=HATCHES[level], lw=0.6, label=f"best {level} attack")
            ax.hlines([100 * v.get((m, "clean"), math.nan) for m in models], x - 0.42, x + 0.28, colors="black",
                      linestyles="--", lw=1, label="clean accuracy", zorder=3)
            for summary, dx, face, label in (("union", 0.34, "black", "union over attacks (hindsight)"),
                                             ("union_clean", 0.44, "white", "same union on clean inputs")):
                ax.scatter(x + dx, [100 * v.get((m, summary), math.nan) for m in models], marker="D", s=18,
                           facecolors=face, edgecolors="black", linewidths=0.8, label=label, zorder=3)
            ax.set_xticks(x, [short(m) for m in models], rotation=20, ha="right", fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_ylabel(f"{accuracy} (%)", fontsize=8)
            ax.set_title(f"{short(s.designated)}, {s.setting}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        for ax in axes.flat[len(chunk):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=7, fontsize=7, frameon=False)
        fig.suptitle("Unauthorized models: accuracy under the best single attack of each knowledge level", fontsize=10)
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        pdf.savefig(fig)
        plt.close(fig)
