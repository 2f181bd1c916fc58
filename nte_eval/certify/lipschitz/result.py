"""What every Lipschitz source returns (a certified bound, an estimate or a refusal), and the refusal raised on the
way to one."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LipschitzBound:
    """An upper bound (certified), an estimate, or a refusal for the Lipschitz constant of g."""

    source: str  # "product" | "lipsdp" | "local"
    status: str  # "certified" | "estimate" | "refused"
    value: float | None  # None when refused
    detail: str  # one line: the reason for a refusal, or how the value was obtained
    seconds: float


class Refusal(Exception):
    """No sound bound for this network (the message names the node and the reason)."""


def refused(source: str, reason: str, start: float) -> LipschitzBound:
    """The refusal of ``source``, timed from ``start`` (a ``time.perf_counter`` reading)."""
    return LipschitzBound(source, "refused", None, reason, time.perf_counter() - start)
