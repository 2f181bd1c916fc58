"""Sanity checks on a finished run, in the spirit of AutoAttack's ``checks.py``: small, independent, each producing
one-line warnings (logged and written to ``warnings.json``). A warning means a result needs a second look."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nte_eval.attacks.base import ATTACKS
from nte_eval.evaluate.labels import attack_name, knowledge_of, setting_name, target_of
from nte_eval.evaluate.run_folder import example_file
from nte_eval.evaluate.store import CELL
from nte_eval.knowledge import KNOWLEDGE

Warning_ = dict[str, str]


def _warn(check: str, message: str) -> Warning_:
    return {"check": check, "message": message}


def _text(results: pd.DataFrame) -> bool:
    """Whether the run recoded text (soft tokens, scored by token recovery) rather than pixels."""
    return bool((results.metric == "token_recovery").any())


def _setting(params: str) -> str:
    p = json.loads(params)
    return f"designated {p.pop('designated')}, " + ", ".join(f"{k}={v}" for k, v in p.items())


def oracle_fill_restores(results: pd.DataFrame, tolerance: float = 0.05) -> list[Warning_]:
    """``oracle_fill`` knows the exact subspace: it should bring each unauthorized model back to within 5 points of
    its clean accuracy. If not, the attack is broken or the NTE destroys information the models need. On text
    (soft tokens) the exact oracle is ``oracle_projection``, which decodes with the designated embeddings."""
    acc = results[(results.metric == "accuracy") & (results.role == "unauthorized")]
    if acc.empty:
        return []
    oracle = "oracle_projection" if _text(results) else "oracle_fill"
    fill = acc[acc.attack == oracle]
    if fill.empty:
        return [_warn("oracle_fill", f"no {oracle} attack in this run: nothing shows that the attack pipeline can "
                                     f"undo the NTEs (add {{type: {oracle}}} to the attacks).")]
    clean = results[results.metric == "clean_accuracy"].set_index(["encoder_params", "model"]).value
    out = []
    for (enc, params, model), g in fill.groupby(["encoder", "encoder_params", "model"], sort=False):
        best, ref = g.value.max(), clean[(params, model)]
        if isinstance(ref, pd.Series):
            ref = ref.iloc[0]
        if best < ref - tolerance:
            out.append(_warn("oracle_fill", f"{enc} ({_setting(params)}): {oracle} restores {model} to only "
                                            f"{100 * best:.1f}% vs {100 * ref:.1f}% clean (more than "
                                            f"{100 * tolerance:.0f} points below): the attack is broken or the NTE "
                                            f"destroys information the model needs."))
    return out


def strength_monotone(results: pd.DataFrame, tolerance_db: float = 0.1) -> list[Warning_]:
    """A stronger setting of an attack (its declared ``strength`` parameter) should change its input at least as
    much: the PSNR between the attack's output and its input (``change_psnr``) must not rise with strength."""
    change = results[results.metric == "change_psnr"].drop_duplicates(CELL)
    out = []
    for (enc, params, attack), g in change.groupby(["encoder", "encoder_params", "attack"], sort=False):
        strength = getattr(ATTACKS.get(attack), "strength", None)
        if strength is None or len(g) < 2:
            continue
        name, sign = strength
        groups: dict[str, list[tuple[float, float, object]]] = {}
        for p_json, value in zip(g.attack_params, g.value, strict=True):
            p = json.loads(p_json)
            others = json.dumps({k: v for k, v in p.items() if k != name}, sort_keys=True)
            groups.setdefault(others, []).append((sign * p[name], value, p[name]))
        for points in groups.values():
            points.sort(key=lambda t: t[0])
            if any(b[1] - a[1] > tolerance_db for a, b in zip(points, points[1:], strict=False)):
                levels = ", ".join(f"{raw}: {v:.1f} dB" for _, v, raw in points)
                out.append(_warn("monotone", f"{attack} on {enc} ({_setting(params)}): a stronger {name} changed the "
                                             f"images less (change PSNR {levels}); the strength sweep is not "
                                             f"monotone."))
    return out


