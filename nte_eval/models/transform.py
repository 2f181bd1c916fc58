"""How a timm model's evaluation images are prepared from files: timm's own transform (resize by ``crop_pct`` with
the model's interpolation, then a centre crop) from the model's data config, kept in pixel space [0, 1] (the model
handle normalises; the transform's own normalisation is the identity)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nte_eval.errors import NTEError

OVERRIDES = ("interpolation", "crop_pct", "crop_mode")  # what a suite's data.transform may set


def data_config(model: Any) -> dict[str, Any] | None:
    """timm's evaluation data config of a model timm built (None for any other model)."""
    if not getattr(model, "pretrained_cfg", None):
        return None
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def resolved(config: dict[str, Any] | None, overrides: dict[str, Any], size: int, channels: int) -> dict[str, Any]:
    """The data config the images are prepared with: the model's (or timm's defaults), the suite's ``overrides``,
    and the data's size."""
    from timm.data import resolve_data_config

    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise NTEError(f"data.transform: unknown key(s) {unknown}; it may set {', '.join(OVERRIDES)} (the size is "
                       f"data.size).")
    base = {k: v for k, v in (config or resolve_data_config({})).items() if k in OVERRIDES}
    return {**base, **overrides, "input_size": (channels, size, size)}


def eval_transform(config: dict[str, Any]) -> Callable:
    """timm's evaluation transform for ``config`` (``resolved``), PIL image -> (C, H, W) tensor in [0, 1]."""
    from timm.data import create_transform

    c = config["input_size"][0]
    try:
        return create_transform(**config, mean=(0.0,) * c, std=(1.0,) * c, is_training=False)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise NTEError(f"data.transform {config}: timm cannot build this transform ({e}).") from None
