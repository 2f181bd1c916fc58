"""Checkpoints loaded without executing code: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nte_eval.errors import NTEError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights without executing code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise NTEError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise NTEError(f"checkpoint {path} is not a valid safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NTEError(f"checkpoint {path} is not safe to load with weights_only=True (it may run code): "
                       f"{str(e).splitlines()[0]}. Convert it to safetensors.") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NTEError(f"checkpoint {path} does not hold a state dict of tensors.")
    return obj


def apply_checkpoint(module: nn.Module, path: str | Path, spec: str) -> None:
    """Load a local checkpoint into ``module`` strictly: a mismatch is an error naming how many keys are missing and
    unexpected (or the first tensor whose shape differs)."""
    state = load_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    advice = "Check the model name and kwargs such as num_classes / img_size."
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ raise even when not strict
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise NTEError(f"{spec}: checkpoint {path} does not fit the architecture ({first.strip()}). {advice}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        examples = ", ".join(f"{kind} e.g. {keys[0]!r}" for kind, keys in (("missing", missing),
                                                                           ("unexpected", unexpected)) if keys)
        raise NTEError(f"{spec}: checkpoint {path} does not fit the architecture: {len(missing)} missing keys (of "
                       f"the model's {len(module.state_dict())}), {len(unexpected)} unexpected (of the checkpoint's "
                       f"{len(state)}); {examples}. {advice}")
