"""Slope bounds [α, β] of elementwise activations (the per-layer constant of the product bound and the sector of
LipSDP), and which modules, functions and tensor methods are such activations."""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# GELU'(x) = Φ(x) + x φ(x) has its extremes where GELU''(x) = φ(x) (2 - x²) = 0, i.e. at x = ±√2.
GELU_SLOPES = (0.5 * (1 - math.erf(1.0)) - math.exp(-1.0) / math.sqrt(math.pi),
               0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi))


@cache
def _numeric_slopes(name: str) -> tuple[float, float]:
    """[min, max] of an activation's derivative on a fine grid (autograd), widened by 1e-6 for the grid's error."""
    fn = {"gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "mish": F.mish}[name]
    x = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(fn(x).sum(), x)
    return float(d.min()) - 1e-6, float(d.max()) + 1e-6


def activation_slopes(name: str, param: Any = None) -> tuple[float, float]:
    """[α, β] with α ≤ φ'(x) ≤ β everywhere for an elementwise activation (``param``: slope, alpha or GELU mode)."""
    if name in ("relu", "relu6", "hardtanh", "tanh", "softplus"):
        return 0.0, 1.0
    if name == "leaky_relu":
        a = 0.01 if param is None else float(param)
        return min(a, 1.0), max(a, 1.0)
    if name == "elu":
        a = 1.0 if param is None else float(param)
        return min(0.0, a), max(1.0, a)
    if name == "gelu":
        return GELU_SLOPES if param in (None, "none") else _numeric_slopes("gelu_tanh")
    if name in ("silu", "mish"):
        return _numeric_slopes(name)
    return {"sigmoid": (0.0, 0.25), "hardswish": (-0.5, 1.5), "hardsigmoid": (0.0, 1.0 / 6.0)}[name]


ACTIVATION_MODULES: dict[type, tuple[str, str | None]] = {  # module type -> (name, attribute holding its parameter)
    nn.ReLU: ("relu", None), nn.ReLU6: ("relu6", None), nn.Hardtanh: ("hardtanh", None), nn.Tanh: ("tanh", None),
    nn.Softplus: ("softplus", None), nn.LeakyReLU: ("leaky_relu", "negative_slope"), nn.ELU: ("elu", "alpha"),
    nn.GELU: ("gelu", "approximate"), nn.SiLU: ("silu", None), nn.Mish: ("mish", None),
    nn.Sigmoid: ("sigmoid", None), nn.Hardswish: ("hardswish", None), nn.Hardsigmoid: ("hardsigmoid", None)}
ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardtanh: "hardtanh", torch.tanh: "tanh",
    F.tanh: "tanh", F.softplus: "softplus", F.leaky_relu: "leaky_relu", F.elu: "elu", F.gelu: "gelu",
    F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid"}
ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
ACTIVATION_PARAMS = {"leaky_relu": "negative_slope", "elu": "alpha", "gelu": "approximate"}  # second argument
