"""The verdict of each encoder setting, from the run's tables, asked in this order:

1. Is the evaluation informative? Fewer than ``MIN_N`` samples, one class, a chance rate of ``MAX_CHANCE`` or more,
   or no unauthorized model above the threshold on clean inputs: then it is "uninformative", never "held".
2. Does the designated model keep its utility (NTE accuracy at most ``margin`` points below clean)? If not, the
   setting is "NOT useful to the designated model", never "held".
3. Knowledge levels are cumulative (an attacker runs every attack at or below its level; ``evaluate.worst_case``).
   Each level is judged by the 95% intervals of the unauthorized models under its best attack: "NOT held" when an
   interval lies wholly above the threshold (chance + ``margin``), "held" when every interval lies wholly under it,
   otherwise "inconclusive" at this n, with about the n that would decide it. The lowest level not held broke
   the NTEs.

Beside it, the robustness for the owner: the designated model under the benign (knowledge ``none``) processings.
"""

from __future__ import annotations

import math

import pandas as pd

from nte_eval.evaluate.labels import attack_name
from nte_eval.evaluate.worst_case import LEVELS, best_by_level, with_intervals
from nte_eval.knowledge import KNOWLEDGE
from nte_eval.metrics import deciding_n, share_intervals

MIN_N = 30  # fewer evaluated samples than this: uninformative
MAX_CHANCE = 0.9  # a majority class this frequent: uninformative
LEVEL_NAMES = {k: f"{'no' if k == 'none' else k} knowledge" for k in KNOWLEDGE}


def _pct(value: float) -> float:
    return round(100 * value, 1)


Thresholds = float | dict[str, float]  # one threshold (%) for every model, or each model's own (label-free data)


def limit(threshold: Thresholds, model: str) -> float:
    """The threshold (%) ``model`` is judged by: the run's chance + margin, or (label-free) the share of its own most
    frequent clean prediction + margin."""
    return threshold[model] if isinstance(threshold, dict) else threshold


def said(threshold: Thresholds) -> str:
    """The threshold in words."""
    return f"{threshold:.1f}%" if not isinstance(threshold, dict) else "each model's own threshold"


def weak_models(clean: pd.DataFrame, threshold: Thresholds) -> dict[str, float]:
    """Unauthorized models (worst_case 'clean' rows of one setting) whose clean accuracy, in %, is at or below their
    threshold (label-free: whose clean predictions are nearly all one class)."""
    return {r.model: 100 * r.value for r in clean.itertuples() if 100 * r.value <= limit(threshold, r.model)}


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


def ci(value: float, n: float) -> str:
    """The exact 95% interval (%) of a proportion ``value`` of ``n`` samples, as 'low\u2013high' (the tables put it in
    a column named after the figure's plus ' CI'; ``summary_files`` shows the two together)."""
    if not n or math.isnan(value):
        return "-"
    (low,), (high,) = share_intervals([value], [n])
    return f"{100 * low:.1f}\u2013{100 * high:.1f}"


def bounds(spans: pd.Series) -> tuple[list[float], list[float]]:
    """The low and high ends (%) of ``ci`` strings, NaN for '-' (for error bars)."""
    ends = [tuple(map(float, s.split("\u2013"))) if s != "-" else (math.nan, math.nan) for s in spans]
    return [lo for lo, _ in ends], [hi for _, hi in ends]


def judge(rows: pd.DataFrame, threshold: Thresholds) -> tuple[str, int | None]:
    """One level's verdict from its unauthorized models' ``best_<level>`` rows (with intervals): "NOT held" if an
    interval lies above ``threshold`` (%), "held" if every one lies under it, else "inconclusive", with about the
    n that would decide it at the measured accuracies: the smallest that puts one model above the threshold, else
    the one that puts every model under it (None where no n would: an accuracy at the threshold)."""
    t = rows.model.map(lambda m: limit(threshold, m) / 100)
    if (rows.ci_low > t).any():
        return "NOT held", None
    if (rows.ci_high < t).all():
        return "held", None
    open_ = (rows.ci_high >= t) & rows.value.notna()
    above = open_ & (rows.value > t)  # one of these, once decided, breaks the NTEs: the smallest n decides
    if above.any():
        return "inconclusive", min(deciding_n(v, u, n) for v, u, n in zip(rows.value[above], t[above],
                                                                         rows.n[above], strict=True))
    needed = [deciding_n(v, u, n) for v, u, n in zip(rows.value[open_], t[open_], rows.n[open_], strict=True)]
    return "inconclusive", None if None in needed else max(needed)  # every one must fall under it


