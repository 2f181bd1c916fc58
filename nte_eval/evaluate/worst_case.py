"""Attacker summaries per model and encoder setting (``worst_case.csv``).

The headline is the best single attack: an attacker without labels must commit to one reconstruction. The per-sample
union over attacks ("some attack made the model correct") picks the right attack per sample with hindsight, so it
is reported beside the same union on clean inputs, which shows how much of it is lucky hits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nte_eval.knowledge import KNOWLEDGE

WORST_COLUMNS = ["designated", "encoder", "encoder_params", "model", "role", "summary", "attack", "attack_params",
                 "knowledge", "value", "n"]


def read_worst_case(path: Path) -> pd.DataFrame:
    """``worst_case.csv`` as written: parameter columns as strings (``{}`` and blanks kept), values as floats."""
    worst = pd.read_csv(path, dtype={"encoder_params": str, "attack_params": str}, keep_default_na=False)
    worst["value"] = pd.to_numeric(worst.value)
    return worst


def _union(bits: pd.Series) -> float:
    """Mean over samples of 'correct under at least one attack' from per-attack bit strings."""
    rows = np.array([np.frombuffer(b.encode(), dtype=np.uint8) == ord("1") for b in bits])
    return float(rows.any(axis=0).mean())


def worst_case(results: pd.DataFrame, samples: pd.DataFrame, knowledge: Callable[[str, str], str]) -> pd.DataFrame:
    """One row per (encoder setting, model, summary); ``knowledge(attack, attack_params)`` gives an attack's level."""
    acc = results[results.metric == "accuracy"].copy()
    acc["knowledge"] = [knowledge(a, p) for a, p in zip(acc.attack, acc.attack_params, strict=True)]
    key = ["encoder", "encoder_params", "model"]
    clean = results[results.metric == "clean_accuracy"].groupby(key, sort=False).value.first()
    per_sample = dict(tuple(samples.groupby(key, sort=False)))
    rows = []
    for (enc, params, model), g in acc.groupby(key, sort=False):
        base = {"designated": json.loads(params)["designated"], "encoder": enc, "encoder_params": params,
                "model": model, "role": g.role.iloc[0], "n": int(g.n.iloc[0])}
        rows.append({**base, "summary": "clean", "attack": "", "attack_params": "", "knowledge": "",
                     "value": float(clean[(enc, params, model)])})
        for summary, part in [("no_attack", g[g.attack == "identity"]), ("best_single", g),
                              *((f"best_{k}", g[g.knowledge == k]) for k in KNOWLEDGE)]:
            if len(part):
                best = part.loc[part.value.idxmax()]
                rows.append({**base, "summary": summary, "attack": best.attack, "attack_params": best.attack_params,
                             "knowledge": best.knowledge, "value": float(best.value)})
        s = per_sample.get((enc, params, model), samples.iloc[:0])
        for summary, inp in (("union", "attacked"), ("union_clean", "clean")):
            part = s[s.input == inp]
            if len(part):
                rows.append({**base, "summary": summary, "attack": f"any of {len(part)}", "attack_params": "",
                             "knowledge": "", "value": _union(part.correct)})
    return pd.DataFrame(rows, columns=WORST_COLUMNS)
