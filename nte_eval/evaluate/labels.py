"""Short labels of encoder and attack settings for tables (only the parameters that differ from the defaults),
the results' compact parameter format, and each attack setting's threat-model level and target."""

from __future__ import annotations

import functools
import json
from typing import Any

from nte_eval.attacks import ATTACKS, build_attack
from nte_eval.attacks.model.base import model_step
from nte_eval.encoders import ENCODERS
from nte_eval.errors import NTEError


def compact(params: dict[str, Any]) -> str:
    """Parameters as compact JSON with sorted keys (the results' key format)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def setting_name(encoder: str, params: dict[str, Any] | str, psnr: bool = True) -> str:
    """A short label of an encoder setting: its PSNR, then only the parameters that differ from the encoder's
    defaults (all of them for an encoder this process does not know), e.g. ``nte 30 dB box=project quantize=True``."""
    params = json.loads(params) if isinstance(params, str) else dict(params)
    params.pop("designated", None)
    defaults = _defaults(_registered("encoder", encoder))
    head = [encoder] + ([f"{params['psnr']:g} dB"] if psnr and "psnr" in params else [])
    rest = [f"{k}={v}" for k, v in params.items() if k != "psnr" and (k not in defaults or defaults[k] != v)]
    return " ".join(head + rest)


def attack_name(attack: str, params: dict[str, Any] | str) -> str:
    """A short label of an attack setting: its name, its strength parameter and the parameters that differ from
    its defaults (seeds aside), e.g. ``jpeg quality=90``; the report's appendix lists every parameter."""
    params = json.loads(params) if isinstance(params, str) and params else dict(params or {})
    cls = _registered("attack", attack)
    defaults = _defaults(cls)
    strength = (getattr(cls, "strength", None) or (None,))[0]
    shown = [f"{k}={_short(v)}" for k, v in params.items()
             if k != "seed" and ((k == strength and v is not None) or k not in defaults or defaults[k] != v)]
    return " ".join([attack, *shown])


def _registered(kind: str, name: str) -> type | None:
    """The registered attack or encoder class, or None for a name this process does not know (a plugin that is
    not imported: its label then shows every parameter)."""
    try:
        return (ATTACKS if kind == "attack" else ENCODERS).get(name)
    except NTEError:
        return None


def _defaults(cls: type | None) -> dict[str, Any]:
    return {} if cls is None else {k: v["default"] for k, v in cls.describe()["params"].items()}


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    if isinstance(value, dict):
        return value.get("type", json.dumps(value, separators=(",", ":")))
    return str(value).removeprefix("zoo:")


@functools.cache
def knowledge_of(attack: str, params: str) -> str:
    """An attack setting's threat-model level (a chain's is its strongest step's)."""
    return build_attack({"type": attack, **json.loads(params)}).knowledge


@functools.cache
def target_of(attack: str, params: str) -> str:
    """What an attack setting attacks: 'input' (it reconstructs the images), 'model' (it adapts the unauthorized
    model) or 'chain' (a chain of input attacks and a model attack)."""
    built = build_attack({"type": attack, **json.loads(params)})
    step = model_step(built)
    return "input" if step is None else "model" if step is built else "chain"
