"""The report's page "Adapting the unauthorized model": per encoder setting, each unauthorized model's accuracy with
no attack, with the best input attack, with each model attack and with the best chain of an input and a model attack;
cells a model attack could not produce say "n/a" or "failed", with the reason beneath. Read from results.csv and the
manifest only."""

from __future__ import annotations

import json

import pandas as pd

from nte_eval.evaluate.labels import attack_name, compact, setting_name
from nte_eval.metrics import share_intervals

SKIPPED = {"not_applicable": "n/a", "adaptation_failed": "failed"}  # results' metric -> what the cell shows


def attack_targets(manifest: dict) -> dict[tuple[str, str], str]:
    """(attack, compact params) -> what it attacks: 'input', 'model' or 'chain' (an input and a model attack)."""
    return {(a["type"], compact(a["params"])): a.get("target", "input") for a in manifest.get("attacks", [])}


def _cell(row: pd.Series | None, skipped: str | None, note: str = "") -> str:
    if skipped is not None:
        return f"{skipped}{note}"
    if row is None:
        return "-"
    (low,), (high,) = share_intervals([row.value], [row.n])
    return f"{100 * row.value:.1f} ({100 * low:.0f}\u2013{100 * high:.0f}){note}"


class _Setting:
    """One encoder setting's table: the accuracy rows by (attack, params, model), with the letters of the best
    attacks and the numbered reasons of the cells left out."""

    def __init__(self, rows: pd.DataFrame, targets: dict, knowledge: dict, skipped: dict, reasons: dict):
        self.by_attack = {(r.attack, r.attack_params, r.model): r for _, r in rows.iterrows()}
        self.setting = (rows.encoder.iloc[0], rows.encoder_params.iloc[0])
        self.targets, self.knowledge, self.skipped, self.reasons = targets, knowledge, skipped, reasons
        self.tags: dict[str, str] = {}
        self.notes: dict[str, int] = {}

    def best(self, target: str, model: str) -> str:
        """The accuracy under the ``target`` attack ('input' or 'chain') that helps ``model`` most, with its letter."""
        rows = [r for (a, p, m), r in self.by_attack.items()
                if m == model and a != "identity" and self.targets.get((a, p)) == target]
        if not rows:
            gone = [k for k in self.skipped if k[:2] == self.setting and k[4] == model
                    and self.targets.get((k[2], k[3])) == target]
            return self.one(*gone[0][2:]) if gone else "-"
        top = max(rows, key=lambda r: r.value)
        name = f"{attack_name(top.attack, top.attack_params)} [{self.knowledge.get((top.attack, top.attack_params))}]"
        count = len(self.tags)
        tag = self.tags.setdefault(name, chr(ord("a") + count) if count < 26 else f"#{count}")
        return _cell(top, None, f" {tag}")

    def one(self, attack: str, attack_params: str, model: str) -> str:
        """The accuracy under one attack setting, or why the cell has none."""
        key = (*self.setting, attack, attack_params, model)
        if key not in self.skipped:
            return _cell(self.by_attack.get((attack, attack_params, model)), None)
        reason = self.reasons.get(key, f"{model}: no reason recorded")
        return _cell(None, self.skipped[key], f" [{self.notes.setdefault(reason, len(self.notes) + 1)}]")


def adaptation_lines(results: pd.DataFrame, manifest: dict, accuracy: str) -> list[str]:
    """The page's text lines; empty when the run has no model attack."""
    targets = attack_targets(manifest)
    if all(t == "input" for t in targets.values()):
        return []
    knowledge = {(a["type"], compact(a["params"])): a.get("knowledge", "?") for a in manifest.get("attacks", [])}
    unauth = results[results.role == "unauthorized"]
    skipped = {(r.encoder, r.encoder_params, r.attack, r.attack_params, r.model): SKIPPED[r.metric]
               for r in unauth[unauth.metric.isin(list(SKIPPED))].itertuples(index=False)}
    reasons = {(*e["cell"], e["model"]): e["reason"] for e in manifest.get("adaptation", [])}
    lines = [f"A model attack adapts a copy of each unauthorized model (never the designated one) to what its "
             f"knowledge gives it, and the adapted copy is handed the released NTEs; a chain hands it an input "
             f"attack's reconstruction. {accuracy} % with its exact 95% interval; 'best' picks, per model, the "
             f"attack that helps it most (letters name it, below each table). n/a: the attack cannot adapt that "
             f"model; failed: its adaptation diverged (the reasons follow each table). The adapted models' accuracy "
             f"on the clean images (the calibration) is results.csv's attacked_clean_accuracy.", ""]
    model_attacks = [k for k, t in targets.items() if t == "model"]
    acc = unauth[unauth.metric == "accuracy"]
    for (enc, params), g in acc.groupby(["encoder", "encoder_params"], sort=False):
        models = list(dict.fromkeys(g.model))
        table = _Setting(g, targets, knowledge, skipped, reasons)
        rows = {"no attack": [table.one("identity", "{}", m) for m in models],
                "best input attack": [table.best("input", m) for m in models]}
        for a, p in model_attacks:
            rows[f"{attack_name(a, p)} [{knowledge[(a, p)]}]"] = [table.one(a, p, m) for m in models]
        if "chain" in targets.values():
            rows["best chain (input + model)"] = [table.best("chain", m) for m in models]
        frame = pd.DataFrame(rows, index=[m.removeprefix("zoo:") for m in models]).T
        lines += [f"{setting_name(enc, params)}, designated {json.loads(params)['designated']}:",
                  *frame.to_string().splitlines(), *(f"  {tag} = {name}" for name, tag in table.tags.items()),
                  *(f"  [{number}] {text}" for text, number in table.notes.items()), ""]
    return lines
