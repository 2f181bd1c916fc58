"""The verdict of each encoder setting, from the run's tables, asked in this order:

1. Is the evaluation informative? Fewer than ``MIN_N`` samples, one class, a chance rate of ``MAX_CHANCE`` or more,
   or no unauthorized model above the threshold on clean inputs: then it is "uninformative", never "held".
2. Does the designated model keep its utility (NTE accuracy at most ``margin`` points below clean)? If not, the
   setting is "NOT useful to the designated model", never "held".
3. Knowledge levels are cumulative (an attacker runs every attack at or below its level; ``evaluate.worst_case``):
   the lowest level whose best attack lifts an unauthorized model above chance + ``margin`` broke the NTEs.

Beside it, the robustness for the owner: the designated model under the benign (knowledge ``none``) processings.
"""

from __future__ import annotations

import math

import pandas as pd

from nte_eval.evaluate.labels import attack_name
from nte_eval.evaluate.worst_case import best_by_level
from nte_eval.knowledge import KNOWLEDGE

MIN_N = 30  # fewer evaluated samples than this: uninformative
MAX_CHANCE = 0.9  # a majority class this frequent: uninformative
LEVEL_NAMES = {k: f"{'no' if k == 'none' else k} knowledge" for k in KNOWLEDGE}


def _pct(value: float) -> float:
    return round(100 * value, 1)


def weak_models(clean: pd.DataFrame, threshold: float) -> dict[str, float]:
    """Unauthorized models (worst_case 'clean' rows of one setting) whose clean accuracy, in %, is <= threshold."""
    return {r.model: 100 * r.value for r in clean.itertuples() if 100 * r.value <= threshold}


def standing(des: pd.Series, n: int, chance: float | None, weak: dict[str, float], models: list[str],
             margin: float) -> tuple[str, str]:
    """("uninformative", why), ("not useful", "") or ("useful", "") for one setting's designated-table row ``des``,
    its sample count, the labels' chance rate, its weak and all unauthorized models."""
    why = [f"n = {n} < {MIN_N}"] if n < MIN_N else []
    if chance is not None and chance >= 1:
        why.append("one class only")
    elif chance is not None and chance >= MAX_CHANCE:
        why.append(f"chance {100 * chance:.1f}% >= {100 * MAX_CHANCE:g}%")
    if models and set(models) <= set(weak):
        why.append("no unauthorized model is above the threshold even on clean inputs")
    if why:
        return "uninformative", "; ".join(why)
    return ("not useful" if des["NTE %"] < des["clean %"] - margin else "useful"), ""


