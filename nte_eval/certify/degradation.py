"""Degradation study: for each (designated, unauthorized) pair, the geometry of the two first layers (principal
angles, predicted response energy, misalignment) beside what the unauthorized model measurably does on the NTEs.

The NTEs here are unboxed, per-patch ``nte`` noise at one fixed PSNR: Gaussian noise N ξ (N the encoder's linear
noise map) scaled to a fixed norm, so E‖A_B δ‖² ≈ ‖δ‖² · ‖A_B N‖_F² / ‖N‖_F² (exact for noise isotropic in the
subspace, as without a border correction; close to it with one). The principal angles and their lower bound are
those of the circular operators (``angles.pair_geometry``); ``border_ratio`` is the zero-padded energy over the
circular one.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch
from scipy.stats import spearmanr

from nte_eval.certify.angles import pair_geometry, predicted_energy
from nte_eval.data.images import ImageSet
from nte_eval.encoders.nte import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.batching import batched_logits, encode_all, first_layer_responses
from nte_eval.geometry.conv import PixelConv
from nte_eval.models.handle import ModelHandle
from nte_eval.progress import Progress

AGREE_Z = 3.0  # predicted and measured energy agree when within 3 standard errors of the measured mean ...
FLOAT32 = 1e-6  # ... or within float32 rounding of the NTE images (some pairs' energy hardly varies over samples)


def _accuracy(handle: ModelHandle, x: torch.Tensor, labels: torch.Tensor | None, batch: int,
              clean: torch.Tensor | None = None) -> float:
    """Top-1 accuracy on ``x``; without labels (None), agreement with the model's own clean predictions ``clean``."""
    truth = clean if labels is None else labels
    return float((batched_logits(handle, x, batch, handle.device).argmax(1) == truth).double().mean())


