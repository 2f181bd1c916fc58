"""A chain of attacks applied in order (e.g. ``[resize, jpeg, tv_chambolle]``), itself an attack."""

from __future__ import annotations

from typing import Any

import torch

from nte_eval.attacks.base import Attack, build_attack
from nte_eval.attacks.context import AttackContext
from nte_eval.errors import NTEError
from nte_eval.knowledge import KNOWLEDGE

CORPUS_BATCH = 64  # images per step when a chain reconstructs the corpus its model step adapts to


class Chain(Attack):
    """Apply attacks in order; each step is 'name' or {'type': name, **params}; knowledge: the highest step's.

    One step may be a model attack: it adapts the unauthorized model to the chain's reconstruction of the released
    corpus, and the adapted model is handed the chain's reconstruction of each image."""

    name = "chain"
    knowledge = "none"  # per instance: the highest knowledge among the steps
    steps: list[str | dict[str, Any]] = ["resize", "jpeg"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if not self.steps:
            raise NTEError("attack 'chain': steps is empty; give at least one attack, e.g. "
                           "steps: [resize, {type: jpeg, quality: 50}].")
        self.attacks: list[Attack] = []
        for i, spec in enumerate(self.steps):
            try:
                attack = build_attack(spec)
            except NTEError as e:
                raise NTEError(f"attack 'chain': step {i} ({spec!r}): {e}") from None
            if isinstance(attack, Chain):
                raise NTEError(f"attack 'chain': step {i} is itself a chain; a chain cannot contain a chain "
                               f"(it could contain itself). List all the steps in one chain instead.")
            self.attacks.append(attack)
        adapting = [i for i, a in enumerate(self.attacks) if a.adapts]
        if len(adapting) > 1:
            raise NTEError(f"attack 'chain': steps {adapting[0]} and {adapting[1]} both adapt the model; a chain holds "
                           f"at most one model attack (with any input attacks). Make two chains instead.")
        self.model_attack = self.attacks[adapting[0]] if adapting else None
        self.knowledge = max((a.knowledge for a in self.attacks), key=KNOWLEDGE.index)
        self.modalities = tuple(m for m in ("image", "text") if all(m in a.modalities for a in self.attacks))

    def params(self) -> dict[str, Any]:
        """The steps with their full validated parameters, as written to the results."""
        return {"steps": [{"type": a.name, **a.params()} for a in self.attacks]}

    def fit(self, context: AttackContext) -> Chain:
        """Fit every step with the same context (each step sees only what its own knowledge allows); a model step
        last, on the chain's reconstruction of the corpus."""
        super().fit(context)
        for attack in self.attacks:
            if attack is not self.model_attack:
                attack.fit(context)
        if self.model_attack is not None:
            ntes = self.context.ntes
            rebuilt = torch.cat([self(ntes[i:i + CORPUS_BATCH].to(self.context.device)).cpu()
                                 for i in range(0, len(ntes), CORPUS_BATCH)])
            self.model_attack.fit(context.with_ntes(rebuilt))
        return self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for attack in self.attacks:
            x = attack(x)
        return x