def levels_table(worst: pd.DataFrame, settings: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per setting (with its ``standing``) and knowledge level: the best attack at or below the level, the
    unauthorized model it helps most with its accuracy and clean accuracy, and whether the NTEs held: "yes", "no",
    "not tested" (no attack of the level's own), "uninformative" or "not useful" (the last two never say "yes")."""
    clean = worst[worst.summary == "clean"].set_index(["encoder_params", "model"]).value
    rows = []
    for s in settings.itertuples(index=False):
        best = best_by_level(worst, s.encoder, s.encoder_params)
        top = None
        for level in KNOWLEDGE:
            top = best.get(level, top)
            row = {"designated": s.designated, "setting": s.setting, "knowledge": level}
            if top is None:
                rows.append(row | {"max unauthorized %": math.nan, "model": "", "model clean %": math.nan,
                                   "attack": "", "held": "not tested"})
                continue
            acc = _pct(top.value)
            held = ("no" if acc > threshold else "not tested" if level not in best
                    else "yes" if s.standing == "useful" else s.standing)
            rows.append(row | {"max unauthorized %": acc, "model": top.model,
                               "model clean %": _pct(clean[(s.encoder_params, top.model)]),
                               "attack": f"{attack_name(top.attack, top.attack_params)} ({top.knowledge})",
                               "held": held})
    return pd.DataFrame(rows)


def owner_table(results: pd.DataFrame, settings: pd.DataFrame, knowledge: dict[tuple[str, str], str],
                margin: float) -> pd.DataFrame:
    """Robustness for the owner, per setting: the designated model's accuracy under the benign processings of its
    released NTEs (every attack of knowledge ``none`` but identity), how many of them keep it within ``margin``
    points of its clean accuracy, and the worst of them."""
    des = results[(results.role == "designated") & (results.attack != "identity")]
    benign = des[pd.Series([knowledge.get((a, p)) == "none" for a, p in zip(des.attack, des.attack_params,
                                                                            strict=True)], index=des.index, dtype=bool)]
    ident = results[(results.role == "designated") & (results.attack == "identity")]
    rows = []
    for s in settings.itertuples(index=False):
        m = ident[ident.encoder_params == s.encoder_params].set_index("metric").value
        acc = benign[(benign.encoder_params == s.encoder_params) & (benign.metric == "accuracy")]
        clean = _pct(m["clean_accuracy"])
        worst = acc.loc[acc.value.idxmin()] if len(acc) else None
        rows.append({"designated": s.designated, "setting": s.setting, "clean %": clean, "NTE %": _pct(m["accuracy"]),
                     "benign processings": len(acc), "within margin": int((100 * acc.value >= clean - margin).sum()),
                     "worst benign %": math.nan if worst is None else _pct(worst.value),
                     "worst benign processing": "-" if worst is None else attack_name(worst.attack,
                                                                                     worst.attack_params)})
    return pd.DataFrame(rows)


def owner_line(owner: pd.Series, margin: float) -> str:
    """The robustness for the owner of one setting in one sentence."""
    if not owner["benign processings"]:
        return "Robustness for the owner: not measured (no attack of knowledge none besides identity)."
    return (f"Robustness for the owner: {owner['within margin']} of {owner['benign processings']} benign "
            f"(no-knowledge) processings of the NTEs keep the designated model within {margin:g} points of clean; the "
            f"worst, {owner['worst benign processing']}, leaves {owner['worst benign %']:.1f}%.")


def _names(levels: pd.DataFrame) -> str:
    names = [LEVEL_NAMES[k] for k in levels.knowledge]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def verdict(des: pd.Series, levels: pd.DataFrame, standing: tuple[str, str], threshold: float, margin: float,
            weak: dict[str, float] | None = None) -> str:
    """The verdict of one setting: the designated model's utility (or why the evaluation is uninformative), then the
    lowest knowledge level that broke the NTEs with the accuracy its best attack restores, or the levels they held
    against; ``weak``: unauthorized models at or below the threshold on clean inputs, named."""
    status, why = standing
    kept = f"{des['NTE %']:.1f}% on the NTEs, clean {des['clean %']:.1f}%"
    parts = [f"{des.designated}, {des.setting}:", {
        "uninformative": f"UNINFORMATIVE ({why}); the designated model {kept}.",
        "not useful": f"NOT useful to the designated model ({kept}: more than {margin:g} points lost).",
        "useful": f"Useful to the designated model ({kept})."}[status]]
    broken = levels[levels.held == "no"]
    if len(broken):
        first = broken.iloc[0]
        below = levels[(levels.held == "yes") & (levels.knowledge.map(KNOWLEDGE.index)
                                                 < KNOWLEDGE.index(first.knowledge))]
        parts.append(f"NOT held: {LEVEL_NAMES[first.knowledge]} suffices, {first.attack} lifts {first.model} to "
                     f"{first['max unauthorized %']:.1f}% (clean {first['model clean %']:.1f}%) > {threshold:.1f}%"
                     + (f"; it held against {_names(below)}." if len(below) else "."))
    else:
        tested = levels.dropna(subset=["max unauthorized %"])
        top = tested.iloc[-1] if len(tested) else None
        highest = "" if top is None else (f" (the highest: {top.model} at {top['max unauthorized %']:.1f}% under "
                                          f"{top.attack})")
        held = levels[levels.held == "yes"]
        if len(held):
            parts.append(f"Held against {_names(held)}: every unauthorized model <= {threshold:.1f}%{highest}.")
        elif top is not None:
            parts.append(f"No unauthorized model above {threshold:.1f}%{highest}, which shows no protection here.")
    untested = levels[levels.held == "not tested"]
    if len(untested):
        parts.append(f"Not tested: {_names(untested)}.")
    if weak and status != "uninformative":
        names = ", ".join(f"{m} ({v:.1f}%)" for m, v in weak.items())
        parts.append(f"Uninformative for {names}: already at or below {threshold:.1f}% on clean inputs, so their "
                     "failing on NTEs shows nothing.")
    return " ".join(parts)
