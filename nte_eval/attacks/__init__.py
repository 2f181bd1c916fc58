"""Attackers: the ``Attack`` base class, its context, and the registry of built-in and plugin attacks."""

from nte_eval.attacks.base import ATTACKS, Attack, build_attack
from nte_eval.attacks.context import AttackContext
from nte_eval.knowledge import KNOWLEDGE

__all__ = ["ATTACKS", "KNOWLEDGE", "Attack", "AttackContext", "build_attack"]
