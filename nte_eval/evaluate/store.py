"""Resumable run storage: each finished item (a cell on one shard of the data) is one checksummed file; a resumed run
keeps exactly the files that verify (an item cut short by a kill left no file and is redone). The tables are merged
from them (``merge``). An ``--overwrite`` builds the new run beside the previous one and swaps it in only when it is
complete."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from nte_eval.errors import NTEError
from nte_eval.evaluate.run_folder import (
    CLEAN,
    EXAMPLES,
    FILES,
    FITS,
    MANIFEST,
    PARTIAL,
    PLAN,
    RESULTS,
    SHARDS,
    atomic_write,
    is_run_file,
)
from nte_eval.evaluate.shards import Item, verified_items, write_item

CELL = ["encoder", "encoder_params", "attack", "attack_params"]
COLUMNS = [*CELL, "model", "role", "metric", "value", "n"]
INTERVAL = ["ci_low", "ci_high"]  # results.csv's last columns: a proportion's exact 95% interval over n (else empty)
NUMERIC = ("value", "n", *INTERVAL)
SAMPLE_COLUMNS = [*CELL, "model", "input", "correct"]


def cell_key(encoder: str, encoder_params: str, attack: str, attack_params: str) -> str:
    return json.dumps([encoder, encoder_params, attack, attack_params])


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds results of a run (finished or not)."""
    return (out / RESULTS).exists() or (out / PLAN).exists() or (out / SHARDS).is_dir()


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
    frame = pd.read_csv(path, dtype={c: str for c in columns if c not in NUMERIC}, keep_default_na=False,
                        na_values={c: [""] for c in INTERVAL})
    return frame[columns]


class ResultStore:
    """Which items of a run are finished: the item files under ``shards/`` that verify (see ``shards``). A fresh run
    clears the folder's run files first; ``resume`` (or ``join``: another ``--shard`` process's folder of the same
    suite) keeps them and checks that they belong to the same suite."""

    def __init__(self, out: Path, config_hash: str, resume: bool = False, overwrite: bool = False,
                 join: bool = False, log: Callable[[str], None] = print):
        self.out, self.config_hash = out, config_hash
        out.mkdir(parents=True, exist_ok=True)
        has_results = holds_run(out)
        if has_results and not (resume or overwrite or join):
            raise NTEError(f"{out} already holds results of a run; pass --resume to continue it or --overwrite to "
                           f"start again (or choose another --out).")
        if (resume or join) and has_results:
            self._check_same_suite()
            self.done = set(verified_items(out, log))
        else:
            self.done = set()
            for name in FILES:
                (out / name).unlink(missing_ok=True)
            for folder in (EXAMPLES, SHARDS, CLEAN, FITS):
                shutil.rmtree(out / folder, ignore_errors=True)
            for tmp in out.glob(f"*{PARTIAL}*"):  # a half-written file of a killed run
                tmp.unlink()
            with atomic_write(out / MANIFEST) as tmp:
                tmp.write_text(json.dumps({"config_hash": config_hash, "status": "running"}))

    def _check_same_suite(self) -> None:
        old = None
        for name in (PLAN, MANIFEST):
            if (self.out / name).exists():
                old = json.loads((self.out / name).read_text()).get("config_hash")
                break
        if old != self.config_hash:
            raise NTEError(f"{self.out} holds results of a different suite, or of an older nte-eval results format "
                           f"(config {old}, now {self.config_hash}); --resume and --shard need the same suite and "
                           f"format: use another --out or --overwrite.")

    def is_done(self, item_id: str) -> bool:
        return item_id in self.done

    def add(self, item: Item, frame: pd.DataFrame, record: dict[str, Any]) -> None:
        """Write one finished item's file (atomically, with its checksum)."""
        write_item(self.out, item, frame, record)
        self.done.add(item.id)
