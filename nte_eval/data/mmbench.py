"""MMBench multiple-choice questions from the public TSV files, as an ImageSet for VLM handles (``hf-vlm``).

Columns: index, question, hint, A, B, C, D, answer, image (a base64 JPEG/PNG); others (category, l2-category,
split, source, comment) are ignored. Empty or ``nan`` option cells mean the question has fewer options (2 to 4).
The files are pandas-written (VLMEvalKit): fields holding tabs, newlines or quotes are quoted CSV-style, and a
repeated image is stored once, other rows holding that row's index in their image cell.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from pathlib import Path

import torch

from nte_eval.data.images import ImageSet, check_limit, read_image, resize_crop
from nte_eval.data.tsv import read_tsv
from nte_eval.errors import NTEError

LETTERS = ("A", "B", "C", "D")
MISSING = ("", "nan", "none")  # how pandas-written TSVs spell an empty cell
REFERENCE_CHARS = 64  # an image cell this short holds another row's index (a base64 JPEG/PNG is far longer)


def _cell(row: dict[str, str], key: str) -> str:
    """A cell's text, '' when the column is absent or the cell is empty/nan."""
    value = row.get(key, "").strip()
    return "" if value.lower() in MISSING else value


def _image_cell(text: str, stored: dict[str, str], where: str) -> str:
    """The base64 image of a row: its own cell, or the image of the row whose index a short cell names."""
    cell = text.strip()
    if len(cell) > REFERENCE_CHARS:
        return cell
    if cell not in stored:
        raise NTEError(f"{where}: the image cell {cell!r} is neither a base64-encoded JPEG/PNG nor the index "
                       "of a row holding one (VLMEvalKit TSVs store a repeated image once and refer to it by that "
                       "row's index); fix or remove the row.")
    return stored[cell]


def _decode_image(text: str, where: str, size: int) -> torch.Tensor:
    """A base64 image cell as a (3, size, size) tensor in [0, 1] (resized and centre-cropped)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise NTEError(f"{where}: the image cell is not valid base64; it must hold a base64-encoded JPEG/PNG "
                       "(fix or remove the row).") from None
    return resize_crop(read_image(io.BytesIO(raw), 3, where), size)


def load_mmbench_tsv(path: str | Path, size: int, limit: int | None = None) -> ImageSet:
    """MMBench rows as images (size x size) with labels 0..3 = A..D and each row's question in ``extras``."""
    check_limit(limit, "mmbench")
    rows = read_tsv(path, required=["index", "question", "A", "B", "answer", "image"], quoting=csv.QUOTE_MINIMAL)
    stored = {row["index"].strip(): row["image"] for _, row in rows if len(row["image"].strip()) > REFERENCE_CHARS}
    images, labels, names, extras = [], [], [], []
    for number, row in rows[:limit]:
        where = f"{path}: line {number}"
        options = {k: _cell(row, k) for k in LETTERS if _cell(row, k)}
        if len(options) < 2:
            raise NTEError(f"{where}: {len(options)} non-empty option(s); a question needs 2 options or more in "
                           "columns A-D.")
        answer = row["answer"].strip()
        if answer not in options:
            raise NTEError(f"{where}: answer {answer!r} is not one of the row's options {', '.join(options)}; "
                           "fix the answer or the option cells.")
        images.append(_decode_image(_image_cell(row["image"], stored, where), where, size))
        labels.append(LETTERS.index(answer))
        names.append(f"mmbench-{row['index'].strip()}")
        extras.append({"question": row["question"].strip(), "hint": _cell(row, "hint"), "options": options})
    return ImageSet(torch.stack(images), torch.tensor(labels, dtype=torch.long), list(LETTERS), names, extras,
                    "image")
