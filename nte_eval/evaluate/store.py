"""Resumable run storage: each finished cell's rows are appended and synced, then journalled; a resumed run keeps
exactly the journalled cells (rows of a cell cut short by a kill are dropped and the cell is redone). An
``--overwrite`` builds the new run beside the previous one and swaps it in only when it is complete."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from nte_eval.errors import NTEError
from nte_eval.evaluate.run_folder import (
    EXAMPLES,
    FILES,
    JOURNAL,
    MANIFEST,
    PARTIAL,
    RESULTS,
    SAMPLES,
    atomic_write,
    is_run_file,
)

CELL = ["encoder", "encoder_params", "attack", "attack_params"]
COLUMNS = [*CELL, "model", "role", "metric", "value", "n"]
SAMPLE_COLUMNS = [*CELL, "model", "input", "correct"]


def cell_key(encoder: str, encoder_params: str, attack: str, attack_params: str) -> str:
    return json.dumps([encoder, encoder_params, attack, attack_params])


def _append(path: Path, frame: pd.DataFrame) -> None:
    """Append rows with one write, then flush them to disk."""
    buf = io.StringIO()
    frame.to_csv(buf, header=not path.exists(), index=False)
    with open(path, "a") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds results of a run (finished or not)."""
    return (out / RESULTS).exists() or (out / JOURNAL).exists()


@contextmanager
def replacing(out: Path, start_again: bool, log: Callable[[str], None]) -> Iterator[Path]:
    """The folder to write a run in: ``out``, or where ``start_again`` (--overwrite) meets a run in ``out``, the sibling
    ``OUT.new``, swapped in when the block completes; until then (a kill, an error) ``out`` stays untouched."""
    if not (start_again and holds_run(Path(out))):
        yield Path(out)
        return
    out = Path(out).resolve()
    new, old = out.with_name(f"{out.name}.new"), out.with_name(f"{out.name}.old")
    for path in (new, old):
        if path.exists():
            raise NTEError(f"{path} exists, left by an interrupted --overwrite of {out}, and may hold results (an "
                           f"unfinished run there goes on with --resume --out {path}): move or delete it, then rerun.")
    log(f"--overwrite: the previous run stays untouched in {out} until this one is complete; this run is built in "
        f"{new}, then swapped in.")
    try:
        yield new
    except BaseException:
        where = f"; this run's files are in {new}" if new.exists() else ""
        log(f"stopped: the previous run is untouched in {out}{where}.")
        raise
    os.rename(out, old)
    os.rename(new, out)
    for entry in old.iterdir():  # the user's own files in the folder stay
        if not is_run_file(entry.name):
            os.rename(entry, out / entry.name)
    shutil.rmtree(old)
    log(f"--overwrite: the previous run in {out} is replaced by this one.")


def read_rows(path: Path, columns: list[str]) -> pd.DataFrame:
    """A results/samples CSV with parameters kept as strings."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    frame = pd.read_csv(path, dtype={c: str for c in columns if c not in ("value", "n")},
                        keep_default_na=False)
    return frame[columns]


class ResultStore:
    """The run folder's ``results.csv`` (tidy metrics), ``samples.csv`` (per-sample correctness) and the journal."""

    def __init__(self, out: Path, config_hash: str, resume: bool = False, overwrite: bool = False):
        self.out, self.config_hash = out, config_hash
        self.results, self.samples, self.journal = out / RESULTS, out / SAMPLES, out / JOURNAL
        out.mkdir(parents=True, exist_ok=True)
        has_results = holds_run(out)
        if has_results and not (resume or overwrite):
            raise NTEError(f"{out} already holds results of a run; pass --resume to continue it or --overwrite to "
                           f"start again (or choose another --out).")
        self.done: set[str] = set()
        if resume and has_results:
            self._check_same_suite()
            self._keep_done()
        else:
            for name in FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / EXAMPLES, ignore_errors=True)
            for tmp in out.glob(f"*{PARTIAL}*"):  # a half-written file of a killed run
                tmp.unlink()
        with atomic_write(out / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"config_hash": config_hash, "status": "running"}))

    def _check_same_suite(self) -> None:
        manifest = self.out / MANIFEST
        old = json.loads(manifest.read_text()).get("config_hash") if manifest.exists() else None
        if old != self.config_hash:
            raise NTEError(f"{self.out} holds results of a different suite, or of an older nte-eval results format "
                           f"(config {old}, now {self.config_hash}); --resume needs the same suite and format: use "
                           f"another --out or --overwrite.")

    def _keep_done(self) -> None:
        """Rewrite the CSVs with only the journalled cells' rows (a line cut short by a kill is dropped first)."""
        for path in (self.results, self.samples, self.journal):
            if path.exists():
                data = path.read_bytes()
                with atomic_write(path) as tmp:
                    tmp.write_bytes(data[:data.rfind(b"\n") + 1])
        self.done = set()
        lines = self.journal.read_text().splitlines() if self.journal.exists() else []
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                self.done.update([line] if isinstance(entry, list) else [entry["cell"], *entry["rows"]])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise NTEError(f"{self.journal}: line {number} is not a journal entry (the file was edited or "
                               f"damaged); --resume cannot trust it: rerun with --overwrite.") from None
        for path, columns in ((self.results, COLUMNS), (self.samples, SAMPLE_COLUMNS)):
            frame = read_rows(path, columns)
            keys = [cell_key(*k) for k in frame[CELL].itertuples(index=False)]
            with atomic_write(path) as tmp:
                frame[np.array([k in self.done for k in keys], dtype=bool)].to_csv(tmp, index=False)

    def is_done(self, key: str) -> bool:
        return key in self.done

    def add(self, key: str, rows: pd.DataFrame, samples: pd.DataFrame) -> None:
        """Write one finished cell: its rows first, then (once they are on disk) its journal line. A cell whose rows
        carry other cell keys (the certification step's summaries) journals them on the same line."""
        _append(self.results, rows[COLUMNS])
        _append(self.samples, samples[SAMPLE_COLUMNS])
        others = sorted({cell_key(*k) for k in rows[CELL].itertuples(index=False)} - {key})
        line = json.dumps({"cell": key, "rows": others}) if others else key
        with open(self.journal, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.update([key, *others])

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return read_rows(self.results, COLUMNS), read_rows(self.samples, SAMPLE_COLUMNS)
