"""The headline of a run, from its files alone: the designated models, the unauthorized models under attack, the
robustness for the owner, the certificates, and one plain verdict per encoder setting (``reports.verdict``).

The verdicts follow the best single attack at or below each knowledge level (levels are cumulative); the per-sample
union over attacks is never used for a verdict (it picks attacks with hindsight); it is shown beside its clean-input
calibration.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nte_eval.data.sources import SOURCES
from nte_eval.evaluate.labels import attack_name, compact, knowledge_of, setting_name
from nte_eval.evaluate.run_folder import CERTIFY, MANIFEST, RESULTS, WARNINGS, WORST_CASE
from nte_eval.evaluate.store import COLUMNS, read_rows
from nte_eval.evaluate.worst_case import read_worst_case
from nte_eval.reports.certification import certification_table
from nte_eval.reports.keys import key_spread
from nte_eval.reports.tuning import label_free_choice
from nte_eval.reports.verdict import ci, levels_table, owner_line, owner_table, standing, verdict, weak_models

MARGIN = 10.0  # points above chance that still count as "held"; the designated model may lose as many
METRICS = {"mcc": ("MCC x100", "Matthews correlation x 100 (GLUE's CoLA metric)"),
           "f1": ("F1 %", "F1 of the positive class in % (GLUE's MRPC and QQP metric)")}  # a text task's own metric
UNAUTHORIZED_COLUMNS = ["designated", "setting", "model", "n", "clean %", "clean % CI", "no attack %",
                        "no attack % CI", "best attack %", "best attack % CI", "best attack", "p vs no attack",
                        "union %", "union % CI", "union clean %", "union clean % CI"]


@dataclass
class Headline:
    """The headline tables (accuracy in %) and verdicts of one run."""

    settings: pd.DataFrame  # encoder, encoder_params, designated, setting (short label), n, standing (run order)
    designated: pd.DataFrame
    unauthorized: pd.DataFrame
    levels: pd.DataFrame
    owner: pd.DataFrame  # robustness for the owner
    certification: pd.DataFrame
    verdicts: list[str]
    warnings: list[dict] = field(default_factory=list)
    chance: float | None = None
    margin: float = MARGIN
    threshold: float = MARGIN  # the highest unauthorized accuracy (%) that still counts as held: chance + margin
    modality: str = "image"  # or "text"
    metric: str = "accuracy"  # a text task's own metric beside accuracy: "mcc", "f1" (METRICS) or "accuracy"
    source: str = ""  # the data source, e.g. "mmbench_tsv" (multiple-choice accuracy)
    label_free: bool = False  # no labels: accuracy is each model's agreement with its own clean prediction
    keys: pd.DataFrame = field(default_factory=pd.DataFrame)  # the spread over NTE keys (seeds), if several
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)  # strength chosen without labels vs with hindsight

    @property
    def threshold_label(self) -> str:
        """The figures' threshold line, in words (label-free: the lowest of the models' own thresholds)."""
        return f"held threshold {self.threshold:.1f}%" + (" (the lowest model's)" if self.label_free else "")

    @property
    def chance_text(self) -> str:
        """The chance rate the threshold adds the margin to, in words."""
        if self.chance is not None:
            return f"{100 * self.chance:.1f}%"
        if self.label_free:
            return "each model's own (label-free: the share of its most frequent clean prediction)"
        return "not recorded by this run (taken as 0)"


def psnr_name(modality: str) -> tuple[str, str]:
    """The PSNR's name and its unit note: pixel-space PSNR for images, token PSNR for text
    (``nte_eval.data.tokens``)."""
    return ("token PSNR", "peak 1, per stored entry") if modality == "text" else ("PSNR", "pixel space, peak 1")


def multiple_choice(source: str) -> bool:
    """Whether the run's data source scores multiple-choice answers (a VLM's A-D), per ``data.sources``."""
    return source in SOURCES and SOURCES[source].scoring == "multiple_choice"


LABEL_FREE = ("label-free data: every accuracy is a model's agreement with its own top-1 prediction on the clean "
              "input (clean = 100% by definition)")


def accuracy_name(source: str, label_free: bool = False) -> str:
    """What accuracy means for a data source: agreement with the model's own clean prediction for label-free data,
    multiple-choice accuracy over options A-D for MMBench, else top-1."""
    if label_free:
        return "agreement with own clean top-1"
    return "multiple-choice accuracy (A\u2013D)" if multiple_choice(source) else "top-1 accuracy"


def _pct(value: float) -> float:
    return round(100 * value, 1)


def _settings(results: pd.DataFrame) -> pd.DataFrame:
    """The run's encoder settings in run order, with their designated model and short label."""
    cells = results[results.attack == "identity"][["encoder", "encoder_params"]].drop_duplicates()
    return cells.assign(designated=cells.encoder_params.map(lambda p: json.loads(p)["designated"]),
                        setting=[setting_name(e, p) for e, p in zip(cells.encoder, cells.encoder_params, strict=True)])


