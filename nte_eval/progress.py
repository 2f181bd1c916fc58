"""``Progress``: a run's one overall bar, whose total counts every step of the run (cells, certification steps, the
report) so that its ETA covers all of them, and the short-lived bars of the step in hand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """Progress bars on stderr, or none (``enabled=False``). Steps are counted, not timed: the ETA assumes the steps
    left take as long on average as the steps done."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.planned = 0  # steps announced before the overall bar starts (e.g. the report, by the command line)
        self.overall: tqdm | None = None

    def plan(self, steps: int) -> None:
        """Announce ``steps`` more steps; before ``start`` they are added to its total."""
        if self.overall is None:
            self.planned += steps
        else:
            self.overall.total += steps
            self.overall.refresh()

    def start(self, steps: int, done: int = 0) -> None:
        """Start the overall bar: ``steps`` of this stage plus those planned before, ``done`` of them already done (a
        resumed run) and so left out of the rate."""
        self.overall = tqdm(total=steps + self.planned, initial=done, desc="run", unit="step",
                            disable=not self.enabled)

    def advance(self, steps: int = 1) -> None:
        """``steps`` of the overall bar are done."""
        if self.overall is not None:
            self.overall.update(steps)

    def bar(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
            unit: str = "it") -> tqdm:
        """A bar for the step in hand, cleared when it closes."""
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=not self.enabled)

    def close(self) -> None:
        if self.overall is not None:
            self.overall.close()