def identity_matches_encoder(results: pd.DataFrame, tolerance: float = 1e-9) -> list[Warning_]:
    """Under ``identity`` the designated model must score exactly what it scored on the encoder's own output: any
    difference is a pipeline bug (batching, dtype, an identity that is not one)."""
    des = results[(results.role == "designated") & (results.attack == "identity")]
    out = []
    for (enc, params), g in des.groupby(["encoder", "encoder_params"], sort=False):
        vals = g.set_index("metric").value
        if "encoded_accuracy" in vals and abs(vals["accuracy"] - vals["encoded_accuracy"]) > tolerance:
            out.append(_warn("identity", f"{enc} ({_setting(params)}): the designated model scores "
                                         f"{100 * vals['accuracy']:.2f}% under identity but "
                                         f"{100 * vals['encoded_accuracy']:.2f}% on the encoder's output."))
    return out


def certificates_hold(results: pd.DataFrame) -> list[Warning_]:
    """A certified Lipschitz bound must hold on every sample (measured logit change within the bound, certified
    predictions kept): a pass rate below 100% is a bug in the bound or the pipeline, never a property of the data."""
    rates = results[(results.attack == "certify") & (results.metric == "cert_pass_rate")]
    out = []
    for row in rates.itertuples(index=False):
        source = json.loads(row.attack_params)
        if source["status"] == "certified" and row.value < 1:
            out.append(_warn("certificate", f"{row.encoder} ({_setting(row.encoder_params)}): the certified "
                                            f"{source['lipschitz']} bound fails on {100 * (1 - row.value):.1f}% of "
                                            f"the samples (certificates.csv, column passed)."))
    return out


def attacks_keep_content(results: pd.DataFrame, tolerance: float = 0.05) -> list[Warning_]:
    """An attack that models the NTE noise and claims to remove it (knowledge 'method' and above) must keep clean
    content: where it lowers an unauthorized model's accuracy on the clean images (``attacked_clean_accuracy``) more
    than 5 points below ``clean_accuracy`` while ``identity`` does not (a run without identity compares with
    ``clean_accuracy`` alone), its restored accuracy is partly that damage. One warning per attack setting lists
    the encoder settings and models it damages. Not held to this: knowledge-'none' processing (jpeg, blur,
    occlusion...), whose cost on clean images is what processing does (reported as robustness for the owner),
    model attacks (a model adapted to the NTEs may lose clean accuracy; that does not lift it on the NTEs), and
    projections, which delete a subspace by design (``blind_estimates_reach_their_oracles`` compares them with
    their oracle)."""
    acc = results[(results.role == "unauthorized")
                  & results.metric.isin(["clean_accuracy", "attacked_clean_accuracy"])]
    table = acc.pivot_table(index=[*CELL, "model"], columns="metric", values="value", aggfunc="first", sort=False)
    if "attacked_clean_accuracy" not in table:
        return []
    table = table.reset_index()
    table["drop"] = (table.clean_accuracy - table.attacked_clean_accuracy).round(9)  # k/n differences, no float noise
    identity = table[table.attack == "identity"].set_index(["encoder", "encoder_params", "model"])["drop"]
    baseline = "identity: no drop" if len(identity) else "no identity in this run: compared with clean accuracy"
    out = []
    for (attack, attack_params), rows in table.groupby(["attack", "attack_params"], sort=False):
        if (KNOWLEDGE.index(knowledge_of(attack, attack_params)) < KNOWLEDGE.index("method")
                or attack in ATTACKS and ATTACKS.get(attack).projection or target_of(attack, attack_params) != "input"):
            continue
        damaged = []
        for (enc, params), g in rows.groupby(["encoder", "encoder_params"], sort=False):
            models = [f"{r.model} {100 * r.clean_accuracy:.1f}% -> {100 * r.attacked_clean_accuracy:.1f}%"
                      for r in g.itertuples(index=False)
                      if r.drop > tolerance and identity.get((enc, params, r.model), 0.0) <= tolerance]
            if models:
                designated = json.loads(params)["designated"]
                damaged.append(f"{setting_name(enc, params)} (designated {designated}): {', '.join(models)}")
        if damaged:
            out.append(_warn("content", f"{attack_name(attack, attack_params)} damages clean content: applied to the "
                                        f"clean images it costs unauthorized models more than "
                                        f"{100 * tolerance:.0f} points of accuracy ({baseline}) on {len(damaged)} "
                                        f"encoder setting(s): {'; '.join(damaged)}. Its accuracies on the NTEs "
                                        "reflect that damage, not only the NTEs' protection."))
    return out


