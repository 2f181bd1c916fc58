"""The spread over NTE keys (a suite's ``seeds``: every encoder setting encoded once per key, its cells tagged
``key``): per designated model, setting, model and summary (no attack, best single attack), the mean, standard
deviation and range of the accuracy over the keys."""

from __future__ import annotations

import json

import pandas as pd

from nte_eval.evaluate.labels import compact, setting_name

KEY_COLUMNS = ["designated", "setting", "model", "summary", "keys", "mean %", "sd (points)", "min %", "max %"]
SUMMARIES = {"no_attack": "no attack", "best_single": "best single attack"}


def key_spread(worst: pd.DataFrame) -> pd.DataFrame:
    """The spread over keys from ``worst_case.csv`` rows; empty for a run with one key."""
    params = worst.encoder_params.map(json.loads)
    keyed = worst[params.map(lambda p: "key" in p) & worst.summary.isin(SUMMARIES)]
    if keyed.empty:
        return pd.DataFrame(columns=KEY_COLUMNS)
    base = keyed.encoder_params.map(lambda p: compact({k: v for k, v in json.loads(p).items() if k != "key"}))
    rows = []
    for (encoder, setting, model, summary), g in keyed.groupby([keyed.encoder, base, keyed.model, keyed.summary],
                                                               sort=False):
        values = 100 * g.value
        rows.append({"designated": json.loads(setting)["designated"], "setting": setting_name(encoder, setting),
                     "model": model, "summary": SUMMARIES[summary], "keys": len(g), "mean %": round(values.mean(), 1),
                     "sd (points)": round(values.std(ddof=1), 1) if len(g) > 1 else float("nan"),
                     "min %": round(values.min(), 1), "max %": round(values.max(), 1)})
    return pd.DataFrame(rows, columns=KEY_COLUMNS)
