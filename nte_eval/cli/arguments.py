"""The command line's argument types: each checks its value before any work starts, and says what to give
instead, as one line with exit code 2."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import NoReturn

MARGIN_HELP = ("verdicts: the NTEs held against a knowledge level if no unauthorized model scores more than chance + "
               "MARGIN percentage points under its strongest attack (default 10)")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line with exit code 2, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"nte-eval: error: {message.rstrip('.')} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    """An integer >= 1 (--batch-size, --threads, --workers, --limit)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer; give 1 or more.")
    return int(text)


def margin(text: str) -> float:
    """--margin: percentage points, a finite number in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise argparse.ArgumentTypeError(f"{text!r} is not a margin in percentage points; give a number from 0 to 100 "
                                         "(default 10).")
    return value


def device(text: str) -> str:
    """--device: cpu, or cuda[:N] where this machine has that GPU (checked before any model loads)."""
    kind, _, index = text.partition(":")
    if text == "cpu":
        return text
    if kind == "mps":
        raise argparse.ArgumentTypeError("mps is not supported: subspaces, several attacks and the certification "
                                         "compute in float64, which MPS lacks; use cpu (or cuda).")
    if kind != "cuda" or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device nte-eval runs on; use cpu, cuda or cuda:N.")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU that torch {torch.__version__} can "
                                         "use; use --device cpu.")
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return text


def shard_spec(text: str) -> tuple[int, int]:
    """--shard I/N: this process's share of a run's items (0 <= I < N)."""
    from nte_eval.evaluate.shards import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:  # argparse would replace the message of a ValueError with its own
        raise argparse.ArgumentTypeError(str(e)) from None


def out_folder(text: str) -> str:
    """--out: a writable folder, or one that can be made in a writable folder (checked before any work)."""
    path = Path(text).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        inside = "" if existing == path else f", so {path} cannot be a folder"
        raise argparse.ArgumentTypeError(f"{existing} is a file{inside}; choose a folder for --out.")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write in {existing} ({e.strerror}); choose a folder you can write "
                                         "to.") from None
    return text
