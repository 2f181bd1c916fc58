"""The certification in words and tables, read from a run folder's ``certify.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from nte_eval.evaluate.labels import setting_name
from nte_eval.evaluate.run_folder import CERTIFY
from nte_eval.reports.verdict import ci


def certification_table(out: Path) -> pd.DataFrame:
    """Certified (or, for an estimate, estimated) accuracy (%), pass rate (%) and median tightness per designated
    model, encoder setting, PSNR and Lipschitz source, from ``certify.json``; refused sources are in
    ``lipschitz.csv`` with their reason."""
    table = pd.DataFrame(json.loads((Path(out) / CERTIFY).read_text()).get("fidelity", []))
    if table.empty:
        return table
    table["setting"] = [setting_name(e, p, psnr=False) for e, p in zip(table.encoder, table.encoder_params,
                                                                           strict=True)]
    table["source"] = table.lipschitz + " (" + table.status + ")"
    pick = lambda names: table.metrics.map(lambda m: next((m[n] for n in names if n in m), math.nan))  # noqa: E731
    certified, passed = pick(("certified_accuracy", "estimated_accuracy")), pick(("cert_pass_rate",
                                                                                  "estimate_pass_rate"))
    n = table["n"] if "n" in table else pd.Series(0, index=table.index)
    table["certified % (estimated)"] = (100 * certified).round(1)
    table["certified % (estimated) CI"] = [ci(v, k) for v, k in zip(certified, n, strict=True)]
    table["pass %"] = (100 * passed).round(1)
    table["pass % CI"] = [ci(v, k) for v, k in zip(passed, n, strict=True)]
    table["tightness"] = pick(("bound_tightness",)).map(lambda v: f"{v:.2g}")
    return table.set_index(["designated", "setting", "psnr", "source"])[[
        "certified % (estimated)", "certified % (estimated) CI", "pass %", "pass % CI", "tightness"]]


def degradation_line(out: Path) -> str:
    """The degradation study in two sentences: rank correlations with the accuracy drop, and the checks."""
    deg = json.loads((Path(out) / CERTIFY).read_text()).get("degradation")
    if not deg:
        return ""
    mis, energy = deg["spearman_misalignment"], deg["spearman_predicted_energy"]
    return (f"Degradation at {deg['psnr']:g} dB: Spearman rho with the accuracy drop = {mis['rho']:.3f} "
            f"(p = {mis['p_value']:.3g}, {mis['pairs']} unordered model pairs) for the misalignment score, "
            f"{energy['rho']:.3f} (p = {energy['p_value']:.3g}, {energy['pairs']} ordered pairs) for the predicted "
            f"first-layer energy. Predicted and measured energy agree for {deg['energy_agree']} of "
            f"{deg['pairs']} pairs; the principal-angle lower bound holds for {deg['lower_bound_holds']} of "
            f"{deg['lower_bound_pairs']} (angles.csv).")


def certification_text(out: Path) -> str:
    """What `nte-eval certify` prints: the certificates table and the degradation line ('' without a certification)."""
    if not (out / CERTIFY).is_file():
        return ""
    text, table, line = "", certification_table(out), degradation_line(out)
    if len(table):
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
            text += ("\nFidelity certificates of the designated models: % of samples certified with a correct clean "
                     "prediction (for an estimate source: what it would certify if the estimate were a bound); pass % "
                     "must be 100 for a certified source; tightness = median measured/bound (certificates.csv, "
                     "lipschitz.csv):\n" + table.to_string() + "\n")
    return text + (f"\n{line}\n" if line else "")
