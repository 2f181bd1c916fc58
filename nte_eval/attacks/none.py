"""Knowledge 'none': common preprocessing (the reference's JPEG, resize, occlusion, illumination) and more."""

from __future__ import annotations

import torch

from nte_eval.attacks.base import Attack


class Identity(Attack):
    """No reconstruction: the released images as they are."""

    name = "identity"
    knowledge = "none"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x
