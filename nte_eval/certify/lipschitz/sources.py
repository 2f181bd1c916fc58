"""The Lipschitz sources by name, computed on one float64 copy of the designated model."""

from __future__ import annotations

import torch

from nte_eval.certify.lipschitz.lipsdp import lipsdp_bound
from nte_eval.certify.lipschitz.local import local_estimate
from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.product import product_bound
from nte_eval.certify.lipschitz.result import LipschitzBound
from nte_eval.errors import NTEError
from nte_eval.evaluate.sections import LIPSCHITZ_SOURCES
from nte_eval.models.handle import ModelHandle

SOURCES = LIPSCHITZ_SOURCES  # declared once, with the suite schema that names them


def lipschitz_bounds(model: ModelHandle | Float64Network, sources: list[str], x: torch.Tensor | None = None,
                     radius: float | None = None, seed: int = 0) -> dict[str, LipschitzBound]:
    """The requested sources, by name (``x`` and ``radius`` are needed for 'local' only). ``model``: a handle, or
    the certification's float64 copy of it; every source runs on that one copy."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise NTEError(f"unknown Lipschitz source {unknown[0]!r}; allowed: {', '.join(SOURCES)}.")
    if "local" in sources and (x is None or radius is None):
        raise NTEError("the 'local' Lipschitz estimate needs images x and a radius.")
    net = Float64Network.of(model)
    out = {}
    for s in sources:
        if s == "product":
            out[s] = product_bound(net)
        elif s == "lipsdp":
            out[s] = lipsdp_bound(net)
        else:
            out[s] = local_estimate(net, x, radius, seed=seed)
    return out
