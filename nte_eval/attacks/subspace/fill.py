"""Projection and Gaussian fill of a hidden subspace: what every subspace attack does once it has a subspace.

With a hidden subspace (orthonormal U, complement B) the Gaussian conditional mean keeps the visible part
and fills the hidden one: x = mu + S B (B^H S B)^-1 B^H (x - mu), evaluated from whichever of U and B is narrower.
Projection instead replaces the hidden part with the mean's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nte_eval.attacks.subspace.prior import Prior
from nte_eval.attacks.subspace.view import View, rows


@dataclass
class BlockMap:
    """A per-frequency linear map G = (I if ``identity``) + left @ right, kept low-rank: (..., n, r) @ (..., r, n)."""

    left: torch.Tensor
    right: torch.Tensor
    identity: bool

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        left, right = self.left, self.right
        if not z.is_complex() and left.is_complex():  # the whole-image view: real throughout
            left, right = left.real, right.real
        out = rows(rows(z, right), left)
        return z + out if self.identity else out


def narrower(hidden: torch.Tensor | None, visible: torch.Tensor | None) -> bool:
    """True when the visible basis is given and narrower than the hidden one."""
    return visible is not None and (hidden is None or visible.shape[-1] < hidden.shape[-1])


def projection_map(hidden: torch.Tensor | None = None, visible: torch.Tensor | None = None) -> BlockMap:
    """Remove the hidden part (I - U U^H), or keep the visible one (B B^H), whichever is narrower."""
    if narrower(hidden, visible):
        return BlockMap(visible, visible.mH, False)
    return BlockMap(-hidden, hidden.mH, True)


def fill_map(prior: Prior, hidden: torch.Tensor | None = None, visible: torch.Tensor | None = None) -> BlockMap:
    """Per-frequency G with E[x - mu | visible part] = G (x - mu) under the prior's Gaussian N(mu, S).

    From B: G = S B (B^H S B)^-1 B^H. From U (zero columns allowed, where a block keeps fewer directions), with
    y = (I - U U^H)(x - mu): G = (I - U (U^H S^-1 U)^-1 U^H S^-1)(I - U U^H) = I - U R,
    R = U^H + Y (I - U U^H), Y = (U^H S^-1 U)^-1 U^H S^-1.
    """
    if narrower(hidden, visible):
        sb = prior.times(visible)
        b = visible.to(sb.dtype)
        return BlockMap(sb, torch.linalg.solve(b.mH @ sb, b.mH), False)
    lu = prior.solve(hidden)  # S^-1 U
    u = hidden.to(lu.dtype).expand_as(lu)
    empty = (u.abs().sum(-2) == 0).to(u.dtype)  # padded columns: keep (U^H S^-1 U) invertible
    y = torch.linalg.solve(u.mH @ lu + torch.diag_embed(empty), lu.mH)
    return BlockMap(-u, u.mH + y - (y @ u) @ u.mH, True)


def apply_blocks(view: View, g: BlockMap, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """mean + G (x - mean), per frequency, in x's dtype. One unpadded tile: the image itself is the only block."""
    view.check(x)
    y = x.to(mean) - mean
    if view.tiles == 1 and view.padded == view.shape:
        return (mean + g(y.flatten(1)).view_as(y)).to(x.dtype)
    return (mean + view.from_blocks(g(view.to_blocks(y)))).to(x.dtype)


@dataclass
class Subspace:
    """A hidden subspace in a view (orthonormal ``hidden`` and/or ``visible`` complement, (..., n, k)) with the
    public prior that fills it. ``eigenvalues``: the whitened spectrum it was estimated from, if it was."""

    view: View
    prior: Prior
    hidden: torch.Tensor | None
    visible: torch.Tensor | None
    eigenvalues: torch.Tensor | None = None
    _maps: dict[str, BlockMap] = field(default_factory=dict, repr=False)

    @property
    def rank(self) -> int:
        """Hidden dimension per tile or frequency block (the widest block), or in the whole image."""
        return self.hidden.shape[-1] if self.hidden is not None else self.view.n - self.visible.shape[-1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Replace the hidden part with the public mean's."""
        if "project" not in self._maps:
            self._maps["project"] = projection_map(self.hidden, self.visible)
        return apply_blocks(self.view, self._maps["project"], x, self.prior.mean)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        """Fill the hidden part with its conditional mean given the visible part (public-image prior)."""
        if "fill" not in self._maps:
            self._maps["fill"] = fill_map(self.prior, self.hidden, self.visible)
        return apply_blocks(self.view, self._maps["fill"], x, self.prior.mean)


def _basis(sub: Subspace) -> tuple[str, torch.Tensor]:
    """The narrower of a subspace's two descriptions, orthonormal per block: ('hidden', U) or ('visible', B)."""
    kind, basis = ("visible", sub.visible) if narrower(sub.hidden, sub.visible) else ("hidden", sub.hidden)
    return kind, torch.linalg.qr(basis.to(torch.complex128 if basis.is_complex() else torch.float64)).Q


def max_angle(a: Subspace, b: Subspace) -> float | None:
    """The largest principal angle (degrees) between two hidden subspaces of one view, over its blocks; None when
    the views or the hidden dimensions differ (then no angle says how close they are). Computed from the narrower
    descriptions (hidden subspaces of equal dimension have the principal angles of their complements; with one
    hidden basis U and the other's complement B, sin of the largest angle is the norm of B^H U): never a complete
    basis of the whole image."""
    if a.view != b.view or any(s.hidden is not None and bool((s.hidden.abs().sum(-2) == 0).any()) for s in (a, b)):
        return None  # zero (padding) columns: the blocks keep different dimensions
    if a.rank != b.rank or a.rank == 0:
        return None
    (ka, qa), (kb, qb) = _basis(a), _basis(b)
    if min(qa.shape[-1], qb.shape[-1]) == 0:  # nothing visible in either: both hide everything
        return 0.0
    if qa.is_complex() != qb.is_complex():
        qa, qb = qa.to(torch.complex128), qb.to(torch.complex128)
    if ka == kb:
        cosines = torch.linalg.svdvals(qa.mH @ qb).clamp(max=1.0)
        return float(torch.rad2deg(torch.arccos(cosines.min())))
    sines = torch.linalg.svdvals(qa.mH @ qb).clamp(max=1.0)
    return float(torch.rad2deg(torch.arcsin(sines.max())))