def _certified(fidelity: list[dict], encoder: str, params: str, psnrs: list[float]) -> dict[str, object]:
    """The best certified source's certified accuracy and pass rate for exactly this setting (same PSNR); ``psnrs``:
    the PSNRs the certification covered."""
    entries = [f for f in fidelity if f["encoder"] == encoder and f["encoder_params"] == params]
    certified = [f for f in entries if f["status"] == "certified"]
    if not entries:
        covered = json.loads(params).get("psnr") in psnrs
        return {"certified %": math.nan, "certified % CI": "-", "cert. pass %": math.nan, "cert. pass % CI": "-",
                "certified by": "none (no Lipschitz bound: lipschitz.csv)" if covered else
                "not certified at this PSNR"}
    if not certified:
        return {"certified %": math.nan, "certified % CI": "-", "cert. pass %": math.nan, "cert. pass % CI": "-",
                "certified by": "none (no certified bound)"}
    best = max(certified, key=lambda f: f["metrics"]["certified_accuracy"])
    worst = min(certified, key=lambda f: f["metrics"]["cert_pass_rate"])
    return {"certified %": _pct(best["metrics"]["certified_accuracy"]),
            "certified % CI": ci(best["metrics"]["certified_accuracy"], best.get("n", 0)),
            "cert. pass %": _pct(worst["metrics"]["cert_pass_rate"]),
            "cert. pass % CI": ci(worst["metrics"]["cert_pass_rate"], worst.get("n", 0)),
            "certified by": best["lipschitz"]}


def designated_table(results: pd.DataFrame, settings: pd.DataFrame, fidelity: list[dict],
                     psnrs: list[float] | None = None) -> pd.DataFrame:
    """Per designated model and encoder setting: achieved PSNR, clean and NTE accuracy, agreement, first-layer
    ratio, and the certification of exactly that setting."""
    rows = []
    ident = results[(results.attack == "identity") & (results.role == "designated")]
    for s in settings.itertuples(index=False):
        part = ident[ident.encoder_params == s.encoder_params].set_index("metric")
        m, n = part.value, int(part.n["accuracy"])
        rows.append({"designated": s.designated, "setting": s.setting, "n": n, "PSNR dB": round(m["psnr"], 2) + 0.0,
                     "clean %": _pct(m["clean_accuracy"]), "clean % CI": ci(m["clean_accuracy"], n),
                     "NTE %": _pct(m["accuracy"]), "NTE % CI": ci(m["accuracy"], n),
                     "agreement %": _pct(m["agreement"]), "agreement % CI": ci(m["agreement"], n),
                     "first-layer ratio": float(f"{m['first_layer_ratio']:.2g}"),
                     **_certified(fidelity, s.encoder, s.encoder_params, psnrs or [])})
    return pd.DataFrame(rows)


def attack_knowledge(manifest: dict) -> dict[tuple[str, str], str]:
    """(attack, compact params) -> knowledge level, from the manifest (a plugin need not be importable)."""
    out = {}
    for a in manifest.get("attacks", []):
        params = compact(a["params"])
        out[(a["type"], params)] = a.get("knowledge") or knowledge_of(a["type"], params)
    return out