def levels_table(worst: pd.DataFrame, settings: pd.DataFrame, threshold: Thresholds) -> pd.DataFrame:
    """Per setting (with its ``standing``, and its ``weak`` models left out where given) and knowledge level: the
    best attack at or below the level, the unauthorized model it helps most with its accuracy, 95% interval, clean
    accuracy and threshold, and the level's verdict (``judge``): "held", "NOT held", "inconclusive" (with
    ``decides at n``), "not tested" (no attack of the level's own), "uninformative" or "not useful" (the last two
    never say "held")."""
    worst = worst if "ci_low" in worst else with_intervals(worst)
    clean = worst[worst.summary == "clean"].set_index(["encoder_params", "model"]).value
    rows = []
    for s in settings.itertuples(index=False):
        weak = set(getattr(s, "weak", ()))  # a model uninformative here shows nothing, unless every one is
        others = set(worst[(worst.encoder_params == s.encoder_params) & (worst.role == "unauthorized")].model)
        counted = worst[~worst.model.isin(weak)] if others - weak else worst
        best = best_by_level(counted, s.encoder, s.encoder_params)
        part = counted[(counted.encoder == s.encoder) & (counted.encoder_params == s.encoder_params)
                       & (counted.role == "unauthorized")]
        top, last = None, None
        for level, summary in zip(KNOWLEDGE, LEVELS, strict=True):
            top = best.get(level, top)
            row = {"designated": s.designated, "setting": s.setting, "knowledge": level}
            if top is None:
                rows.append(row | {"max unauthorized %": math.nan, "max unauthorized % CI": "-",
                                   "CI low %": math.nan, "CI high %": math.nan,
                                   "n": math.nan, "model": "", "model clean %": math.nan, "threshold %": math.nan,
                                   "attack": "", "held": "not tested", "decides at n": math.nan})
                continue
            if level in best:
                last = judge(part[part.summary == summary], threshold)
            held, needed = last
            if held != "NOT held" and level not in best:
                held, needed = "not tested", None
            elif held == "held" and s.standing != "useful":  # never "held" then; an open question stays open
                held, needed = s.standing, None
            rows.append(row | {"max unauthorized %": _pct(top.value),
                               "max unauthorized % CI": f"{_pct(top.ci_low)}\u2013{_pct(top.ci_high)}",
                               "CI low %": _pct(top.ci_low), "CI high %": _pct(top.ci_high), "n": int(top.n),
                               "model": top.model,
                               "model clean %": _pct(clean[(s.encoder_params, top.model)]),
                               "threshold %": round(limit(threshold, top.model), 1),
                               "attack": f"{attack_name(top.attack, top.attack_params)} ({top.knowledge})",
                               "held": held, "decides at n": math.nan if needed is None else needed})
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
        part = ident[ident.encoder_params == s.encoder_params].set_index("metric")
        m, n = part.value, int(part.n["accuracy"])
        acc = benign[(benign.encoder_params == s.encoder_params) & (benign.metric == "accuracy")]
        clean = _pct(m["clean_accuracy"])
        worst = acc.loc[acc.value.idxmin()] if len(acc) else None
        rows.append({"designated": s.designated, "setting": s.setting, "n": n, "clean %": clean,
                     "clean % CI": ci(m["clean_accuracy"], n), "NTE %": _pct(m["accuracy"]),
                     "NTE % CI": ci(m["accuracy"], n),
                     "benign processings": len(acc), "within margin": int((100 * acc.value >= clean - margin).sum()),
                     "worst benign %": math.nan if worst is None else _pct(worst.value),
                     "worst benign % CI": "-" if worst is None else ci(worst.value, n),
                     "worst benign processing": "-" if worst is None else attack_name(worst.attack,
                                                                                     worst.attack_params)})
    return pd.DataFrame(rows)