@torch.no_grad()
def _energy_and_ratio(handle: ModelHandle, x: torch.Tensor, delta: torch.Tensor,
                      batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: ‖A_B δ‖² / ‖δ‖² (float64, linear part) and the clean response norm ‖A_B(x)‖ (bias included)."""
    op = PixelConv(handle)
    energy = []
    for i in range(0, len(x), batch):
        d = delta[i:i + batch].to(handle.device, torch.float64)
        energy.append((op.apply(d).flatten(1).pow(2).sum(1) / d.flatten(1).pow(2).sum(1)).cpu())
    norms = first_layer_responses(handle, x, batch, handle.device).flatten(1).norm(dim=1)
    return torch.cat(energy), norms.double()


def degradation_study(handles: dict[str, ModelHandle], pair_models: list[str], data: ImageSet, psnr: float,
                      tau: float, key: int | str, batch: int, progress: Progress | None = None) -> pd.DataFrame:
    """One row per ordered pair (designated D in ``pair_models``, every other model B of ``handles``); each pair
    advances ``progress`` by one step."""
    x, labels = data.images, None if data.label_free else data.labels
    own = ({name: batched_logits(h, x, batch, h.device).argmax(1) for name, h in handles.items()}
           if labels is None else {})  # label-free: each model's own clean predictions
    clean = {name: _accuracy(h, x, labels, batch, own.get(name)) for name, h in handles.items()}
    rows = []
    progress = progress or Progress(enabled=False)
    bar = progress.bar(total=len(pair_models) * (len(handles) - 1), desc="degradation pairs", unit="pair")
    for d in pair_models:
        try:
            encoder = NTEEncoder(handles[d], psnr=psnr, select=f"tau={tau}")
            x_nte = encode_all(encoder, x, key, batch, handles[d].device)[0]
        except NTEError as e:  # e.g. a stride that does not divide the image: this model cannot be designated
            rows += [{"designated": d, "model": b, "psnr": psnr, "tau": tau, "reason": str(e)}
                     for b in handles if b != d]
            bar.update(len(handles) - 1)
            progress.advance(len(handles) - 1)
            continue
        delta = (x_nte.double() - x.double())
        others = {b: h for b, h in handles.items() if b != d}
        predicted = predicted_energy(encoder, others, batch=batch)
        noise_sq = delta.flatten(1).pow(2).sum(1)
        for b, other in others.items():
            geo = pair_geometry(encoder, other, tau)
            energy, response = _energy_and_ratio(other, x, delta, batch)
            mean, se = float(energy.mean()), float(energy.std() / math.sqrt(len(energy)))
            pred = float(predicted[b])
            nte_acc = _accuracy(other, x_nte, labels, batch, own.get(b))
            circular = geo.get("energy_circular")
            rows.append({
                "designated": d, "model": b, "psnr": psnr, "tau": tau, "n": len(x),
                **{k: v for k, v in geo.items() if k != "angles_deg"},  # the summary, not all min(k, r) angles
                "k_eff": predicted["k_eff"], "energy_predicted": pred, "energy_measured": mean, "energy_se": se,
                "border_ratio": pred / circular if circular else None,
                "energy_ratio": pred / mean if mean > 0 else float("nan"),
                "energy_z": (pred - mean) / se if se > 0 else float("nan"),
                "energy_agrees": bool(abs(pred - mean) <= AGREE_Z * se + FLOAT32 * max(pred, mean)),
                "lower_bound_holds": None if circular is None else bool(
                    geo["lower_bound"] <= circular * (1 + 1e-9)),
                "first_layer_ratio_measured": float((energy * noise_sq).sqrt().div(response).mean()),
                "first_layer_ratio_predicted": float((pred * noise_sq).sqrt().div(response).mean()),
                "clean_accuracy": clean[b], "nte_accuracy": nte_acc, "accuracy_drop": clean[b] - nte_acc})
            bar.update()
            progress.advance()
    bar.close()
    return pd.DataFrame(rows)


def rank_correlation(pairs: pd.DataFrame, score: str, symmetric: bool = False,
                     target: str = "accuracy_drop") -> dict[str, float]:
    """Spearman's rho (and its p-value) between a pair score and the measured accuracy drop. A ``symmetric`` score
    (the same for D->B and B->D) is correlated over unordered pairs, with the two directions' drops averaged, so that
    no pair counts twice."""
    usable = pairs.dropna(subset=[score, target])
    if symmetric:
        key = usable.apply(lambda r: tuple(sorted((r.designated, r.model))), axis=1)
        usable = usable.groupby(key)[[score, target]].mean()
    if len(usable) < 3 or usable[score].nunique() < 2 or usable[target].nunique() < 2:
        return {"rho": float("nan"), "p_value": float("nan"), "pairs": len(usable)}
    res = spearmanr(usable[score], usable[target])
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "pairs": len(usable)}


def degradation_summary(pairs: pd.DataFrame, psnr: float) -> dict[str, Any]:
    """Rank correlations and check counts for ``certify.json``."""
    has = pairs.get("energy_agrees", pd.Series(dtype=object)).dropna()
    lower = pairs.get("lower_bound_holds", pd.Series(dtype=object)).dropna()
    return {"psnr": psnr, "pairs": int(len(has)),
            "spearman_misalignment": rank_correlation(pairs, "misalignment", symmetric=True),
            "spearman_predicted_energy": rank_correlation(pairs, "energy_predicted"),
            "energy_agree": int(has.astype(bool).sum()), "lower_bound_holds": int(lower.astype(bool).sum()),
            "lower_bound_pairs": int(len(lower))}


def degradation_warnings(pairs: pd.DataFrame) -> list[dict[str, str]]:
    """One warning per pair whose predicted energy misses the measured one or whose principal-angle lower bound
    exceeds the circular energy it bounds (both are bugs, not properties of the models), and per model that could
    not take the designated role."""
    out = []
    for r in pairs.itertuples(index=False):
        pair = f"{r.designated} -> {r.model}"
        if isinstance(getattr(r, "reason", None), str) and r.reason:
            out.append({"check": "degradation", "message": f"{pair}: not studied: {r.reason}"})
        if getattr(r, "energy_agrees", True) is False:
            out.append({"check": "degradation", "message": f"{pair}: predicted first-layer energy "
                        f"{r.energy_predicted:.4g} vs measured {r.energy_measured:.4g} +- {r.energy_se:.2g}"})
        if getattr(r, "lower_bound_holds", True) is False:
            out.append({"check": "degradation", "message": f"{pair}: principal-angle lower bound {r.lower_bound:.4g} "
                        f"above the circular energy {r.energy_circular:.4g}"})
    return out
