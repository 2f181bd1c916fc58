"""Model attacks: adapt the unauthorized model rather than reconstruct the input. ``base`` (``ModelAttack``,
``NotApplicable``, ``Diverged``), ``training`` (the parts they are composed from), ``normalization`` (bn_adapt,
tent), ``finetune`` (noise_finetune, self_train)."""

from nte_eval.attacks.model.base import Diverged, ModelAttack, NotApplicable

__all__ = ["Diverged", "ModelAttack", "NotApplicable"]
