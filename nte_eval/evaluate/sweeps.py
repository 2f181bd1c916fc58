"""A suite's encoder and attack entries: the registered class each names, and its settings (list-valued parameters
are sweeps; an encoder entry may be restricted to some designated models)."""

from __future__ import annotations

from typing import Any

from nte_eval.errors import NTEError
from nte_eval.models.load import spec_name
from nte_eval.registry import Registry


def plugin_class(registry: Registry, item: Any, where: str) -> type:
    """The registered class an encoder/attack entry names; a ValueError naming the entry's key path otherwise."""
    if not isinstance(item, dict) or "type" not in item:
        raise ValueError(f"{where}: each {registry.kind} is a mapping with a 'type' "
                         f"(see `nte-eval list {registry.kind}s`)")
    try:
        return registry.get(str(item["type"]))
    except NTEError as e:
        raise ValueError(f"{where}.type: {e}") from None


def settings_of(item: dict[str, Any], cls: Any, where: str) -> list[dict[str, Any]]:
    """``sweep_of`` for validation: an empty sweep is a ValueError naming the entry's key path."""
    try:
        return sweep_of(item, cls)
    except NTEError as e:
        raise ValueError(f"{where}.{e}") from None


def sweep_of(item: dict[str, Any], cls: Any) -> list[dict[str, Any]]:
    """The settings of one encoder/attack entry: its list-valued parameters expand (``type`` and an encoder's
    ``designated`` restriction excluded)."""
    return cls.sweep({k: v for k, v in item.items() if k not in ("type", "designated")})


def restriction(item: dict[str, Any], designated: list[str]) -> list[str]:
    """The designated models an encoder entry applies to: its ``designated`` key (one spec or a list), else all."""
    value = item.get("designated", designated)
    return [spec_name(v) for v in (value if isinstance(value, list) else [value])]
