"""One cell's measurements: every model's accuracy, agreement, logit change and first-layer response on an attack's
reconstruction of the NTEs (and of the clean images, the calibration), plus the input-space metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.subspace.fill import Subspace, max_angle
from nte_eval.data.images import ImageSet
from nte_eval.data.tokens import bytes_per_example, recovered, token_psnr
from nte_eval.evaluate.batching import batched_logits, first_layer_norms
from nte_eval.metrics import psnr, ssim
from nte_eval.models.handle import ModelHandle


@dataclass
class Evaluated:
    """A model's clean logits and the norms of its clean first-layer responses, on some evaluated samples."""

    handle: ModelHandle
    logits: torch.Tensor
    response_norm: torch.Tensor

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(1)


def estimate_angle(attack: Attack, truth: Callable[[], object]) -> float | None:
    """For an attack that estimates the designated subspace blindly (it names its ``oracle``): the largest principal
    angle, in degrees, between its estimate and the true subspace ``truth()`` (asked for only here, so that a setting
    builds it once and only when a blind attack runs). None for other attacks and where the two do not compare."""
    if attack.oracle is None or not isinstance(getattr(attack, "subspace", None), Subspace):
        return None
    true = truth()
    return max_angle(attack.subspace, true) if isinstance(true, Subspace) else None


def logit_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| per sample over the finite logits (a VLM scores the options a question lacks -inf)."""
    both = torch.isfinite(new) & torch.isfinite(old)
    return torch.where(both, new - old, torch.zeros_like(new)).norm(dim=1)


def nte_metrics(x_nte: torch.Tensor, clean: ImageSet) -> dict[str, torch.Tensor]:
    """The NTEs' own input-space measurements per sample (the same in every cell of a setting): their pixel PSNR and
    SSIM; for text their token PSNR and storage (sparse format; in the results so that a resumed run keeps it)."""
    if clean.modality == "text":
        return {"psnr": token_psnr(x_nte, clean.images), "bytes_per_example": bytes_per_example(x_nte)}
    return {"psnr": psnr(x_nte, clean.images), "ssim": ssim(x_nte, clean.images)}


def input_metrics(x_nte: torch.Tensor, x_rec: torch.Tensor, clean: ImageSet,
                  nte: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The cell's input-space measurements per sample: pixel PSNRs and SSIMs for images; for text the NTEs' token
    PSNR, the share of tokens the reconstruction reads back right (argmax), and the NTEs' storage. A reconstruction's
    token PSNR would depend on the slot count (a hard token that is wrong everywhere scores 10 log10(K / 2) dB), so
    token recovery replaces it. ``nte``: ``nte_metrics`` of these NTEs, where the caller has them already."""
    nte = nte or nte_metrics(x_nte, clean)
    if clean.modality == "text":
        return {"psnr": nte["psnr"], "token_recovery": recovered(x_rec, clean.images),
                "bytes_per_example": nte["bytes_per_example"]}
    same = x_rec is x_nte  # identity: the reconstruction is the NTE itself
    return {"psnr": nte["psnr"], "recon_psnr": nte["psnr"] if same else psnr(x_rec, clean.images),
            "change_psnr": psnr(x_rec, x_nte), "ssim": nte["ssim"],
            "recon_ssim": nte["ssim"] if same else ssim(x_rec, clean.images)}


def predictions(models: dict[str, Evaluated], x: torch.Tensor, batch: int, device: str,
                start: int) -> dict[str, torch.Tensor]:
    """Every model's predicted class for the samples ``x`` (at data positions ``start``, ``start + 1``, ...)."""
    return {name: batched_logits(ev.handle, x, batch, device, start).argmax(1) for name, ev in models.items()}


def evaluate_cell(x_nte: torch.Tensor, x_rec: torch.Tensor, calibration: dict[str, torch.Tensor], clean: ImageSet,
                  models: dict[str, Evaluated], designated: str, encoded_pred: torch.Tensor, batch: int, device: str,
                  start: int, rec_logits: dict[str, torch.Tensor] | None = None,
                  nte: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """One cell on the samples ``clean`` (data positions ``start``, ...): per sample and model, its label, the
    model's predictions on the clean input, on the attack's reconstruction of the NTE and on the attack applied to
    the clean input (``calibration``), its logit change and first-layer response change, and the input-space
    measurements; ``encoded_pred`` (the designated model on the NTEs) on the designated model's rows, -1 elsewhere.
    ``rec_logits``: the models' logits on ``x_rec`` where they are known already (identity: the NTEs'); ``nte``: the
    NTEs' ``nte_metrics``, where known.
    ``merge.cell_rows`` turns these rows into the cell's metrics."""
    n, frames = len(clean.labels), []
    # label-free data: each model's own clean prediction is its label, so accuracy is agreement everywhere downstream
    measured = {k: v.double().expand(n) if v.dim() == 0 else v.double() for k, v in
                input_metrics(x_nte, x_rec, clean, nte).items()}
    for name, ev in models.items():
        logits = rec_logits[name] if rec_logits else batched_logits(ev.handle, x_rec, batch, device, start)
        ratio = first_layer_norms(ev.handle, x_rec, batch, device, clean.images) / ev.response_norm.clamp_min(1e-30)
        role = "designated" if name == designated else "unauthorized"
        frames.append(pd.DataFrame({
            "index": range(start, start + n), "model": name, "role": role,
            "label": (ev.preds if clean.label_free else clean.labels).numpy(),
            "clean_pred": ev.preds.numpy(), "pred": logits.argmax(1).numpy(), "cal_pred": calibration[name].numpy(),
            "encoded_pred": (encoded_pred if role == "designated" else torch.full((n,), -1)).numpy(),
            "logit_change": logit_change(logits, ev.logits).double().numpy(),
            "first_layer_ratio": ratio.double().numpy(), **{k: v.numpy() for k, v in measured.items()}}))
    return pd.concat(frames, ignore_index=True)
