"""Merging a run's item files into its tables: results (tidy metrics per cell and model), samples (per-sample
correctness, for the unions), the worst case, the sanity checks' warnings and the manifest. Every run ends with it,
and `nte-eval merge DIR` runs it on a folder that ``--shard I/N`` processes filled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from nte_eval.data.glue import task_metric
from nte_eval.errors import NTEError
from nte_eval.evaluate.checks import run_checks
from nte_eval.evaluate.labels import knowledge_of
from nte_eval.evaluate.run_folder import MANIFEST, PLAN, RESULTS, RESULTS_PARQUET, SAMPLES, WORST_CASE, atomic_write
from nte_eval.evaluate.shards import read_item, verified_items
from nte_eval.evaluate.store import CELL, COLUMNS, INTERVAL, SAMPLE_COLUMNS, read_rows
from nte_eval.evaluate.worst_case import worst_case
from nte_eval.metrics import share_intervals

PROPORTIONS = {"accuracy", "clean_accuracy", "agreement", "attacked_clean_accuracy", "encoded_accuracy",
               "certified_accuracy", "cert_pass_rate"}  # shares of the n samples: they get a 95% interval
PER_SAMPLE = ["index", "model", "role", "label", "clean_pred", "pred", "cal_pred", "encoded_pred", "logit_change",
              "first_layer_ratio"]  # then the input-space measurements (cells.input_metrics), one column each


def _bits(correct: pd.Series) -> str:
    return "".join("1" if c else "0" for c in correct)


def cell_rows(frame: pd.DataFrame, metric: str = "accuracy") -> tuple[list[tuple], list[tuple]]:
    """A cell's per-sample rows (``cells.evaluate_cell``, any number of shards) -> its (model, role, metric, value,
    n) rows and per-sample correctness rows (model, input, bits in sample order) for the attacked NTEs and the
    attacked clean images. ``metric``: a GLUE task's own metric (``mcc``, ``f1``), beside accuracy."""
    rows, samples = [], []
    measured = [c for c in frame.columns if c not in PER_SAMPLE and c not in CELL]
    for name, g in frame.groupby("model", sort=False):
        g = g.sort_values("index")
        n, role = len(g), g["role"].iloc[0]
        correct, cal_correct = g["pred"] == g["label"], g["cal_pred"] == g["label"]
        values = [("clean_accuracy", (g["clean_pred"] == g["label"]).mean()), ("accuracy", correct.mean()),
                  ("chance", g["label"].value_counts().iloc[0] / n),  # the most frequent label's share (label-free:
                  # of the model's own clean predictions): what always answering one class scores
                  ("agreement", (g["pred"] == g["clean_pred"]).mean()), ("logit_change", g["logit_change"].mean()),
                  *[(c, g[c].mean()) for c in measured if g[c].notna().all()],
                  ("first_layer_ratio", g["first_layer_ratio"].mean()), ("attacked_clean_accuracy", cal_correct.mean())]
        if metric != "accuracy":
            label = torch.as_tensor(g["label"].to_numpy())
            values += [(metric, task_metric(metric, torch.as_tensor(g["pred"].to_numpy()), label)),
                       (f"clean_{metric}", task_metric(metric, torch.as_tensor(g["clean_pred"].to_numpy()), label))]
        if role == "designated":
            values.append(("encoded_accuracy", (g["encoded_pred"] == g["label"]).mean()))
        rows += [(name, role, m, float(v), n) for m, v in values]
        samples += [(name, "attacked", _bits(correct)), (name, "clean", _bits(cal_correct))]
    return rows, samples


