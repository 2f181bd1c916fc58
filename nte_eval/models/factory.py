"""Models built by any importable factory, ``{factory: "package.module:callable", kwargs: {...}, ...}``: the suite
form of ``ModelHandle.from_module``, for users' own architectures and for pretrained models shipped as packages."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from nte_eval.errors import NTEError, did_you_mean
from nte_eval.models.checkpoint import apply_checkpoint
from nte_eval.models.handle import IMAGENET_MEAN, IMAGENET_STD, ModelHandle, check_runs

FACTORY_KEYS = ("factory", "kwargs", "checkpoint", "first_layer", "mean", "std", "input_size", "name")
#: What ``ModelHandle.from_module`` assumes where the spec says nothing.
DEFAULT_INPUT_SIZE = (3, 224, 224)
EXAMPLE = ("{factory: 'efficientnet_lite_pytorch:EfficientNet.from_name', kwargs: {model_name: efficientnet-lite0}, "
           "first_layer: _conv_stem}")


def _first_line(error: BaseException) -> str:
    """An exception's message, first line only, for one-line errors."""
    return (str(error).splitlines() or [""])[0].rstrip(".")


def check_factory_spec(spec: dict[str, Any]) -> None:
    """A factory mapping's own keys, without importing anything: ``factory`` is 'package.module:callable' (the
    callable may be an attribute path such as 'Class.method') and ``first_layer`` a module path."""
    target = spec["factory"]
    module, _, attr = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not all(part.isidentifier() for part in [*module.split("."), *attr.split(".")]):
        raise NTEError(f"factory: {target!r} is not 'package.module:callable'; e.g. {EXAMPLE}.")
    if not isinstance(spec.get("first_layer"), str):
        raise NTEError(f"factory {target!r}: first_layer: give the path of the model's first Conv2d/Linear (its first "
                       f"linear operator on the pixels); e.g. {EXAMPLE}.")


def import_factory(target: str) -> Callable[..., Any]:
    """The callable ``target`` ('package.module:callable') names; NTEError names the module path and what failed."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module's own code raised while importing
        raise NTEError(f"factory {target!r}: cannot import module {module_name!r} ({type(e).__name__}: "
                       f"{_first_line(e)}); install its package, or put its folder on PYTHONPATH.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise NTEError(f"factory {target!r}: {module_name} has no {attr!r}.{did_you_mean(part, dir(obj))}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise NTEError(f"factory {target!r}: {attr} is a {type(obj).__name__}, not a callable; name the function or "
                       "class that builds the model.")
    return obj


def from_factory(spec: dict[str, Any], name: str) -> ModelHandle:
    """Call the spec's factory with its ``kwargs``, load its ``checkpoint`` strictly, and wrap the module as
    ``ModelHandle.from_module`` does (ImageNet mean/std and 3x224x224 unless the spec gives others); one forward pass
    checks that the model takes its input size. ``name``: the handle's spec, for messages."""
    target, kwargs = spec["factory"], spec.get("kwargs") or {}
    build = import_factory(target)
    try:
        module = build(**kwargs)
    except Exception as e:  # the user's code: any error it raises is a problem with the spec
        raise NTEError(f"factory {target!r} raised {type(e).__name__} when called with kwargs {kwargs}: "
                       f"{_first_line(e)}; fix the kwargs (or the factory).") from None
    if not isinstance(module, nn.Module):
        raise NTEError(f"factory {target!r} returned {type(module).__name__}, not a torch.nn.Module; name the "
                       "function or class that builds the model.")
    if spec.get("checkpoint"):
        apply_checkpoint(module, spec["checkpoint"], name)
    handle = ModelHandle(module, spec["first_layer"], tuple(spec.get("mean") or IMAGENET_MEAN),
                         tuple(spec.get("std") or IMAGENET_STD), tuple(spec.get("input_size") or DEFAULT_INPUT_SIZE),
                         spec=name)
    check_runs(handle, "set input_size: [channels, height, width] to a size it takes")
    return handle

