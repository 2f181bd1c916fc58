"""``AttackContext``: everything an attacker could be given, read through its threat model (``knowledge``)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from nte_eval.data.images import ImageSet
from nte_eval.errors import NTEError
from nte_eval.knowledge import KNOWLEDGE
from nte_eval.models.handle import ModelHandle
from nte_eval.progress import Progress

# What each knowledge level may read from the context (each level includes the ones before it).
GRANTS = {"none": set(), "method": {"public", "ntes", "encoder"}, "surrogate": {"surrogates"},
          "oracle": {"designated"}}


def allowed_fields(knowledge: str) -> set[str]:
    levels = KNOWLEDGE[:KNOWLEDGE.index(knowledge) + 1]
    return set().union(*(GRANTS[k] for k in levels))


@dataclass(repr=False, eq=False)
class AttackContext:
    """Everything an attacker could be given. Read it through ``restricted(knowledge)``: a field beyond the
    attacker's threat model raises instead of returning.

    public: clean labelled images, disjoint from the evaluated ones. ntes: the released NTE corpus (no clean
    counterparts, no labels). encoder: the encoder's public settings (type, parameters, first-layer geometry and
    normalisation of the designated architecture; never the key or the weights). surrogates: model handles the
    attacker holds. designated: the designated model itself (oracle only). Images in the context are CPU tensors;
    ``device`` is where the run evaluates (an attack may use it for heavy work, e.g. training); ``progress``
    gives a long ``fit`` its own bar (off unless the run shows bars).
    """

    seed: int = 0
    device: str = "cpu"
    public: ImageSet | None = None
    ntes: torch.Tensor | None = None
    encoder: dict[str, Any] | None = None
    surrogates: dict[str, ModelHandle] = field(default_factory=dict)
    designated: ModelHandle | None = None
    knowledge: str = "oracle"
    progress: Progress = field(default_factory=lambda: Progress(enabled=False))

    def restricted(self, knowledge: str) -> AttackContext:
        """A view no wider than this one: the lower of its knowledge and ``knowledge``."""
        current = object.__getattribute__(self, "knowledge")
        view = copy.copy(self)
        object.__setattr__(view, "knowledge", min(current, knowledge, key=KNOWLEDGE.index))
        return view

    def with_ntes(self, ntes: torch.Tensor) -> AttackContext:
        """This view with another corpus in place of the released one (a chain's reconstruction of it)."""
        view = copy.copy(self)
        view.ntes = ntes
        return view

    def __repr__(self) -> str:
        return f"AttackContext(knowledge={object.__getattribute__(self, 'knowledge')!r})"

    def __getattribute__(self, key: str) -> Any:
        if key in ("public", "ntes", "encoder", "surrogates", "designated"):
            knowledge = object.__getattribute__(self, "knowledge")
            if key not in allowed_fields(knowledge):
                need = next(k for k in KNOWLEDGE if key in allowed_fields(k))
                raise NTEError(f"an attack with knowledge={knowledge!r} has no access to context.{key}; "
                               f"that needs knowledge={need!r} (declare it in the attack class).")
            value = object.__getattribute__(self, key)
            if value is None or (key == "surrogates" and not value):
                raise NTEError(f"context.{key} is not available in this run (e.g. no public images or no "
                               f"surrogates given in the suite).")
            return value
        return object.__getattribute__(self, key)
