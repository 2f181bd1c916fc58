"""One cell's measurements: every model's accuracy, agreement, logit change and first-layer response on an attack's
reconstruction of the NTEs (and of the clean images, the calibration), plus the input-space metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.subspace.fill import Subspace, max_angle
from nte_eval.data.glue import task_metric
from nte_eval.data.images import ImageSet
from nte_eval.data.tokens import bytes_per_example, recovered, token_psnr
from nte_eval.evaluate.batching import batched_logits, first_layer_responses
from nte_eval.metrics import psnr, relative_change, ssim
from nte_eval.models.handle import ModelHandle


@dataclass
class Evaluated:
    """A model's clean logits and clean first-layer responses on the evaluation data."""

    handle: ModelHandle
    logits: torch.Tensor
    response: torch.Tensor

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


def _bits(correct: torch.Tensor) -> str:
    return "".join("1" if c else "0" for c in correct.tolist())


def logit_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| per sample over the finite logits (a VLM scores the options a question lacks -inf)."""
    both = torch.isfinite(new) & torch.isfinite(old)
    return torch.where(both, new - old, torch.zeros_like(new)).norm(dim=1)


def input_metrics(x_nte: torch.Tensor, x_rec: torch.Tensor, clean: ImageSet) -> list[tuple[str, torch.Tensor]]:
    """The cell's input-space measurements: pixel PSNRs and SSIMs for images; for text the NTEs' token PSNR and the
    share of tokens the reconstruction reads back right (argmax), and the NTEs' storage per example (sparse format;
    in the results so that a resumed run keeps it). A reconstruction's token PSNR would depend on the slot count
    (a hard token that is wrong everywhere scores 10 log10(K / 2) dB), so token recovery replaces it."""
    if clean.modality == "text":
        return [("psnr", token_psnr(x_nte, clean.images).mean()),
                ("token_recovery", recovered(x_rec, clean.images).mean()),
                ("bytes_per_example", torch.tensor(bytes_per_example(x_nte)))]
    return [("psnr", psnr(x_nte, clean.images).mean()), ("recon_psnr", psnr(x_rec, clean.images).mean()),
            ("change_psnr", psnr(x_rec, x_nte).mean()), ("ssim", ssim(x_nte, clean.images).mean()),
            ("recon_ssim", ssim(x_rec, clean.images).mean())]


def evaluate_cell(x_nte: torch.Tensor, x_rec: torch.Tensor, x_cal: torch.Tensor, clean: ImageSet,
                  models: dict[str, Evaluated], designated: str, encoded_correct: torch.Tensor, batch: int,
                  device: str, metric: str = "accuracy") -> tuple[list[tuple], list[tuple]]:
    """Metrics of every model on one cell: (model, role, metric, value, n) rows and per-sample correctness rows
    (model, input, bits) for the reconstructions of the NTEs ('attacked') and of the clean images ('clean').
    ``metric``: a GLUE task's own metric (``mcc``, ``f1``), added beside accuracy on the NTEs' reconstructions
    and on clean inputs (``clean_mcc``...)."""
    rows, samples = [], []
    labels = clean.labels
    n = len(labels)
    measured = input_metrics(x_nte, x_rec, clean)
    for name, ev in models.items():
        logits = batched_logits(ev.handle, x_rec, batch, device)
        correct = logits.argmax(1) == labels
        cal_correct = batched_logits(ev.handle, x_cal, batch, device).argmax(1) == labels
        ratio = relative_change(first_layer_responses(ev.handle, x_rec, batch, device), ev.response)
        role = "designated" if name == designated else "unauthorized"
        metrics = [("clean_accuracy", (ev.preds == labels).double().mean()),
                   ("accuracy", correct.double().mean()),
                   ("agreement", (logits.argmax(1) == ev.preds).double().mean()),
                   ("logit_change", logit_change(logits, ev.logits).mean()),
                   *measured,
                   ("first_layer_ratio", ratio.mean()),
                   ("attacked_clean_accuracy", cal_correct.double().mean())]
        if metric != "accuracy":
            metrics += [(metric, task_metric(metric, logits.argmax(1), labels)),
                        (f"clean_{metric}", task_metric(metric, ev.preds, labels))]
        if role == "designated":
            metrics.append(("encoded_accuracy", encoded_correct.double().mean()))
        rows += [(name, role, metric_name, float(value), n) for metric_name, value in metrics]
        samples += [(name, "attacked", _bits(correct)), (name, "clean", _bits(cal_correct))]
    return rows, samples
