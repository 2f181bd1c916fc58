"""The one float64 copy of a designated model that a certification makes: fidelity measurement and every Lipschitz
bound run on it, so a large model is copied once, and the handle's module is never modified."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from nte_eval.models.handle import ModelHandle


class Float64Network:
    """The handle's module as an eval-mode float64 copy without gradients on its parameters.

    ``outputs(x)`` gives the logits and A's output, ``first(x)`` A's output, and ``self(x, h)`` is g: the logits with
    A's output replaced by h (a forward hook on the first layer returns h; the model then runs normally on the real
    x, so anything that also reads x sees the real image).
    """

    def __init__(self, handle: ModelHandle):
        self.handle = handle
        self.module = copy.deepcopy(handle.module).double().eval().requires_grad_(False)
        self.layer = self.module.get_submodule(handle.first.path)

    @classmethod
    def of(cls, model: ModelHandle | Float64Network) -> Float64Network:
        """``model`` itself when it is already a float64 network, else a new copy of the handle's module."""
        return model if isinstance(model, Float64Network) else cls(model)

    def _run(self, x: torch.Tensor, hook: Callable) -> torch.Tensor:
        """The logits of pixel-space images x, with ``hook`` on the first layer for this one pass."""
        removable = self.layer.register_forward_hook(hook)
        try:
            return self.module(self.handle.normalize(x.to(torch.float64)))
        finally:
            removable.remove()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, A(x)) in one pass. A's output is read by a hook on the layer itself, so it is exactly what the
        rest of the network receives (whatever the model does before the layer)."""
        seen = []  # a copy of A's output: later in-place ops must not alter it
        logits = self._run(x, lambda _m, _i, out: seen.append(out.detach().clone()))
        return logits, seen[0]

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) as the module computes it (float64), in the shape the rest of the network receives."""
        with torch.no_grad():
            return self.outputs(x)[1]

    def __call__(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """g(h): the logits of images x with A's output replaced by h."""
        return self._run(x, lambda _m, _i, _out: h.clone())  # a copy: the next layer may work in place
