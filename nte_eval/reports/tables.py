"""Tables from a run's tidy results: the transfer matrix and the PSNR at which unauthorized models collapse."""

from __future__ import annotations

import json

import pandas as pd

from nte_eval.evaluate.labels import setting_name


def wide(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (designated, encoder, setting (without its PSNR), target PSNR, model) with every metric as a
    column."""
    df = results.copy()
    params = df.encoder_params.map(json.loads)
    df["designated"] = params.map(lambda p: p["designated"])
    df["target_psnr"] = params.map(lambda p: p.get("psnr"))
    df["storable"] = params.map(lambda p: p.get("box", "none") != "none" and bool(p.get("quantize")))
    df["setting"] = [setting_name(e, p, psnr=False) for e, p in zip(df.encoder, df.encoder_params, strict=True)]
    index = ["designated", "encoder", "setting", "target_psnr", "storable", "attack", "attack_params", "model", "role"]
    return df.pivot_table(index=index, columns="metric", values="value", sort=False).reset_index()


def transfer_matrix(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per designated model, setting and target PSNR without attack (``identity``): designated
    accuracy and agreement, then every other model's accuracy; the achieved PSNR (pixel space, peak 1)."""
    w = wide(results[results.attack == "identity"])
    rows = []
    for key, g in w.groupby(["designated", "setting", "target_psnr"], sort=False):
        des = g[g.role == "designated"].iloc[0]
        row = dict(zip(["designated", "setting", "target_psnr"], key, strict=True))
        row.update({"psnr": round(des.psnr, 2), "designated_clean": 100 * des.clean_accuracy,
                    "designated_acc": 100 * des.accuracy, "agreement": 100 * des.agreement,
                    "first_layer_ratio": des.first_layer_ratio})
        for _, other in g[g.role == "unauthorized"].iterrows():
            row[other.model] = 100 * other.accuracy
        rows.append(row)
    return pd.DataFrame(rows)


def collapse_psnr(results: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per designated model, setting and unauthorized model: the highest target PSNR at which that model's accuracy
    is at or below ``threshold`` (percent: the run's chance rate plus the verdict margin) without attack, or NaN if
    it never gets there in the sweep."""
    w = wide(results[results.attack == "identity"])
    w = w[w.role == "unauthorized"]
    rows = []
    for (des, setting, model), g in w.groupby(["designated", "setting", "model"], sort=False):
        hit = g[100 * g.accuracy <= threshold]
        rows.append({"designated": des, "setting": setting, "model": model,
                     "clean_acc": 100 * g.clean_accuracy.iloc[0],
                     "collapse_psnr": hit.target_psnr.max() if len(hit) else float("nan")})
    return pd.DataFrame(rows)