def owner_line(owner: pd.Series, margin: float) -> str:
    """The robustness for the owner of one setting in one sentence."""
    if not owner["benign processings"]:
        return "Robustness for the owner: not measured (no attack of knowledge none besides identity)."
    return (f"Robustness for the owner: {owner['within margin']} of {owner['benign processings']} benign "
            f"(no-knowledge) processings of the NTEs keep the designated model within {margin:g} points of clean; the "
            f"worst, {owner['worst benign processing']}, leaves {owner['worst benign %']:.1f}% (95% CI "
            f"{owner['worst benign % CI']}%).")


def _names(levels: pd.DataFrame) -> str:
    names = [LEVEL_NAMES[k] for k in levels.knowledge]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _at(row: pd.Series) -> str:
    return f"{row['max unauthorized %']:.1f}% (95% CI {row['CI low %']:.1f}\u2013{row['CI high %']:.1f}%)"


def verdict(des: pd.Series, levels: pd.DataFrame, standing: tuple[str, str], threshold: Thresholds, margin: float,
            weak: dict[str, float] | None = None) -> str:
    """The verdict of one setting: the designated model's utility (or why the evaluation is uninformative), then the
    lowest knowledge level that broke the NTEs, or the lowest that stays inconclusive and the n that would decide
    it, and the levels they held against (every figure with its 95% interval); ``weak``: unauthorized models at or
    below the threshold on clean inputs, named."""
    status, why = standing
    span = f" (95% CI {des['NTE % CI']}%)" if "NTE % CI" in des else ""
    kept = f"{des['NTE %']:.1f}%{span} on the NTEs, clean {des['clean %']:.1f}%"
    parts = [f"{des.designated}, {des.setting}:", {
        "uninformative": f"UNINFORMATIVE ({why}); the designated model {kept}.",
        "not useful": f"NOT useful to the designated model ({kept}: more than {margin:g} points lost).",
        "useful": f"Useful to the designated model ({kept})."}[status]]
    rank = levels.knowledge.map(KNOWLEDGE.index)
    broken, open_ = levels[levels.held == "NOT held"], levels[levels.held == "inconclusive"]
    first = broken.iloc[0] if len(broken) else open_.iloc[0] if len(open_) else None
    end = KNOWLEDGE.index(first.knowledge) if first is not None else len(KNOWLEDGE)
    below, unsure = levels[(levels.held == "held") & (rank < end)], open_[rank[open_.index] < end]
    if first is not None and first.held == "NOT held":
        parts.append(f"NOT held: {LEVEL_NAMES[first.knowledge]} suffices, {first.attack} lifts {first.model} to "
                     f"{_at(first)}, above {first['threshold %']:.1f}% (clean {first['model clean %']:.1f}%)"
                     + (f"; it held against {_names(below)}" if len(below) else "")
                     + (f"; inconclusive at n = {int(first.n)} against {_names(unsure)}" if len(unsure) else "")
                     + ".")
    elif first is not None:
        decide = ("no n would decide it (the accuracy sits at the threshold)" if math.isnan(first["decides at n"])
                  else f"about n = {int(first['decides at n']):,} would decide it")
        parts.append(f"INCONCLUSIVE at n = {int(first.n)} against {LEVEL_NAMES[first.knowledge]}: "
                     f"{first.attack} gives {first.model} {_at(first)}, an interval that contains "
                     f"{first['threshold %']:.1f}%; "
                     f"{decide}" + (f". It held against {_names(below)}." if len(below) else "."))
    else:
        tested = levels.dropna(subset=["max unauthorized %"])
        top = tested.iloc[-1] if len(tested) else None
        highest = "" if top is None else f" (the highest: {top.model} at {_at(top)} under {top.attack})"
        if len(below):
            parts.append(f"Held against {_names(below)}: every unauthorized model's 95% interval lies under "
                         f"{said(threshold)}{highest}.")
        elif top is not None:
            parts.append(f"No unauthorized model above {said(threshold)}{highest}, which shows no protection here.")
    untested = levels[levels.held == "not tested"]
    if len(untested):
        parts.append(f"Not tested: {_names(untested)}.")
    if weak and status != "uninformative":
        names = ", ".join(f"{m} ({v:.1f}%)" for m, v in weak.items())
        why = (f"already at or below {threshold:.1f}% on clean inputs" if not isinstance(threshold, dict) else
               "their clean predictions are nearly all one class (label-free)")
        parts.append(f"Uninformative for {names}: {why}, so their failing on NTEs shows nothing; left out of the "
                     "verdict.")
    return " ".join(parts)
