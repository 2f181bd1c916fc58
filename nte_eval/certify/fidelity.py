"""Fidelity certificates: a per-sample bound on the designated model's logit change, checked against measurement.

With f = g ∘ A and L a Lipschitz bound of g, ‖f(x') − f(x)‖ ≤ L · ‖A(x') − A(x)‖, and the top-1 prediction provably
stays when the clean logit margin exceeds √2 times that bound (a logit difference moves by at most √2 ‖Δf‖). Every
quantity is computed in float64, so rounding stays far below the bounds it is compared with.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from nte_eval.certify.lipschitz import Float64Network, LipschitzBound

CERT_COLUMNS = ["designated", "encoder", "encoder_params", "psnr", "sample", "label", "first_layer_change",
                "lipschitz", "lipschitz_source", "lipschitz_status", "bound", "measured_change", "margin",
                "margin_exceeds", "certified", "prediction_kept", "clean_correct", "bound_holds", "passed"]
ROUNDING = 1e-9  # relative slack (of the clean logit norm) for float64 rounding when comparing measured with bound


@torch.no_grad()
def measure(net: Float64Network, x: torch.Tensor, x_nte: torch.Tensor, batch: int = 128) -> dict[str, torch.Tensor]:
    """Per sample, with the certification's float64 copy of the model: the first-layer change ‖A(x') − A(x)‖, the
    logit change, the clean logit margin (top-1 minus top-2), clean and NTE predictions, and the clean logit norm."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("change", "measured", "margin", "pred", "pred_nte", "norm")}
    device = net.handle.device
    for i in range(0, len(x), batch):
        xb, nb = x[i:i + batch].to(device, torch.float64), x_nte[i:i + batch].to(device, torch.float64)
        clean, a_clean = net.outputs(xb)
        nte, a_nte = net.outputs(nb)
        top2 = clean.topk(2, dim=1).values
        out["change"].append((a_nte - a_clean).flatten(1).norm(dim=1))
        out["measured"].append((nte - clean).norm(dim=1))
        out["margin"].append(top2[:, 0] - top2[:, 1])
        out["pred"].append(clean.argmax(1))
        out["pred_nte"].append(nte.argmax(1))
        out["norm"].append(clean.norm(dim=1))
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def certificate_rows(m: dict[str, torch.Tensor], labels: torch.Tensor, bound: LipschitzBound,
                     head: dict[str, object]) -> pd.DataFrame:
    """One row per sample for one Lipschitz source: bound = L · first-layer change; ``margin_exceeds`` when the
    clean margin exceeds √2 · bound, ``certified`` only when the source is a certified bound too; ``passed`` when
    the measured change is within the bound and a prediction whose margin exceeds it is kept."""
    change, measured = m["change"].numpy(), m["measured"].numpy()
    bound_value = bound.value * change
    exceeds = m["margin"].numpy() > math.sqrt(2) * bound_value
    kept = (m["pred"] == m["pred_nte"]).numpy()
    holds = measured <= bound_value + ROUNDING * m["norm"].numpy()
    return pd.DataFrame({
        **{k: [v] * len(change) for k, v in head.items()},
        "sample": np.arange(len(change)), "label": labels.numpy(), "first_layer_change": change,
        "lipschitz": bound.value, "lipschitz_source": bound.source, "lipschitz_status": bound.status,
        "bound": bound_value, "measured_change": measured, "margin": m["margin"].numpy(), "margin_exceeds": exceeds,
        "certified": exceeds & (bound.status == "certified"), "prediction_kept": kept,
        "clean_correct": (m["pred"] == labels).numpy(), "bound_holds": holds,
        "passed": holds & (kept | ~exceeds)}, columns=CERT_COLUMNS)


def summarize(rows: pd.DataFrame) -> dict[str, float]:
    """For a certified source: cert_pass_rate (must be 1), certified_accuracy (certified and clean-correct),
    certified_fraction and bound_tightness (median measured/bound over non-zero bounds, left out when there are
    none). For an estimate the first three are named estimate_pass_rate, estimated_accuracy, estimated_fraction:
    what the certificates would say if the estimate were a bound."""
    names = (("cert_pass_rate", "certified_accuracy", "certified_fraction")
             if (rows.lipschitz_status == "certified").all()
             else ("estimate_pass_rate", "estimated_accuracy", "estimated_fraction"))
    out = dict(zip(names, (float(rows.passed.mean()), float((rows.margin_exceeds & rows.clean_correct).mean()),
                           float(rows.margin_exceeds.mean())), strict=True))
    positive = rows[rows.bound > 0]
    if len(positive):
        out["bound_tightness"] = float((positive.measured_change / positive.bound).median())
    return out


def violations(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of certified Lipschitz sources that fail: a bound exceeded or a certified prediction that flipped."""
    return rows[(rows.lipschitz_status == "certified") & ~rows.passed]