def blind_estimates_reach_their_oracles(results: pd.DataFrame, close_deg: float = 10.0,
                                        tolerance: float = 0.05) -> list[Warning_]:
    """An attack that estimates the designated subspace from the released corpus (``blind_fill``, ``blind_subspace``)
    and comes within ``close_deg`` degrees of the true one (``estimate_angle_deg``, the largest principal angle)
    should do about what its oracle does with the true subspace (``oracle_fill``, ``oracle_projection``). More than
    5 points below it for an unauthorized model means the estimator, not the information, is what fails: the
    method-level verdict then understates what a method-level attacker reaches. One warning per attack setting."""
    angles = results[results.metric == "estimate_angle_deg"]
    acc = results[(results.metric == "accuracy") & (results.role == "unauthorized")]
    out = []
    for row in angles.itertuples(index=False):
        oracle = ATTACKS.get(row.attack).oracle if row.attack in ATTACKS else None
        if oracle is None or row.value > close_deg:
            continue
        setting = acc[(acc.encoder == row.encoder) & (acc.encoder_params == row.encoder_params)]
        mine = setting[(setting.attack == row.attack) & (setting.attack_params == row.attack_params)]
        mine = mine.set_index("model").value
        theirs = setting[setting.attack == oracle].groupby("model").value.max()
        short = [f"{m} {100 * mine[m]:.1f}% vs {100 * theirs[m]:.1f}%" for m in mine.index
                 if m in theirs.index and round(theirs[m] - mine[m], 9) > tolerance]
        if short:
            designated = json.loads(row.encoder_params)["designated"]
            out.append(_warn("estimator", f"{attack_name(row.attack, row.attack_params)} on "
                                          f"{setting_name(row.encoder, row.encoder_params)} (designated {designated}):"
                                          f" its subspace estimate is within {row.value:.1f} degrees of the true one, "
                                          f"yet it restores less than {oracle} (more than {100 * tolerance:.0f} points"
                                          f" below): {', '.join(short)}. A weak estimator: the method-level result "
                                          "understates what an attacker with this knowledge reaches."))
    return out


def attacks_stay_in_range(results: pd.DataFrame, out: Path, slack: float = 0.5 / 255) -> list[Warning_]:
    """Images are pixels in [0, 1]. Where a setting's released images lie in [0, 1] (boxed, storable NTEs), an attack
    whose reconstructions leave it (by more than half an 8-bit step, on the saved examples) hands the models images
    no camera produces; one warning lists those attack settings. Float NTEs that leave [0, 1] themselves are not
    held against the attacks."""
    if _text(results):
        return []
    found: dict[str, tuple[float, float]] = {}
    for cell in results[CELL].drop_duplicates().itertuples(index=False):
        released, attacked = example_file(out, cell.encoder, cell.encoder_params), example_file(out, *cell)
        if not (released.is_file() and attacked.is_file()):
            continue
        x, y = np.load(released), np.load(attacked)
        if x.min() >= -slack and x.max() <= 1 + slack and (y.min() < -slack or y.max() > 1 + slack):
            name = attack_name(cell.attack, cell.attack_params)
            low, high = found.get(name, (np.inf, -np.inf))
            found[name] = (min(low, float(y.min())), max(high, float(y.max())))
    if not found:
        return []
    listed = "; ".join(f"{name} [{low:.3f}, {high:.3f}]" for name, (low, high) in found.items())
    return [_warn("range", f"{len(found)} attack setting(s) turn released images inside [0, 1] into values outside "
                           f"it (range on the saved examples): {listed}. Models are handed images no camera produces: "
                           "read those accuracies as such, or clamp the attack's output to [0, 1].")]


CHECKS: tuple[Callable[[pd.DataFrame], list[Warning_]], ...] = (oracle_fill_restores, strength_monotone,
                                                                identity_matches_encoder, certificates_hold,
                                                                attacks_keep_content,
                                                                blind_estimates_reach_their_oracles)


def run_checks(results: pd.DataFrame, out: Path) -> list[Warning_]:
    """Every check's warnings; ``out``: the run folder, whose saved examples the range check reads."""
    return [w for check in CHECKS for w in check(results)] + attacks_stay_in_range(results, out)