def text_designated_table(results: pd.DataFrame, settings: pd.DataFrame, metric: str,
                          knowledge: dict[tuple[str, str], str]) -> pd.DataFrame:
    """Per designated text model and encoder setting: token PSNR, storage per example, the share of tokens read back
    right by argmax with no attack and by the best attack short of the oracle (named), clean and NTE accuracy (and
    the task's own metric), agreement and first-layer ratio. Text models have no certificates."""
    rows = []
    des = results[results.role == "designated"]
    for s in settings.itertuples(index=False):
        part = des[des.encoder_params == s.encoder_params]
        ident = part[part.attack == "identity"].set_index("metric")
        m, n = ident.value, int(ident.n["accuracy"])
        rec = part[(part.metric == "token_recovery")]
        short_of_oracle = [knowledge.get((a, p), "oracle") != "oracle"
                           for a, p in zip(rec.attack, rec.attack_params, strict=True)]
        rec = rec[pd.Series(short_of_oracle, index=rec.index, dtype=bool)]
        best = rec.loc[rec.value.idxmax()] if len(rec) else None
        stored = m.get("bytes_per_example", math.nan)
        row = {"designated": s.designated, "setting": s.setting, "token PSNR dB": round(m["psnr"], 2) + 0.0,
               "kB/example": round(stored / 1000, 1), "token recovery %": _pct(m["token_recovery"]),
               "best non-oracle recovery %": math.nan if best is None else _pct(best.value),
               "recovered by": "-" if best is None else attack_name(best.attack, best.attack_params),
               "n": n, "clean %": _pct(m["clean_accuracy"]), "clean % CI": ci(m["clean_accuracy"], n),
               "NTE %": _pct(m["accuracy"]), "NTE % CI": ci(m["accuracy"], n)}
        if metric in METRICS:
            name = METRICS[metric][0]
            row |= {f"clean {name}": _pct(m[f"clean_{metric}"]), f"NTE {name}": _pct(m[metric])}
        rows.append(row | {"agreement %": _pct(m["agreement"]), "agreement % CI": ci(m["agreement"], n),
                           "first-layer ratio": float(f"{m['first_layer_ratio']:.2g}")})
    return pd.DataFrame(rows)


def unauthorized_table(worst: pd.DataFrame, settings: pd.DataFrame, results: pd.DataFrame,
                       metric: str = "accuracy") -> pd.DataFrame:
    """Per setting and unauthorized model: clean, no attack, the best single attack (named), and the union over
    attacks beside the same union on clean inputs; for a text task with its own metric (``METRICS``), that metric
    clean, with no attack and under the best single attack (chosen by accuracy), taken from ``results``."""
    rows = []
    wc = worst[worst.role == "unauthorized"]
    extra = metric in METRICS
    name = METRICS[metric][0] if extra else ""
    for s in settings.itertuples(index=False):
        part = wc[(wc.encoder == s.encoder) & (wc.encoder_params == s.encoder_params)]
        for model, g in part.groupby("model", sort=False):
            v = g.set_index("summary")
            best, n = v.loc["best_single"], int(g.n.iloc[0])
            span = {k: ci(v.value[k], n) if k in v.index else "-" for k in ("clean", "no_attack", "union",
                                                                                 "union_clean")}
            row = {"designated": s.designated, "setting": s.setting, "model": model, "n": n,
                   "clean %": _pct(v.value["clean"]), "clean % CI": span["clean"],
                   "no attack %": _pct(v.value["no_attack"]), "no attack % CI": span["no_attack"],
                   "best attack %": _pct(best.value), "best attack % CI": ci(best.value, n),
                   "best attack": f"{attack_name(best.attack, best.attack_params)} ({best.knowledge})",
                   "p vs no attack": float(best.get("p_vs_no_attack", math.nan))}
            if extra:
                cells = results[(results.encoder_params == s.encoder_params) & (results.model == model)]
                value = cells.set_index(["attack", "attack_params", "metric"]).value
                row |= {f"clean {name}": _pct(value[("identity", "{}", f"clean_{metric}")]),
                        f"no attack {name}": _pct(value[("identity", "{}", metric)]),
                        f"best attack {name}": _pct(value[(best.attack, best.attack_params, metric)])}
            rows.append(row | {"union %": _pct(v.value.get("union", math.nan)), "union % CI": span["union"],
                               "union clean %": _pct(v.value.get("union_clean", math.nan)),
                               "union clean % CI": span["union_clean"]})
    extras = [f"{kind} {name}" for kind in ("clean", "no attack", "best attack")] if extra else []
    return pd.DataFrame(rows, columns=[*UNAUTHORIZED_COLUMNS[:-4], *extras, *UNAUTHORIZED_COLUMNS[-4:]])


