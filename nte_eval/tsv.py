"""Tab-separated benchmark files (GLUE, MMBench): rows as dicts with their line numbers, malformed rows named."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from nte_eval.errors import NTEError


def read_tsv(path: str | Path, required: list[str], header: bool = True,
             columns: list[str] | None = None) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row of a TSV file; an NTEError names the file and line of a bad row.

    ``header``: the first line names the columns (else ``columns`` does). ``required``: columns every row needs.
    Fields are not quoted (GLUE and MMBench write raw tabs-separated text), so a quote character is plain text.
    """
    path = Path(path)
    if not path.is_file():
        raise NTEError(f"TSV file {path} does not exist.")
    csv.field_size_limit(sys.maxsize)  # MMBench rows hold whole base64 images
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise NTEError(f"{path}: not UTF-8 text ({e}); is it really a TSV file?") from None
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    start = 1 if header else 0
    if header:
        if not rows:
            raise NTEError(f"{path}: the file is empty; expected a header line with {', '.join(required)}.")
        columns = [c.strip() for c in rows[0]]
    if columns is None:
        raise NTEError(f"{path}: no header; pass the column names.")
    missing = [c for c in required if c not in columns]
    if missing:
        raise NTEError(f"{path}: line 1: missing column(s) {', '.join(missing)}; the header has "
                       f"{', '.join(columns) or 'nothing'}.")
    out = []
    for number, fields in enumerate(rows[start:], start + 1):
        if not fields or fields == [""]:
            continue
        if len(fields) != len(columns):
            raise NTEError(f"{path}: line {number}: {len(fields)} tab-separated field(s), expected {len(columns)} "
                           f"({', '.join(columns)}). Fix or remove that line.")
        out.append((number, dict(zip(columns, fields, strict=True))))
    if not out:
        raise NTEError(f"{path}: no data rows.")
    return out
