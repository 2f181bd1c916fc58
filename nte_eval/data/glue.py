"""GLUE tasks from their public TSV files (``data: {source: glue_tsv, task: cola, path: dev.tsv}``).

The layouts are those of the GLUE distribution (gluebenchmark.com): CoLA's train/dev files have no header (columns
source, label, original label, sentence); every other task has a header naming its columns. Labels follow GLUE's
order (MNLI: entailment, neutral, contradiction; QNLI/RTE: entailment, not_entailment), which is also the order of
Hugging Face's GLUE models. Metrics as GLUE defines them: CoLA Matthews correlation, MRPC/QQP F1 and accuracy,
the rest accuracy. STS-B (a regression) is not a classification task and is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nte_eval.data.tsv import read_tsv
from nte_eval.errors import NTEError, did_you_mean


@dataclass(frozen=True)
class Task:
    """Where a GLUE task keeps its text(s) and label, its label names and its metric."""

    text: str
    pair: str | None
    label: str
    labels: tuple[str, ...]
    metric: str  # "mcc", "f1" or "accuracy"
    header: bool = True


COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
TASKS = {
    "cola": Task("sentence", None, "label", ("0", "1"), "mcc", header=False),
    "sst2": Task("sentence", None, "label", ("0", "1"), "accuracy"),
    "mrpc": Task("#1 String", "#2 String", "Quality", ("0", "1"), "f1"),
    "qqp": Task("question1", "question2", "is_duplicate", ("0", "1"), "f1"),
    "mnli": Task("sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"), "accuracy"),
    "qnli": Task("question", "sentence", "label", ("entailment", "not_entailment"), "accuracy"),
    "rte": Task("sentence1", "sentence2", "label", ("entailment", "not_entailment"), "accuracy"),
    "wnli": Task("sentence1", "sentence2", "label", ("0", "1"), "accuracy"),
}


@dataclass
class TextSet:
    """Raw texts (and second texts for pair tasks) with integer labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: torch.Tensor
    class_names: list[str]
    names: list[str]
    metric: str


def load_glue_tsv(path: str | Path, task: str, limit: int | None = None) -> TextSet:
    """Read a labelled GLUE TSV file (train or dev; the unlabelled test files cannot be scored)."""
    if task not in TASKS:
        raise NTEError(f"glue_tsv: unknown task {task!r}; supported: {', '.join(TASKS)}.{did_you_mean(task, TASKS)}")
    spec = TASKS[task]
    required = [spec.text, spec.label] + ([spec.pair] if spec.pair else [])
    rows = read_tsv(path, required, header=spec.header, columns=None if spec.header else COLA_COLUMNS)
    rows = rows[:limit] if limit is not None else rows
    texts, pairs, labels, names = [], [], [], []
    for number, row in rows:
        label = row[spec.label].strip()
        if label not in spec.labels:
            raise NTEError(f"{path}: line {number}: label {label!r} is not one of {', '.join(spec.labels)} (GLUE "
                           f"{task}). Is this the right task, and a labelled (train/dev) file?")
        if not row[spec.text].strip():
            raise NTEError(f"{path}: line {number}: empty {spec.text!r} field.")
        texts.append(row[spec.text])
        if spec.pair:
            pairs.append(row[spec.pair])
        labels.append(spec.labels.index(label))
        names.append(f"{task}-line{number}")
    return TextSet(texts, pairs if spec.pair else None, torch.tensor(labels), list(spec.labels), names, spec.metric)


def mcc(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Matthews correlation coefficient of binary predictions (0 when undefined, as scikit-learn returns)."""
    tp = float(((pred == 1) & (label == 1)).sum())
    tn = float(((pred == 0) & (label == 0)).sum())
    fp = float(((pred == 1) & (label == 0)).sum())
    fn = float(((pred == 0) & (label == 1)).sum())
    den = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / den if den else 0.0


def f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    tp = float(((pred == 1) & (label == 1)).sum())
    fp = float(((pred == 1) & (label == 0)).sum())
    fn = float(((pred == 0) & (label == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def task_metric(metric: str, pred: torch.Tensor, label: torch.Tensor) -> float | None:
    """The task's GLUE metric beside accuracy (None for accuracy-only tasks)."""
    return {"mcc": mcc, "f1": f1}[metric](pred, label) if metric in ("mcc", "f1") else None
