"""The local estimate: the largest spectral norm of g's Jacobian at A(x) and at random points around it, by power
iteration. An estimate (a lower bound on the local constant), never certified."""

from __future__ import annotations

import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.result import LipschitzBound
from nte_eval.models.handle import ModelHandle


def local_estimate(model: ModelHandle | Float64Network, x: torch.Tensor, radius: float, points: int = 4,
                   iters: int = 30, seed: int = 0) -> LipschitzBound:
    """(3) Estimate: the largest ‖J_g‖₂ at h = A(x) and at ``points`` random h + radius·u (u uniform on the unit
    sphere of A's output space) per image, by power iteration on JᵀJ (jvp/vjp, float64). ``model``: a handle, or
    the certification's float64 copy of it (no new copy then)."""
    start = time.perf_counter()
    g = Float64Network.of(model)
    x = x.to(g.handle.device, torch.float64)
    h = g.first(x)
    b, k = h.shape[0], points + 1
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, points, h[0].numel(), generator=gen, dtype=torch.float64)
    u = (u / u.norm(dim=-1, keepdim=True)).reshape(b, points, *h.shape[1:]).to(h.device)
    hs = torch.cat([h[:, None], h[:, None] + radius * u], dim=1).flatten(0, 1)
    xs = x.repeat_interleave(k, dim=0)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return g(xs, z)

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, *([1] * (v.dim() - 1)))

    v = unit(torch.randn(hs.shape, generator=gen, dtype=torch.float64).to(h.device))
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode derivative
        _, pullback = torch.func.vjp(fn, hs)
        for _ in range(iters):
            v = unit(pullback(torch.func.jvp(fn, (hs,), (v,))[1])[0])
        sigma = torch.func.jvp(fn, (hs,), (v,))[1].flatten(1).norm(dim=1)  # ‖J v‖ with ‖v‖ = 1: at most ‖J‖
    detail = (f"max Jacobian spectral norm of g over {b} images x {k} points (A(x) and {points} at radius "
              f"{radius:g} in A's output space), {iters} power iterations, float64")
    return LipschitzBound("local", "estimate", float(sigma.max()), detail, time.perf_counter() - start)
