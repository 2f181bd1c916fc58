"""The attacker interface: ``Attack`` (declared parameters, optional ``fit``, abstract ``run``, final ``__call__``)
and ``AttackContext``, which hands each attacker exactly what its threat model (``knowledge``) allows."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, ClassVar, final

import torch

from nte_eval.attacks.context import AttackContext
from nte_eval.errors import NTEError
from nte_eval.knowledge import KNOWLEDGE
from nte_eval.params import Parametrised
from nte_eval.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack", "nte_eval.attacks", "nte_eval.attacks")


class Attack(Parametrised, ABC):
    """A reconstruction attacker: maps released images (pixel space) to its best guess of the clean images.

    Subclasses set ``name`` and ``knowledge``, declare parameters as annotated class attributes with defaults
    (``quality: Annotated[int, Field(ge=1, le=100)] = 75``), optionally override ``fit(context)`` (call
    ``super().fit(context)``), and implement ``run(x)``. Defining a subclass with a ``name`` registers it, unless
    it says ``register=False`` (``class Probe(Attack, register=False)``; then ``ATTACKS.scope(Probe)`` registers it
    for a block).
    """

    name: ClassVar[str]
    knowledge: ClassVar[str] = "none"
    #: The parameter that sets the attack's strength, and +1 if larger means stronger, -1 if smaller does.
    strength: ClassVar[tuple[str, int] | None] = None
    #: The data it reconstructs: ``image`` (pixels, B x C x H x W) and/or ``text`` (packed soft tokens).
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    #: True for a projection: it replaces a subspace with the public mean by design, deleting the clean content there
    #: too, so the sanity checks compare it with its oracle rather than hold it to keeping clean content.
    projection: ClassVar[bool] = False
    #: For an attack that estimates the designated subspace blindly: the attack that does the same with the true one.
    oracle: ClassVar[str | None] = None
    #: True for a model attack (``attacks.model.ModelAttack``): it adapts the unauthorized model instead.
    adapts: ClassVar[bool] = False

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.knowledge not in KNOWLEDGE:
                raise NTEError(f"attack {cls.name!r}: knowledge {cls.knowledge!r} must be one of {KNOWLEDGE}.")
            if register:
                ATTACKS.register(cls)

    def __init__(self, **params: Any):
        self.set_params(f"attack {self.name!r}", params)
        self.context: AttackContext | None = None

    def fit(self, context: AttackContext) -> Attack:
        """Learn whatever the attack needs from the context (restricted to its knowledge); returns self."""
        self.context = context.restricted(self.knowledge)
        return self

    def state(self) -> dict[str, Any] | None:
        """What ``fit`` learned, as tensors and plain values (``torch.load(weights_only=True)`` reads it back), for
        an attack whose fit is worth keeping on disk (a trained network); None (the default): fit again instead."""
        return None

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back what ``state`` returned (called by ``restore`` in place of ``fit``)."""
        raise NTEError(f"attack {self.name!r} keeps no fitted state; call fit(context).")

    @final
    def restore(self, context: AttackContext, state: dict[str, Any]) -> Attack:
        """The attack as ``fit(context)`` left it, from its saved ``state``: the context restricted as fit does."""
        self.context = context.restricted(self.knowledge)
        self.load_state(state)
        return self

    def check_surrogates(self, names: Collection[str]) -> None:
        """Raise NTEError if a parameter names a surrogate model outside ``names`` (the suite's surrogates when it
        loads, the context's at ``fit``). The default names none."""

    @abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch ``x`` (B, C, H, W) in pixel space (or packed soft tokens); same shape out."""

    @final
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise NTEError(f"attack {self.name!r}: expected images (B, C, H, W) or packed soft tokens "
                           f"(B, L, K, 2), got shape {tuple(x.shape)}.")
        if not torch.isfinite(x).all():
            raise NTEError(f"attack {self.name!r}: the input images contain NaN or infinite values.")
        out = self.run(x).to(x.device)  # attacks may compute elsewhere (scikit-image on the CPU, say)
        if out.shape != x.shape or not torch.isfinite(out).all():
            raise NTEError(f"attack {self.name!r} returned shape {tuple(out.shape)} (input {tuple(x.shape)}) "
                           f"or non-finite values: a bug in the attack.")
        return out

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, knowledge, data, parameters (type, default) and the docstring's first line (``nte-eval list``)."""
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        return {"name": cls.name, "knowledge": cls.knowledge, "modalities": list(cls.modalities),
                "params": cls.declared(), "description": doc}


def image_generators(x: torch.Tensor, seed: int | str) -> list[torch.Generator]:
    """One CPU generator per image of ``x``, seeded by ``seed`` and the image's own bytes: a random attack draws the
    same for an image in any batch, shard or order (results do not depend on ``--batch-size``)."""
    rows = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return [torch.Generator().manual_seed(int.from_bytes(
        hashlib.sha256(f"nte-eval attack/{seed}/".encode() + row.tobytes()).digest()[:8], "little") & (2**63 - 1))
        for row in rows]


def build_attack(spec: dict[str, Any] | str) -> Attack:
    """An attack from ``'name'`` or ``{'type': name, **params}`` (one setting, no sweeps)."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    if "type" not in spec:
        raise NTEError(f"attack {spec}: needs a 'type' key naming the attack (see `nte-eval list attacks`).")
    cls = ATTACKS.get(spec.pop("type"))
    return cls(**spec)
