"""Fidelity certificates: a per-sample bound on the designated model's logit change, checked against measurement.

With f = g ∘ A and L a Lipschitz bound of g, ‖f(x') − f(x)‖ ≤ L · ‖A(x') − A(x)‖, and the top-1 prediction provably
stays when the clean logit margin exceeds √2 times that bound (a logit difference moves by at most √2 ‖Δf‖). Every
quantity is computed in float64, so rounding stays far below the bounds it is compared with.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from nte_eval.certify.lipschitz import LipschitzBound
from nte_eval.handles import ModelHandle
from nte_eval.subspace import PixelConv

CERT_COLUMNS = ["designated", "encoder", "encoder_params", "psnr", "sample", "label", "first_layer_change",
                "lipschitz", "lipschitz_source", "lipschitz_status", "bound", "measured_change", "margin",
                "certified", "prediction_kept", "correct", "bound_holds", "passed"]
ROUNDING = 1e-9  # relative slack (of the clean logit norm) for float64 rounding when comparing measured with bound


def float64_module(handle: ModelHandle) -> nn.Module:
    """A float64 copy of the handle's network (the handle itself is left as it is)."""
    return copy.deepcopy(handle.module).double().eval()


@torch.no_grad()
def measure(handle: ModelHandle, module64: nn.Module, x: torch.Tensor, x_nte: torch.Tensor,
            batch: int = 128) -> dict[str, torch.Tensor]:
    """Per sample: exact first-layer change ‖A(x') − A(x)‖ (linear part: the bias cancels), logit change, clean
    logit margin (top-1 minus top-2), clean and NTE predictions, clean logit norm; all in float64."""
    op = PixelConv(handle)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("change", "measured", "margin", "pred", "pred_nte", "norm")}
    device = handle.device
    for i in range(0, len(x), batch):
        xb, nb = x[i:i + batch].to(device, torch.float64), x_nte[i:i + batch].to(device, torch.float64)
        out["change"].append(op.apply(nb - xb).flatten(1).norm(dim=1))
        clean, nte = module64(handle.normalize(xb)), module64(handle.normalize(nb))
        top2 = clean.topk(2, dim=1).values
        out["measured"].append((nte - clean).norm(dim=1))
        out["margin"].append(top2[:, 0] - top2[:, 1])
        out["pred"].append(clean.argmax(1))
        out["pred_nte"].append(nte.argmax(1))
        out["norm"].append(clean.norm(dim=1))
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def certificate_rows(m: dict[str, torch.Tensor], labels: torch.Tensor, bound: LipschitzBound,
                     head: dict[str, object]) -> pd.DataFrame:
    """One row per sample for one Lipschitz source: bound = L · first-layer change; certified when the margin
    exceeds √2 · bound; passed when the measured change is within the bound and a certified prediction is kept."""
    change, measured = m["change"].numpy(), m["measured"].numpy()
    bound_value = bound.value * change
    certified = m["margin"].numpy() > math.sqrt(2) * bound_value
    kept = (m["pred"] == m["pred_nte"]).numpy()
    holds = measured <= bound_value + ROUNDING * m["norm"].numpy()
    return pd.DataFrame({
        **{k: [v] * len(change) for k, v in head.items()},
        "sample": np.arange(len(change)), "label": labels.numpy(), "first_layer_change": change,
        "lipschitz": bound.value, "lipschitz_source": bound.source, "lipschitz_status": bound.status,
        "bound": bound_value, "measured_change": measured, "margin": m["margin"].numpy(), "certified": certified,
        "prediction_kept": kept, "correct": (m["pred"] == labels).numpy(), "bound_holds": holds,
        "passed": holds & (kept | ~certified)}, columns=CERT_COLUMNS)


def summarize(rows: pd.DataFrame) -> dict[str, float]:
    """cert_pass_rate (must be 1 for a certified source), certified_accuracy (certified and correct),
    certified_fraction, and bound_tightness (median measured/bound over samples with a non-zero bound)."""
    positive = rows[rows.bound > 0]
    tightness = float((positive.measured_change / positive.bound).median()) if len(positive) else float("nan")
    return {"cert_pass_rate": float(rows.passed.mean()),
            "certified_accuracy": float((rows.certified & rows.correct).mean()),
            "certified_fraction": float(rows.certified.mean()),
            "bound_tightness": tightness}


def violations(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of certified Lipschitz sources that fail: a bound exceeded or a certified prediction that flipped."""
    return rows[(rows.lipschitz_status == "certified") & ~rows.passed]
