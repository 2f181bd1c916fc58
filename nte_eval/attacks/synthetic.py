"""The attacker's own NTEs (knowledge 'method'): public images encoded, with the encoder's public settings, for
random surrogate models of the designated first-layer geometry, under the attacker's own keys. The learned denoiser
trains on such pairs; the probe scores any attack on them without labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nte_eval.encoders import ENCODERS, Encoder
from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle

HEAD_CLASSES = 10  # the surrogates' random heads: only there so that logit-based encoders (adversarial) can run
PROBE_IMAGES = 64  # public images in the probe


def init_uniform(module: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default scale (uniform, bound 1/sqrt(fan_in)) for every Conv2d/Linear weight, zero biases."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                bound = 1 / math.sqrt(layer.weight[0].numel())
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=gen) * 2 - 1) * bound)
                if layer.bias is not None:
                    layer.bias.zero_()


def random_surrogate(settings: dict[str, Any], gen: torch.Generator, name: str) -> ModelHandle:
    """A model with the designated first-layer geometry and normalisation, a random first layer and a random head."""
    geo, (c, h, w) = settings["first_layer"], settings["input_size"]
    m = int(geo["out_channels"])
    with torch.device("meta"):  # built without touching the global RNG; initialised from ``gen`` below
        if geo["kind"] == "linear":
            module = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, m), nn.ReLU(), nn.Linear(m, HEAD_CLASSES))
            path = "1"
        elif geo["kind"] == "conv2d":
            first = nn.Conv2d(int(geo["in_channels"]), m, tuple(geo["kernel"]), tuple(geo["stride"]),
                              tuple(geo["padding"]))
            module, path = nn.Sequential(first, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                         nn.Linear(m, HEAD_CLASSES)), "0"
        else:
            raise NTEError(f"random surrogate: first-layer kind {geo['kind']!r} is not 'conv2d' or 'linear'.")
    module.to_empty(device="cpu")
    init_uniform(module, gen)
    return ModelHandle.from_module(module, path, mean=tuple(settings["mean"]), std=tuple(settings["std"]),
                                   input_size=(c, h, w), spec=name)


@dataclass(frozen=True)
class Probe:
    """Clean public images and the attacker's own NTEs of them: how well an attack restores these (PSNR) scores it,
    and so chooses its strength, without labels and without the designated model."""

    clean: torch.Tensor
    ntes: torch.Tensor


def probe(encoder: Encoder, public: torch.Tensor, seed: int, count: int = PROBE_IMAGES) -> Probe | None:
    """``count`` public images and their NTEs for one random surrogate, made with ``encoder``'s public settings under
    the key ``probe/{seed}``; None where no surrogate can be built (no pixel first layer, public images of another
    size)."""
    settings = encoder.public_settings()
    geometry = settings.get("first_layer") or {}
    if geometry.get("kind") not in ("conv2d", "linear") or tuple(public.shape[1:]) != tuple(settings["input_size"]):
        return None
    gen = torch.Generator().manual_seed(seed)
    surrogate = random_surrogate(settings, gen, "probe-surrogate")
    clean = public[torch.randperm(len(public), generator=gen)[:count]]
    made = ENCODERS.get(settings["type"])(surrogate, **settings["params"]).fit()
    return Probe(clean, made.encode(clean, key=f"probe/{seed}", record=False).images)
