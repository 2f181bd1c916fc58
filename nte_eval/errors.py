"""User-facing errors: raised for bad input, printed by the CLI as one line with exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NTEError(Exception):
    """A problem with the user's input (spec, file, data, setting) that the user can fix."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ' Did you mean ...?' hint for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
