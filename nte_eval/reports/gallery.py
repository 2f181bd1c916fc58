"""The image gallery: a run keeps the first few clean images, each setting's NTEs and every cell's reconstructions
(float32 ``.npy`` under ``DIR/examples/``, written before the cell is journalled); the report shows, per encoder
setting, clean | NTE | the best reconstruction of each knowledge level, each with its PSNR against the clean image.

"Best" is the attack of that level with the highest mean accuracy over the unauthorized models (``results.csv``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from nte_eval.evaluate.labels import attack_name  # noqa: E402
from nte_eval.evaluate.run_folder import (
    EXAMPLES,  # noqa: E402
    example_file,  # noqa: E402
)
from nte_eval.knowledge import KNOWLEDGE  # noqa: E402
from nte_eval.metrics import psnr  # noqa: E402

PER_PAGE = 2  # encoder settings per gallery page


def best_per_level(results: pd.DataFrame, encoder: str, params: str, knowledge: dict[tuple[str, str], str]) -> dict:
    """Per knowledge level: the (attack, attack_params) with the highest mean unauthorized accuracy."""
    acc = results[(results.encoder == encoder) & (results.encoder_params == params) & (results.metric == "accuracy")
                  & (results.role == "unauthorized") & (results.attack != "certify")]
    mean = acc.groupby(["attack", "attack_params"], sort=False).value.mean()
    best = {}
    for level in KNOWLEDGE:
        part = mean[[knowledge.get(k) == level for k in mean.index]]
        if len(part):
            best[level] = (part.idxmax(), float(part.max()))
    return best


def gallery_pages(pdf: PdfPages, run_dir: Path, results: pd.DataFrame, settings: pd.DataFrame,
                  knowledge: dict[tuple[str, str], str]) -> None:
    """Gallery pages (``PER_PAGE`` settings each), each also saved as ``examples/gallery-N.png``."""
    clean_path = example_file(run_dir)
    if not clean_path.exists():
        return
    clean = torch.from_numpy(np.load(clean_path))
    rows = []
    for s in settings.itertuples(index=False):
        nte = example_file(run_dir, s.encoder, s.encoder_params)
        if not nte.exists():
            continue
        panels = [("clean", clean), ("NTE (released)", torch.from_numpy(np.load(nte)))]
        for level, ((att, att_params), mean_acc) in best_per_level(results, s.encoder, s.encoder_params,
                                                                   knowledge).items():
            path = example_file(run_dir, s.encoder, s.encoder_params, att, att_params)
            if path.exists():
                panels.append((f"best {level}:\n{attack_name(att, att_params)}\n(mean unauthorized "
                               f"{100 * mean_acc:.1f}%)", torch.from_numpy(np.load(path))))
        rows.append((f"{s.designated.removeprefix('zoo:')}, {s.setting}", panels))
    for page, start in enumerate(range(0, len(rows), PER_PAGE), 1):
        chunk = rows[start:start + PER_PAGE]
        n_img = len(clean)
        cols = max(len(p) for _, p in chunk)
        fig, axes = plt.subplots(n_img * len(chunk), cols, figsize=(11.69, 8.27), squeeze=False)
        fig.set_label("gallery")
        for block, (label, panels) in enumerate(chunk):
            for i in range(n_img):
                r = block * n_img + i
                for c in range(cols):
                    ax = axes[r, c]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if c >= len(panels):
                        ax.axis("off")
                        continue
                    title, images = panels[c]
                    img = images[i]
                    ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy().squeeze(), cmap="gray", vmin=0, vmax=1)
                    db = "" if c == 0 else f"{float(psnr(img[None], clean[i][None])):.1f} dB"
                    ax.set_xlabel(db, fontsize=7, labelpad=1)
                    if i == 0:
                        ax.set_title(title, fontsize=6.5)
                if i == 0:
                    axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="left", va="bottom",
                                          labelpad=0, y=1.32)
        fig.suptitle("Gallery: clean, released NTE, and each knowledge level's best reconstruction (PSNR against "
                     "the clean image, pixel space, peak 1; shown clipped to [0, 1])", fontsize=9)
        fig.subplots_adjust(left=0.03, right=0.99, top=0.86, bottom=0.02, hspace=0.6, wspace=0.05)
        pdf.savefig(fig)
        fig.savefig(run_dir / EXAMPLES / f"gallery-{page}.png", dpi=80)
        plt.close(fig)
