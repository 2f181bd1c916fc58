"""Degradation study: for each (designated, unauthorized) pair, the geometry of the two first layers (principal
angles, predicted response energy, misalignment) beside what the unauthorized model measurably does on the NTEs.

The NTEs here are unboxed, per-patch ``nte`` noise at one fixed PSNR, so that the noise is isotropic in the designated
model's subspace S and the prediction E‖A_B δ‖² = ‖δ‖² · ‖A_B M‖_F² / ‖M‖_F² applies (M: the encoder's noise map).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from nte_eval.certify.angles import pair_geometry, predicted_energy
from nte_eval.data import ImageSet
from nte_eval.encoders.nte import NTEEncoder
from nte_eval.handles import ModelHandle
from nte_eval.subspace import PixelConv

AGREE_Z = 3.0  # predicted and measured energy agree when within 3 standard errors of the measured mean ...
FLOAT32 = 1e-5  # ... or within float32 rounding of the NTE images (some pairs' energy hardly varies over samples)


@torch.no_grad()
def _accuracy(handle: ModelHandle, x: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    preds = torch.cat([handle.logits(x[i:i + batch].to(handle.device)).argmax(1).cpu()
                       for i in range(0, len(x), batch)])
    return float((preds == labels).double().mean())


@torch.no_grad()
def _energy_and_ratio(handle: ModelHandle, x: torch.Tensor, delta: torch.Tensor,
                      batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: ‖A_B δ‖² / ‖δ‖² (float64, linear part) and the clean response norm ‖A_B(x)‖ (bias included)."""
    op = PixelConv(handle)
    energy, norms = [], []
    for i in range(0, len(x), batch):
        d = delta[i:i + batch].to(handle.device, torch.float64)
        energy.append((op.apply(d).flatten(1).pow(2).sum(1) / d.flatten(1).pow(2).sum(1)).cpu())
        norms.append(handle.first_layer_response(x[i:i + batch].to(handle.device)).flatten(1).norm(dim=1).cpu())
    return torch.cat(energy), torch.cat(norms).double()


def degradation_study(handles: dict[str, ModelHandle], pair_models: list[str], data: ImageSet, psnr: float,
                      tau: float, key: int | str, batch: int, progress: bool = True) -> pd.DataFrame:
    """One row per ordered pair (designated D in ``pair_models``, every other model B of ``handles``)."""
    x, labels = data.images, data.labels
    clean = {name: _accuracy(h, x, labels, batch) for name, h in handles.items()}
    rows = []
    bar = tqdm(total=len(pair_models) * (len(handles) - 1), desc="degradation pairs", disable=not progress)
    for d in pair_models:
        encoder = NTEEncoder(handles[d], psnr=psnr, select=f"tau={tau}").fit()
        x_nte = torch.cat([encoder.encode(x[i:i + batch].to(handles[d].device), key=key,
                                          index=list(range(i, min(i + batch, len(x)))), record=False).images.cpu()
                           for i in range(0, len(x), batch)])
        delta = (x_nte.double() - x.double())
        others = {b: h for b, h in handles.items() if b != d}
        predicted = predicted_energy(encoder, others, batch=batch)
        noise_sq = delta.flatten(1).pow(2).sum(1)
        for b, other in others.items():
            geo = pair_geometry(encoder, other, tau)
            energy, response = _energy_and_ratio(other, x, delta, batch)
            mean, se = float(energy.mean()), float(energy.std() / math.sqrt(len(energy)))
            pred = float(predicted[b])
            nte_acc = _accuracy(other, x_nte, labels, batch)
            rows.append({
                "designated": d, "model": b, "psnr": psnr, "tau": tau, "n": len(x),
                **{k: v for k, v in geo.items() if k != "angles_deg"},  # the summary, not all min(k, r) angles
                "energy_predicted": pred, "energy_measured": mean, "energy_se": se,
                "energy_ratio": pred / mean if mean > 0 else float("nan"),
                "energy_z": (pred - mean) / se if se > 0 else float("nan"),
                "energy_agrees": bool(abs(pred - mean) <= AGREE_Z * se + FLOAT32 * max(pred, mean)),
                "lower_bound_holds": _lower_holds(geo.get("lower_bound"), pred, mean, se),
                "first_layer_ratio_measured": float((energy * noise_sq).sqrt().div(response).mean()),
                "first_layer_ratio_predicted": float((pred * noise_sq).sqrt().div(response).mean()),
                "clean_accuracy": clean[b], "nte_accuracy": nte_acc, "accuracy_drop": clean[b] - nte_acc})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def _lower_holds(lower: float | None, predicted: float, measured: float, se: float) -> bool | None:
    """The principal-angle lower bound must stay below the exact prediction and (within sampling error) below the
    measured mean energy; None where the operator view does not apply to the pair."""
    if lower is None or (isinstance(lower, float) and math.isnan(lower)):
        return None
    slack = 1e-9 * max(predicted, 1e-300)
    return bool(lower <= predicted + slack and lower <= measured + AGREE_Z * se + slack)


def rank_correlation(pairs: pd.DataFrame, score: str, target: str = "accuracy_drop") -> dict[str, float]:
    """Spearman's rho (and its p-value) between a pair score and the measured accuracy drop, over all pairs."""
    usable = pairs[[score, target]].dropna()
    if len(usable) < 3 or usable[score].nunique() < 2 or usable[target].nunique() < 2:
        return {"rho": float("nan"), "p_value": float("nan"), "pairs": len(usable)}
    res = spearmanr(usable[score], usable[target])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "pairs": len(usable)}
