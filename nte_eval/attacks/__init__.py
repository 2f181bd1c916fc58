"""Attackers: the ``Attack`` base class, its context, and the registry of built-in and plugin attacks."""

from nte_eval.attacks.base import ATTACKS, KNOWLEDGE, Attack, AttackContext, build_attack

__all__ = ["ATTACKS", "KNOWLEDGE", "Attack", "AttackContext", "build_attack"]
