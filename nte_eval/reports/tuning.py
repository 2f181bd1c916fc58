"""Choosing an attack's strength without labels. The headline's best attack is picked with hindsight (the labels
say which setting restored most); a method-level attacker without labels scores each setting by the PSNR at which
it restores the attacker's own NTEs (``probe_psnr``: public images encoded for a random surrogate; see
``nte_eval.attacks.synthetic``) and commits to the best. This table puts the two choices side by side."""

from __future__ import annotations

import json

import pandas as pd

from nte_eval.attacks.base import ATTACKS
from nte_eval.evaluate.labels import attack_name, setting_name
from nte_eval.reports.verdict import ci

TUNING_COLUMNS = ["designated", "setting", "attack", "label-free choice", "label-free %", "label-free % CI",
                  "hindsight choice", "hindsight %", "hindsight % CI", "gap (points)"]


def _family(attack: str, params: str) -> str | None:
    """The attack's parameters without its strength parameter (settings of one family differ in strength only);
    None for an attack without a declared strength."""
    strength = ATTACKS.get(attack).strength if attack in ATTACKS else None
    if strength is None:
        return None
    return json.dumps({k: v for k, v in json.loads(params).items() if k != strength[0]}, sort_keys=True)


def label_free_choice(results: pd.DataFrame) -> pd.DataFrame:
    """Per designated model, encoder setting and attack swept over its strength: the setting with the best probe
    PSNR and the one with the best mean accuracy over the unauthorized models (hindsight), each with that mean (%)."""
    probe = results[results.metric == "probe_psnr"]
    acc = results[(results.metric == "accuracy") & (results.role == "unauthorized")]
    cells = acc.groupby(["encoder", "encoder_params", "attack", "attack_params"], sort=False)
    mean, pooled = cells.value.mean(), cells.n.sum()  # every model's n samples pooled
    rows = []
    for (enc, params, attack), g in probe.groupby(["encoder", "encoder_params", "attack"], sort=False):
        families = g.attack_params.map(lambda p, a=attack: _family(a, p))
        for family, f in g.groupby(families, sort=False):
            if family is None or len(f) < 2:
                continue
            scores = mean.loc[enc, params, attack].reindex(f.attack_params)
            chosen = f.attack_params.iloc[int(f.value.to_numpy().argmax())]
            best = scores.idxmax()
            free, hindsight = round(100 * scores[chosen], 1), round(100 * scores[best], 1)
            n = pooled.loc[enc, params, attack]
            rows.append({"designated": json.loads(params)["designated"], "setting": setting_name(enc, params),
                         "attack": attack, "label-free choice": attack_name(attack, chosen), "label-free %": free,
                         "label-free % CI": ci(scores[chosen], n[chosen]),
                         "hindsight choice": attack_name(attack, best), "hindsight %": hindsight,
                         "hindsight % CI": ci(scores[best], n[best]), "gap (points)": round(hindsight - free, 1)})
    return pd.DataFrame(rows, columns=TUNING_COLUMNS)