def headline(run_dir: str | Path, margin: float = MARGIN, results: pd.DataFrame | None = None,
             worst: pd.DataFrame | None = None) -> Headline:
    """The headline tables and verdicts of the run in ``run_dir`` (``results.csv``, ``worst_case.csv``,
    ``manifest.json``, and where present ``certify.json`` and ``warnings.json``); pass ``results`` and ``worst``
    if they are already read."""
    run_dir = Path(run_dir)
    results = read_rows(run_dir / RESULTS, COLUMNS) if results is None else results
    worst = read_worst_case(run_dir / WORST_CASE) if worst is None else worst
    manifest = json.loads((run_dir / MANIFEST).read_text())
    data = manifest.get("data", {})
    modality, metric, chance = data.get("modality", "image"), data.get("metric", "accuracy"), data.get("chance")
    threshold = 100 * (chance or 0.0) + margin
    own = results[(results.attack == "identity") & (results.metric == "chance")].groupby("model").value.max()
    label_free = bool(data.get("label_free", False))
    # label-free: each model's own chance (the share of its most frequent clean prediction) + margin
    limits = {m: 100 * v + margin for m, v in own.items()} if label_free and len(own) else threshold
    if isinstance(limits, dict):  # the figures draw the lowest model's
        threshold = min(v for m, v in limits.items() if m in set(worst[worst.role == "unauthorized"].model))
    certify = run_dir / CERTIFY
    certified = json.loads(certify.read_text()) if certify.exists() else {}
    fidelity = certified.get("fidelity", [])
    psnrs = (certified.get("config") or {}).get("psnr") or []
    settings = _settings(results)
    knowledge = attack_knowledge(manifest)
    if modality == "text":
        des = text_designated_table(results, settings, metric, knowledge)
    else:
        des = designated_table(results, settings, fidelity, psnrs)
    clean = worst[(worst.summary == "clean") & (worst.role == "unauthorized")]
    per_setting = [clean[clean.encoder_params == p] for p in settings.encoder_params]
    weak = [weak_models(c, limits) for c in per_setting]
    n = results[(results.role == "designated") & (results.metric == "accuracy")].groupby("encoder_params").n.min()
    standings = [standing(d, int(n[p]), own.get(d.designated) if label_free else chance, w, list(c.model), margin)
                 for p, (_, d), w, c in zip(settings.encoder_params, des.iterrows(), weak, per_setting, strict=True)]
    settings = settings.assign(n=[int(n[p]) for p in settings.encoder_params],
                               standing=[status for status, _ in standings], weak=[tuple(w) for w in weak])
    levels = levels_table(worst, settings, limits)
    owner = owner_table(results, settings, knowledge, margin)
    verdicts = [verdict(d, levels[(levels.designated == d.designated) & (levels.setting == d.setting)], st,
                        limits, margin, w) + " " + owner_line(o, margin)
                for (_, d), st, w, (_, o) in zip(des.iterrows(), standings, weak, owner.iterrows(), strict=True)]
    warnings = run_dir / WARNINGS
    unauthorized = unauthorized_table(worst, settings, results, metric)
    return Headline(settings=settings, designated=des, unauthorized=unauthorized, levels=levels, owner=owner,
                    certification=certification_table(run_dir) if certify.exists() else pd.DataFrame(),
                    verdicts=verdicts, warnings=json.loads(warnings.read_text()) if warnings.exists() else [],
                    chance=chance, margin=margin, threshold=threshold, modality=modality, metric=metric,
                    source=data.get("source", ""), tuning=label_free_choice(results),
                    label_free=label_free, keys=key_spread(worst))
