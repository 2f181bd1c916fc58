"""Which group of items a free worker (a ``--workers`` process or a Ray actor) runs next, so that each attack of each
encoder setting is fitted once: one group per (encoder setting, shard). The worker that starts a setting owns it and
fits its attacks; another worker joins it only for groups whose attacks have all been fitted (their fits are kept
by then); otherwise it starts a setting nobody has started, or waits."""

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
    """The groups still to run, who owns each started setting, and which of its attacks finished groups fitted."""

    def __init__(self, work: list[Work]):
        self.todo = groups(work)
        self.owner: dict[tuple, Hashable] = {}  # a setting -> the worker that started it
        self.fitted: dict[tuple, set[int]] = {}  # a setting -> the attacks of its finished groups
        self.held: dict[Hashable, tuple] = {}  # a worker -> the setting of its last group

    def take(self, worker: Hashable) -> list[Work] | None:
        """The next group for ``worker``: of a setting it owns; else one it can join, of the setting it holds; else
        of a setting nobody has started; else one it can join. None: nothing left, or only groups with attacks still
        being fitted (call again once ``finished`` says more are fitted)."""
        def joinable(setting: tuple, attacks: set[int]) -> bool:
            return attacks <= self.fitted.get(setting, set())

        held = self.held.get(worker)
        for wanted in (lambda s, a: self.owner.get(s) == worker, lambda s, a: s == held and joinable(s, a),
                       lambda s, a: s not in self.owner, joinable):
            for i, group in enumerate(self.todo):
                if wanted(group[0][1], {w[2] for w in group}):
                    self.owner.setdefault(group[0][1], worker)
                    self.held[worker] = group[0][1]
                    return self.todo.pop(i)
        return None

    def finished(self, group: list[Work]) -> None:
        """``group`` has run: its attacks are fitted (and their fits kept), so other workers may join them."""
        self.fitted.setdefault(group[0][1], set()).update(w[2] for w in group)