def result_intervals(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with ``ci_low``/``ci_high``: the exact (Clopper-Pearson) 95% interval of every proportion metric
    (``PROPORTIONS``) over its n samples; empty for the other metrics."""
    shares = results.metric.isin(PROPORTIONS)
    low, high = share_intervals(results.value[shares], results.n[shares])
    return results.assign(ci_low=pd.Series(low, index=results.index[shares]),
                          ci_high=pd.Series(high, index=results.index[shares]))


def read_plan(out: Path) -> dict[str, Any]:
    """The run's plan (its items and what the manifest says about the run), written when the run started."""
    path = Path(out) / PLAN
    if not path.is_file():
        raise NTEError(f"{out} has no {PLAN}: not a run folder of this nte-eval version (or the run never started); "
                       f"run `nte-eval run SUITE --out {out}` first.")
    return json.loads(path.read_text())


def _describe(item: dict[str, Any]) -> str:
    if item["kind"] == "certify":
        return "the certification"
    enc, enc_params, att, att_params = item["cell"]
    return f"{enc} {enc_params} x {att} {att_params}, samples {item['start']}-{item['stop'] - 1}"


def merge_tables(out: Path, log: Callable[[str], None], total_seconds: float | None = None,
                 resumed: bool = False) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Write results.csv/.parquet, samples.csv, worst_case.csv and manifest.json from the plan and every item file;
    returns the results and the sanity checks' warnings. NTEError naming the missing items when any is missing."""
    plan = read_plan(out)
    files = verified_items(out, log)
    missing = [it for it in plan["items"] if it["id"] not in files]
    if missing:
        shown = "; ".join(_describe(it) for it in missing[:3]) + ("; ..." if len(missing) > 3 else "")
        raise NTEError(f"{out}: {len(missing)} of {len(plan['items'])} items have no finished file yet ({shown}); run "
                       f"the processes that own them (`nte-eval run SUITE --out {out} --shard I/N` for every I, or "
                       f"`--resume` a single run), then merge again.")
    rows, samples, records, cert = [], [], [], None
    by_cell: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for it in plan["items"]:
        by_cell.setdefault(tuple(it["cell"]) if it["kind"] == "cell" else ("certify",), []).append(it)
    for cell, items in by_cell.items():
        parts = [read_item(files[it["id"]]) for it in items]
        records += [{**rec, "cell": cell} for _, rec in parts]
        if cell == ("certify",):
            cert = parts[0][0]
            continue
        frame = pd.concat([f for f, _ in parts], ignore_index=True)
        cell_metric_rows, cell_samples = cell_rows(frame, plan["metric"])
        extra = [tuple(r) for r in parts[0][1].get("cell_metrics", [])]  # the same in every shard of the cell
        rows += [(*cell, *r) for r in cell_metric_rows + extra]
        samples += [(*cell, *s) for s in cell_samples]
    frames = [pd.DataFrame(rows, columns=COLUMNS)] + ([cert[COLUMNS]] if cert is not None else [])
    with atomic_write(out / RESULTS) as tmp:
        table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
        result_intervals(table).to_csv(tmp, index=False)
    with atomic_write(out / SAMPLES) as tmp:
        pd.DataFrame(samples, columns=SAMPLE_COLUMNS).to_csv(tmp, index=False)
    with atomic_write(out / RESULTS_PARQUET) as tmp:
        read_rows(out / RESULTS, COLUMNS + INTERVAL).to_parquet(tmp, index=False)
    results, per_sample = read_rows(out / RESULTS, COLUMNS), read_rows(out / SAMPLES, SAMPLE_COLUMNS)
    with atomic_write(out / WORST_CASE) as tmp:
        worst_case(results, per_sample, knowledge_of).to_csv(tmp, index=False)
    timings = [{"item": r["id"], "cell": list(r["cell"]), "samples": [r["start"], r["stop"]],
                "seconds": r.get("seconds")} for r in records]
    subspaces = {r["setting"]: r["encoder_info"] for r in records if "encoder_info" in r}
    adaptation = {(*r["cell"], m): {"cell": list(r["cell"]), "model": m, "status": status, "reason": reason}
                  for r in records for m, (status, reason) in r.get("adaptation", {}).items()}  # per cell, not shard
    manifest = {**plan["manifest"], "status": "complete", "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "subspaces": subspaces, "adaptation": list(adaptation.values()),
                "timings": {"total_seconds": round(total_seconds if total_seconds is not None else
                                                   sum(t["seconds"] or 0 for t in timings), 3),
                            "resumed": resumed, "items": timings}}
    with atomic_write(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
    return results, run_checks(results, out)
