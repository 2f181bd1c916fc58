"""Tab-separated benchmark files (GLUE, MMBench): rows as dicts with their line numbers, malformed rows named."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from nte_eval.errors import NTEError


def read_tsv(path: str | Path, required: list[str], header: bool = True, columns: list[str] | None = None,
             quoting: int = csv.QUOTE_NONE) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row of a TSV file; an NTEError names the file and line of a bad row.

    ``header``: the first row names the columns (else ``columns`` does). ``required``: columns every row needs.
    ``quoting``: ``csv.QUOTE_NONE`` (GLUE writes raw tab-separated text, so a quote character is plain text) or
    ``csv.QUOTE_MINIMAL`` (pandas-written files such as MMBench's quote fields holding tabs, newlines or quotes).
    Rows end at newlines only (\\n, \\r, \\r\\n), a UTF-8 byte order mark is dropped, and a row's line number is the
    physical line it starts on.
    """
    path = Path(path)
    if not path.is_file():
        raise NTEError(f"TSV file {path} does not exist.")
    csv.field_size_limit(sys.maxsize)  # MMBench rows hold whole base64 images
    rows: list[tuple[int, list[str]]] = []  # (first line, fields)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t", quoting=quoting)
        end = 0
        try:
            for fields in reader:
                rows.append((end + 1, fields))
                end = reader.line_num
        except UnicodeDecodeError as e:
            raise NTEError(f"{path}: not UTF-8 text ({e}); is it really a TSV file?") from None
        except csv.Error as e:
            raise NTEError(f"{path}: line {end + 1}: {e}; fix or remove that line.") from None
    if header:
        if not rows:
            raise NTEError(f"{path}: the file is empty; expected a header line with {', '.join(required)}.")
        columns = [c.strip() for c in rows.pop(0)[1]]
    if columns is None:
        raise NTEError(f"{path}: no header; pass the column names.")
    missing = [c for c in required if c not in columns]
    if missing:
        raise NTEError(f"{path}: line 1: missing column(s) {', '.join(missing)}; the header has "
                       f"{', '.join(columns) or 'nothing'}.")
    out = []
    for number, fields in rows:
        if not fields or fields == [""]:
            continue
        if len(fields) != len(columns):
            raise NTEError(f"{path}: line {number}: {len(fields)} tab-separated field(s), expected {len(columns)} "
                           f"({', '.join(columns)}). Fix or remove that line.")
        out.append((number, dict(zip(columns, fields, strict=True))))
    if not out:
        raise NTEError(f"{path}: no data rows.")
    return out
