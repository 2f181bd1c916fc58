"""A run's work items and their files: one Parquet file per (designated model, encoder setting, attack setting,
shard of the data), written atomically with its checksum in its name, so that a resume (or a merge) keeps exactly
the files that verify, and a truncated or damaged one is named and recomputed, never merged."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nte_eval.errors import NTEError
from nte_eval.evaluate.run_folder import PARTIAL, SHARDS, atomic_write

META = b"nte_eval"  # the Parquet schema metadata key holding an item's JSON record (cell metrics, timings, ...)


@dataclass(frozen=True)
class Item:
    """One unit of work: a cell (its key: encoder, encoder_params, attack, attack_params) on the data's samples
    ``start:stop``; or the suite's certification (``kind='certify'``, no cell)."""

    kind: str
    cell: tuple[str, ...]
    start: int
    stop: int

    @property
    def id(self) -> str:
        """A stable name: the same item has the same id in every run, process and executor."""
        return hashlib.sha1(json.dumps([self.kind, list(self.cell), self.start, self.stop]).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "cell": list(self.cell), "start": self.start, "stop": self.stop}


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """The samples of each shard: consecutive ``shard_size`` positions (the last one shorter)."""
    return [(i, min(i + shard_size, n)) for i in range(0, n, shard_size)] or [(0, 0)]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N: this process runs the items whose id, as a number, is I modulo N."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not I/N with whole numbers I and N, e.g. 0/4")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 0 <= index < count:
        n = max(count, 2)
        raise ValueError(f"{text!r}: I/N needs 0 <= I < N, e.g. 0/{n} to {n - 1}/{n}; a SLURM array (--array=0-"
                         f"{n - 1}) passes $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return index, count


def owns(item: Item, shard: tuple[int, int]) -> bool:
    """Whether the process ``--shard I/N`` runs this item (a stable hash, the same on every machine)."""
    index, count = shard
    return int(item.id, 16) % count == index


def _checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def write_item(out: Path, item: Item, frame: pd.DataFrame, record: dict[str, Any]) -> Path:
    """Write an item's rows (and its JSON ``record`` in the file's metadata) as ``shards/ID.CHECKSUM.parquet``, the
    checksum being the SHA-256 of the file's bytes; through a temporary name, so a kill leaves no half file."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {**(table.schema.metadata or {}), META: json.dumps({**item.record(), **record}, default=str).encode()}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    data = buf.getvalue()
    folder = Path(out) / SHARDS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{item.id}.{_checksum(data)}.parquet"
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_item(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """An item file's rows and record; NTEError naming the file when its bytes do not match its checksum."""
    data = Path(path).read_bytes()
    if _checksum(data) != Path(path).name.split(".")[1]:
        raise NTEError(f"{path}: its checksum does not match its contents (truncated or damaged)")
    table = pq.read_table(io.BytesIO(data))
    return table.to_pandas(), json.loads(table.schema.metadata[META])


def verified_items(out: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Item id -> file, for every item file in the run folder whose bytes match its checksum. A file that does not
    verify is named in the log and deleted (its item is recomputed); so is a duplicate of an item."""
    found: dict[str, Path] = {}
    folder = Path(out) / SHARDS
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else ():
        if PARTIAL in path.name:  # still being written (by this or another process)
            continue
        parts = path.name.split(".")
        try:
            if len(parts) != 3 or _checksum(path.read_bytes()) != parts[1]:
                raise NTEError("checksum mismatch")
        except (OSError, NTEError):
            log(f"warning: {path} is truncated or damaged (its checksum does not match); it is deleted and its item "
                f"recomputed.")
            path.unlink(missing_ok=True)
            continue
        if parts[0] in found:
            path.unlink(missing_ok=True)
            continue
        found[parts[0]] = path
    return found
