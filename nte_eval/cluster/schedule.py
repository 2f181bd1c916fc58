"""Which group of items a free worker (a ``--workers`` process or a Ray actor) runs next, so that each encoder
setting's attacks are fitted once: one group per (encoder setting, shard); a worker keeps to the setting it holds,
else starts a setting nobody has started, else joins a setting whose first group has finished (its fits are kept
by then), else waits."""

from __future__ import annotations

from collections.abc import Hashable

from nte_eval.evaluate.items import Work


def groups(work: list[Work]) -> list[list[Work]]:
    """The items of each (encoder setting, shard), in the order of ``work``."""
    by: dict[tuple, list[Work]] = {}
    for w in work:
        by.setdefault((w[1], w[0].start), []).append(w)
    return list(by.values())


class Schedule:
    """The groups still to run, the setting each worker holds, and the settings whose first group has finished."""

    def __init__(self, work: list[Work]):
        self.todo = groups(work)
        self.held: dict[Hashable, tuple] = {}
        self.started: set[tuple] = set()
        self.ready: set[tuple] = set()

    def take(self, worker: Hashable) -> list[Work] | None:
        """The next group for ``worker``, or None: nothing left, or only shards of settings still being fitted
        (call again once ``finished`` says one is ready)."""
        held = self.held.get(worker)
        for wanted in (lambda s: s == held, lambda s: s not in self.started, lambda s: s in self.ready):
            for i, group in enumerate(self.todo):
                if wanted(group[0][1]):
                    self.held[worker] = group[0][1]
                    self.started.add(group[0][1])
                    return self.todo.pop(i)
        return None

    def finished(self, worker: Hashable) -> None:
        """``worker`` finished its group: the setting's fits are kept, so other workers may join it."""
        self.ready.add(self.held[worker])
