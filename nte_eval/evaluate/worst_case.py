"""Attacker summaries per model and encoder setting (``worst_case.csv``), and the one definition of "best attack".

The headline is the best single attack: an attacker without labels must commit to one reconstruction. Knowledge
levels are cumulative: an attacker at a level can run every attack of the levels below it, so ``best_<level>`` is
the best attack at or below that level (and ``best_single`` the best of all). "Best" means the highest accuracy;
ties go to the attack of the lower level, then to the first in run order. The per-sample union over attacks ("some
attack made the model correct") picks the right attack per sample with hindsight, so it is reported beside the same
union on clean inputs, which shows how much of it is lucky hits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nte_eval.knowledge import KNOWLEDGE
from nte_eval.metrics import mcnemar_exact, share_intervals

WORST_COLUMNS = ["designated", "encoder", "encoder_params", "model", "role", "summary", "attack", "attack_params",
                 "knowledge", "value", "n", "ci_low", "ci_high", "p_vs_no_attack"]
# ci_*: the value's exact 95% interval over n; p_vs_no_attack: McNemar's exact test of the attack against no attack
# on the same samples (paired), for the rows that name one attack
LEVELS = [f"best_{k}" for k in KNOWLEDGE]  # the per-level summaries, weakest attacker first
BEST = ["attack", "attack_params", "knowledge", "value"]  # the columns that name a best attack and its accuracy


def read_worst_case(path: Path) -> pd.DataFrame:
    """``worst_case.csv`` as written: parameter columns as strings (``{}`` and blanks kept), values as floats; the
    levels made cumulative (a no-op for files written since they are)."""
    worst = pd.read_csv(path, dtype={"encoder_params": str, "attack_params": str}, keep_default_na=False)
    worst["value"] = pd.to_numeric(worst.value)
    worst = cumulative(worst)
    return worst if "ci_low" in worst else with_intervals(worst).assign(p_vs_no_attack=float("nan"))  # older files


def cumulative(worst: pd.DataFrame) -> pd.DataFrame:
    """``worst`` with each ``best_<level>`` row replaced by the best over that level and every level below it, and
    ``best_single`` by the best of them all; a level without attacks of its own keeps having no row."""
    out = worst.copy()
    for _, g in out.groupby(["encoder", "encoder_params", "model"], sort=False):
        levels = g[g.summary.isin(LEVELS)]
        best = None
        for i in levels.index[levels.summary.map(LEVELS.index).argsort(kind="stable")]:
            if best is None or levels.at[i, "value"] > best.value:
                best = levels.loc[i]
            out.loc[i, BEST] = best[BEST].to_numpy()
        if best is not None:
            out.loc[g.index[g.summary == "best_single"], BEST] = best[BEST].to_numpy()
    return out


def with_intervals(worst: pd.DataFrame) -> pd.DataFrame:
    """``worst`` with ``ci_low``/``ci_high``: each value's exact (Clopper-Pearson) 95% interval, a proportion of its
    n samples."""
    low, high = share_intervals(worst.value, worst.n)
    return worst.assign(ci_low=low, ci_high=high)


def best_by_level(worst: pd.DataFrame, encoder: str, params: str) -> dict[str, pd.Series]:
    """Per knowledge level with attacks of its own in this encoder setting: the ``best_<level>`` row of the
    unauthorized model that the best attack at or below the level helps most (ties: the attack of the lower level,
    then the first model)."""
    part = worst[(worst.encoder == encoder) & (worst.encoder_params == params) & (worst.role == "unauthorized")]
    out = {}
    for level, summary in zip(KNOWLEDGE, LEVELS, strict=True):
        rows = part[part.summary == summary]
        if len(rows):
            rank = rows.knowledge.map(lambda k: KNOWLEDGE.index(k) if k in KNOWLEDGE else len(KNOWLEDGE))
            order = np.lexsort((np.arange(len(rows)), rank.to_numpy(), -rows.value.to_numpy()))
            out[level] = rows.iloc[order[0]]
    return out


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
    worst = with_intervals(cumulative(pd.DataFrame(rows, columns=WORST_COLUMNS[:-3])))
    return worst.assign(p_vs_no_attack=[_paired_p(per_sample.get((r.encoder, r.encoder_params, r.model)), r.attack,
                                                  r.attack_params) for r in worst.itertuples(index=False)])


def _paired_p(samples: pd.DataFrame | None, attack: str, params: str) -> float:
    """McNemar's exact p of ``attack`` against ``identity`` on the samples both were evaluated on; NaN where either
    (or the per-sample rows) is missing."""
    if samples is None or not attack or attack.startswith("any of "):
        return float("nan")
    attacked = samples[samples.input == "attacked"]
    mine = attacked[(attacked.attack == attack) & (attacked.attack_params == params)].correct
    none = attacked[attacked.attack == "identity"].correct
    if mine.empty or none.empty:
        return float("nan")
    return mcnemar_exact(*([c == "1" for c in bits.iloc[0]] for bits in (mine, none)))
