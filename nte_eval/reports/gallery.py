"""The image gallery: a run keeps the first few clean images, each setting's NTEs and every cell's reconstructions
(float32 ``.npy`` under ``DIR/examples/``, written before the cell is journalled); the report shows, per encoder
setting, clean | NTE | the reconstruction of the best attack at or below each knowledge level, each with its PSNR
against the clean image. "Best" is the one definition of ``evaluate.worst_case.best_by_level``: the attack that
lifts an unauthorized model highest, as in the verdicts and tables.
"""

from __future__ import annotations

import textwrap
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
    atomic_write,  # noqa: E402
    example_file,  # noqa: E402
)
from nte_eval.evaluate.worst_case import best_by_level  # noqa: E402
from nte_eval.metrics import psnr  # noqa: E402
from nte_eval.reports.figures import A4  # noqa: E402

PER_PAGE = 2  # encoder settings per gallery page


def level_examples(run_dir: Path, worst: pd.DataFrame, encoder: str, params: str) -> list[tuple[str, Path]]:
    """Per knowledge level with attacks of its own: a label naming the best attack at or below it (with its own
    level, the unauthorized model it helps most and that model's accuracy) and the file of its reconstructions."""
    return [(f"best at or below {level}: {attack_name(r.attack, r.attack_params)} ({r.knowledge}); "
             f"{r.model.removeprefix('zoo:')} {100 * r.value:.1f}%",
             example_file(run_dir, encoder, params, r.attack, r.attack_params))
            for level, r in best_by_level(worst, encoder, params).items()]


def gallery_pages(pdf: PdfPages, run_dir: Path, worst: pd.DataFrame, settings: pd.DataFrame) -> None:
    """Gallery pages (``PER_PAGE`` settings each, one block per setting), each also saved as
    ``examples/gallery-N.png``."""
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
        panels += [(label, torch.from_numpy(np.load(path)))
                   for label, path in level_examples(run_dir, worst, s.encoder, s.encoder_params) if path.exists()]
        rows.append((f"{s.designated.removeprefix('zoo:')}, {s.setting}", panels))
    for page, start in enumerate(range(0, len(rows), PER_PAGE), 1):
        chunk = rows[start:start + PER_PAGE]
        fig = plt.figure(figsize=A4, layout="constrained")
        fig.set_label("gallery")
        cols = max(len(p) for _, p in chunk)
        for sub, (label, panels) in zip(fig.subfigures(len(chunk), 1, squeeze=False)[:, 0], chunk, strict=True):
            sub.suptitle(label, x=0.01, ha="left", fontsize=8, weight="bold")
            axes = sub.subplots(len(clean), cols, squeeze=False)
            for i, c in np.ndindex(axes.shape):
                ax = axes[i, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(panels):
                    ax.axis("off")
                    continue
                title, images = panels[c]
                ax.imshow(images[i].clamp(0, 1).permute(1, 2, 0).numpy().squeeze(), cmap="gray", vmin=0, vmax=1)
                if c:
                    db = round(float(psnr(images[i][None], clean[i][None])), 1) + 0.0  # no "-0.0"
                    ax.set_xlabel(f"{db:.1f} dB", fontsize=6.5, labelpad=1)
                if i == 0:
                    ax.set_title(textwrap.fill(title, 34, break_long_words=False, break_on_hyphens=False), fontsize=6)
        fig.suptitle("Gallery: clean, released NTE, and the reconstruction of the best attack at or below each "
                     "knowledge level\n(PSNR against the clean image, pixel space, peak 1; shown clipped to [0, 1])",
                     fontsize=9)
        pdf.savefig(fig)
        with atomic_write(run_dir / EXAMPLES / f"gallery-{page}.png") as tmp:
            fig.savefig(tmp, dpi=80)
        plt.close(fig)
