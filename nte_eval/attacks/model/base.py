"""The model attacker: ``ModelAttack`` adapts a copy of an unauthorized model (never the designated one) to what
its threat model gives it, and the cell evaluates the adapted copy on the released NTEs. It is an ``Attack`` whose
input reconstruction is the identity, so that it shares the registry, the suite list, the knowledge levels, chains,
resume and the worst case with the input attacks."""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from typing import Any, ClassVar, final

import torch
from torch import nn

from nte_eval.attacks.base import Attack
from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle, resolve_first_layer


class NotApplicable(NTEError):
    """This model attack cannot adapt this model (no normalisation layers, no labelled public images, ...): the
    cell records "not applicable" with the reason, never the unadapted model's numbers."""


class Diverged(NTEError):
    """The adaptation left non-finite weights or losses: the cell records the failure with the reason."""


class ModelAttack(Attack):
    """Adapts an unauthorized model; the released images are handed to the adapted model as they are.

    Subclasses set ``name`` and ``knowledge``, declare parameters, may override ``fit(context)`` and implement
    ``adapt(handle, generator)``: change ``handle.module`` in place (it is a copy), or raise ``NotApplicable``. The
    ``generator`` is seeded by the attacker's seed, the attack's setting and the model, so an adaptation is the same
    bit for bit on the same device (deterministic algorithms are switched on while it adapts; on CUDA, cuBLAS also
    needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment). ``adapted(handle)`` is what the runner calls.
    """

    adapts: ClassVar[bool] = True
    knowledge = "method"  # the level that hands out the released corpus, which every built-in adapts to

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x  # a model attack leaves the released images as they are

    @abstractmethod
    def adapt(self, handle: ModelHandle, generator: torch.Generator) -> None:
        """Adapt ``handle.module`` (a copy of the unauthorized model) in place; NotApplicable if it cannot."""

    @final
    def adapted(self, handle: ModelHandle) -> ModelHandle:
        """A copy of ``handle`` adapted by this attack (fitted first); NotApplicable or Diverged say why not."""
        if self.context is None:
            raise NTEError(f"attack {self.name!r}: call fit(context) before adapting a model.")
        if handle.modality != "image" or type(handle).forward is not ModelHandle.forward:
            raise NotApplicable(f"{handle.spec} reads more than pixels (text, or a VLM's questions); model attacks "
                                f"adapt image classifiers")
        twin = handle.replica()
        seed = hashlib.sha256(f"nte-eval model attack/{self.context.seed}/{self.name}/{sorted(self.params().items())}/"
                              f"{handle.spec}".encode()).digest()
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)  # cuDNN's backward passes too, on a GPU
        try:
            self.adapt(twin, torch.Generator().manual_seed(int.from_bytes(seed[:8], "little") & (2**63 - 1)))
        finally:
            torch.use_deterministic_algorithms(deterministic)
        settle(twin)
        bad = [k for k, v in twin.module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise Diverged(f"the adaptation left non-finite values in {len(bad)} tensor(s) ({bad[0]}, ...): it "
                           f"diverged (a smaller learning rate or fewer epochs may not)")
        return twin


def settle(handle: ModelHandle) -> None:
    """An adapted copy made ready to evaluate: eval mode, its first layer read again from the (maybe trained) module
    (a padded or standardised stem's weight is a copy, not a view), no memo of the old one."""
    handle.module.eval()
    handle.first = resolve_first_layer(handle.module, handle.first.path, handle.input_size, handle.spec)
    handle.memo.clear()


def model_step(attack: Attack) -> ModelAttack | None:
    """The step of ``attack`` that adapts the model: the attack itself, a chain's model step, or None."""
    if attack.adapts:
        return attack  # type: ignore[return-value]
    return getattr(attack, "model_attack", None)


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``module``'s state that differ from ``before`` (CPU copies): what an adaptation changed, the
    part of an adapted model worth keeping on disk."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
            if k not in before or not torch.equal(before[k].to(v.device), v)}


def apply_changes(handle: ModelHandle, state: dict[str, Any]) -> ModelHandle:
    """A copy of ``handle`` with the changed tensors ``state`` loaded: an adapted model restored from disk."""
    twin = handle.replica()
    twin.module.load_state_dict(state, strict=False)
    settle(twin)
    return twin
