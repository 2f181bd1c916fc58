"""Low-sensitivity subspaces of a model's first linear operator, in pixel space.

Two views of the same operator A = W D^-1 (D = diag(std)):
- ``PatchSubspace``: the SVD of the flattened kernel, one (m x C*kh*kw) matrix shared by every patch. Exact for
  non-overlapping layers (stride == kernel, no padding, or a Linear on the whole image).
- ``OperatorSubspace``: the whole strided, padded convolution on a C x H x W image. With circular padding, a polyphase
  split makes it block-diagonal in the Fourier domain: at each frequency an (m x C*s*s) matrix. Zero padding differs
  only at the border; ``OperatorSubspace.project`` corrects that by least squares on the true operator
  (``geometry.border``).

``select`` picks the subspace: ``tau=1e-2`` (singular values <= tau, plus the exact null space; the reference
default, falling back to the single weakest direction per patch/block when nothing is under tau), ``k=N`` (the N
weakest directions per patch/block) or ``energy=F`` (the weakest directions holding at most a fraction F of the
operator's squared Frobenius norm, over all patches/blocks jointly; at least the single weakest one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from nte_eval.errors import NTEError
from nte_eval.geometry.border import BorderSolver, Dense, out_size
from nte_eval.geometry.conv import (
    PixelConv,
    cgls,
    full_spectrum_count,
    polyphase_irfft,
    polyphase_operator,
    polyphase_rfft,
    rfft_column_weights,
)
from nte_eval.geometry.layer import FirstLayer, HasFirstLayer

DENSE_BORDER = 4096  # pixel values (C * H * W) up to which ``whole_border`` solves the border on the whole image
SELECT_KINDS = ("tau", "k", "energy")
DEFAULT_SELECT = "tau=0.01"


@dataclass(frozen=True)
class Select:
    """How to choose the low-sensitivity subspace: ``tau``, ``k`` or ``energy`` (see module docstring)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, spec: str | Select | dict) -> Select:
        if isinstance(spec, Select):
            return spec
        if isinstance(spec, dict) and len(spec) == 1:
            (kind, value), = spec.items()
        elif isinstance(spec, str) and "=" in spec:
            kind, _, value = spec.partition("=")
        else:
            raise NTEError(f"select {spec!r}: write 'tau=0.01', 'k=8' or 'energy=0.001'.")
        kind = kind.strip()
        if kind not in SELECT_KINDS:
            raise NTEError(f"select {spec!r}: unknown kind {kind!r}; use one of {', '.join(SELECT_KINDS)}.")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise NTEError(f"select {spec!r}: {value!r} is not a number.") from None
        if not math.isfinite(value) or value < 0 or (kind == "k" and (value < 1 or value != int(value))):
            raise NTEError(f"select {spec!r}: {kind} must be a finite non-negative number"
                           + (" and a positive integer." if kind == "k" else "."))
        if kind == "energy" and value >= 1:
            raise NTEError(f"select {spec!r}: energy is a fraction in [0, 1).")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}={int(self.value) if self.kind == 'k' else self.value:g}"


def natural_view(first: FirstLayer) -> Literal["patch", "operator"]:
    """The view in which a first layer's subspace is exact: ``patch`` when its patches do not overlap (or it is a
    Linear on the whole image), else ``operator``. What ``mode='auto'`` picks, everywhere."""
    return "patch" if first.non_overlapping or first.kind == "linear" else "operator"


def select_mask(sigma: torch.Tensor, select: Select) -> torch.Tensor:
    """Boolean mask over ``sigma`` (..., n), per block along the last axis; at least one direction per block."""
    weakest = sigma == sigma.min(dim=-1, keepdim=True).values
    if select.kind == "tau":
        return (sigma <= select.value) | (~(sigma <= select.value).any(-1, keepdim=True) & first_true(weakest))
    order = sigma.argsort(dim=-1, stable=True)
    if select.kind == "k":
        k = min(int(select.value), sigma.shape[-1])
        return torch.zeros_like(sigma, dtype=torch.bool).scatter(-1, order[..., :k], True)
    flat = sigma.flatten()
    idx = flat.argsort(stable=True)
    energy = (flat[idx] ** 2).cumsum(0)
    keep = energy <= select.value * energy[-1]
    keep[0] = True  # at least the single weakest direction overall
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx[keep]] = True
    return mask.view_as(sigma)


def first_true(mask: torch.Tensor) -> torch.Tensor:
    """Keep only the first True along the last axis (to pick one direction among tied weakest ones)."""
    return mask & (mask.cumsum(-1) == 1)


def null_tolerance(sigma_max: float, shape: tuple[int, int]) -> float:
    """Singular values below this count as exactly zero (float64 numerical rank)."""
    return max(shape) * 2.2e-16 * max(sigma_max, 1e-300) * 10


class PatchSubspace:
    """SVD of the pixel-space kernel matrix W D^-1 (m x d); ``basis`` spans the selected directions of R^d."""

    def __init__(self, handle: HasFirstLayer, select: Select):
        w = handle.pixel_operator(torch.float64).cpu()
        m, d = w.shape
        _, s, vh = torch.linalg.svd(w, full_matrices=True)
        self.sigma = torch.cat([s, s.new_zeros(max(0, d - m))])  # one value per right singular vector
        self.mask = select_mask(self.sigma, select)
        self.tol = null_tolerance(float(s.max()), (m, d))
        self.basis64 = vh[self.mask].T.contiguous()  # (d, k)
        self.complement64 = vh[~self.mask].T.contiguous()  # (d, d - k): the rest of R^d, orthonormal
        self.dim = int(self.mask.sum())
        self.exact = bool((self.sigma[self.mask] <= self.tol).all())
        self.max_sigma = float(self.sigma[self.mask].max())
        self.null_dim = int((self.sigma <= self.tol).sum())

    def describe(self) -> dict:
        return {"view": "patch", "dim_per_patch": self.dim, "exact": self.exact, "max_selected_sigma": self.max_sigma,
                "null_dim_per_patch": self.null_dim}


class OperatorSubspace:
    """Fourier polyphase blocks of the strided convolution on a C x H x W image (circular view)."""

    def __init__(self, handle: HasFirstLayer, select: Select):
        f = handle.first
        c, h, w = handle.input_size
        (kh, kw), (sh, sw), (ph, pw) = f.kernel, f.stride, f.padding
        if f.kind != "conv2d":
            raise NTEError(f"{handle.spec}: operator mode needs a Conv2d first layer; use mode='patch' for Linear.")
        if h % sh or w % sw:
            raise NTEError(f"{handle.spec}: operator mode needs the image size {h}x{w} divisible by the stride "
                           f"{sh}x{sw}; resize the data (data.size) accordingly.")
        if 2 * ph >= kh or 2 * pw >= kw:
            raise NTEError(f"{handle.spec}: operator mode supports padding < kernel/2, got padding {f.padding} "
                           f"for kernel {f.kernel}.")
        self.handle, self.shape = handle, (c, h, w)
        self.stride, self.grid = (sh, sw), (h // sh, w // sw)
        blocks = self._blocks(handle.pixel_operator(torch.float64).cpu().view_as(f.weight.cpu()))
        _, s, vh = torch.linalg.svd(blocks, full_matrices=True)  # blocks: (gh, gw//2+1, m, n)
        n, m = blocks.shape[-1], blocks.shape[-2]
        self.sigma = torch.cat([s, s.new_zeros(*s.shape[:-1], max(0, n - m))], dim=-1)
        self.mask = select_mask(self.sigma, select)
        self.tol = null_tolerance(float(s.max()), (m, n))
        kmax = int(self.mask.sum(-1).max())
        # V_S per frequency, padded to kmax columns with zeros where a block keeps fewer directions.
        order = (~self.mask).to(torch.int8).argsort(dim=-1, stable=True)[..., :kmax]
        v = vh.conj().transpose(-1, -2)  # columns are right singular vectors
        vs = torch.gather(v, -1, order[..., None, :].expand(*v.shape[:-1], kmax))
        keep = torch.gather(self.mask, -1, order)
        self.basis = (vs * keep[..., None, :]).to(torch.complex64)  # (gh, gw', n, kmax)
        self.exact = bool((self.sigma[self.mask] <= self.tol).all())
        self.max_sigma = float(self.sigma[self.mask].max())
        self.dim = int(full_spectrum_count(self.mask, self.grid[1]))
        self.null_dim_min = int((self.sigma <= self.tol).sum(-1).min())
        self._border: BorderSolver | None = None  # built on the first border correction

    def _blocks(self, w: torch.Tensor) -> torch.Tensor:
        """M(omega) per rfft frequency (see ``polyphase_operator``)."""
        return polyphase_operator(w, self.stride, self.handle.first.padding, self.grid)

    # ------------------------------------------------------------------ image <-> polyphase Fourier coefficients
    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) real -> (gh, gw', B, n) complex polyphase rfft coefficients."""
        return polyphase_rfft(x, self.stride)

    def from_blocks(self, z: torch.Tensor) -> torch.Tensor:
        return polyphase_irfft(z, self.stride, self.shape)

    def project_circular(self, x: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection onto the selected subspace of the circular-padding operator."""
        basis = self.basis.to(x.device)
        z = self.to_blocks(x).to(torch.complex64)
        coef = torch.einsum("hwnk,hwbn->hwbk", basis.conj(), z)
        return self.from_blocks(torch.einsum("hwnk,hwbk->hwbn", basis, coef)).to(x.dtype)

    @property
    def coefficient_shape(self) -> tuple[int, ...]:
        """Shape of the real normal draws that ``sample`` turns into one image's noise."""
        return (*self.basis.shape[:2], self.basis.shape[-1], 2)

    def sample(self, z: torch.Tensor, border: str = "correct") -> torch.Tensor:
        """Isotropic Gaussian noise in the selected subspace from standard normals z (B, *coefficient_shape).

        Coefficients are drawn directly per frequency (k per block instead of a full white image), then mapped by
        V_S and one inverse FFT. On the self-conjugate rfft columns the inverse transform keeps only the Hermitian
        part (which stays in the subspace because V_S(-w) spans the conjugate of V_S(w)), i.e. half of the draw's
        variance: those columns are scaled by sqrt(2) so that every direction of the subspace gets the same variance.
        """
        self_conjugate = rfft_column_weights(self.grid[1]) == 1
        scale = torch.where(self_conjugate, 2 ** 0.5, 1.0).to(z.device, z.dtype)
        coef = torch.view_as_complex(z.contiguous()).permute(1, 2, 0, 3) * scale[:, None, None]  # (gh, gw', B, k)
        d = self.from_blocks(torch.einsum("hwnk,hwbk->hwbn", self.basis.to(z.device), coef)).to(z.dtype)
        return self.correct_border(d) if border == "correct" else d

    def correct_border(self, d: torch.Tensor) -> torch.Tensor:
        """Make the zero-padded operator respond to d as the circular one does (least-squares correction): in
        closed form (``geometry.border``) where it applies, else by CGLS on the whole image."""
        f = self.handle.first
        if f.padding == (0, 0):  # unpadded outputs never wrap
            return d
        if self._border is None and BorderSolver.applies(f.kernel, f.stride, f.padding, self.shape):
            op = PixelConv(self.handle)
            self._border = BorderSolver(op.pixel_weight.cpu(), f.stride, f.padding, self.shape)
        if self._border is not None:
            return self._border.correct(d)
        op = PixelConv(self.handle)
        return d - cgls(op, op.apply(d) - op.apply_circular(d), iters=300, rtol=1e-6)

    def whole_border(self) -> Dense | None:
        """The border correction of a small image as one dense least-squares solve on the whole image (``border.Dense``
        set up once, seconds), for work that corrects thousands of images of one layer (the degradation study's noise
        map): exact where CGLS stops at its tolerance. None where no correction is needed, where the closed form
        applies, for images over ``DENSE_BORDER`` pixel values, or where the layer has more outputs than pixels:
        ``correct_border`` serves those."""
        f, (c, h, w) = self.handle.first, self.shape
        weight = PixelConv(self.handle).pixel_weight.cpu()
        outputs = f.out_channels * math.prod(out_size(n, k, s, p) for n, k, s, p in
                                             zip((h, w), f.kernel, f.stride, f.padding, strict=True))
        if (f.padding == (0, 0) or c * h * w > DENSE_BORDER or outputs > c * h * w
                or BorderSolver.applies(f.kernel, f.stride, f.padding, self.shape)):
            return None
        if "whole_border" not in self.handle.memo:
            self.handle.memo["whole_border"] = Dense(weight, f.stride, f.padding, self.shape, (0, h), (0, w))
        return self.handle.memo["whole_border"]

    def project(self, x: torch.Tensor, border: str = "correct") -> torch.Tensor:
        """Project (circular view); with ``border='correct'``, then correct the border so the zero-padded operator
        sees what the circular one would: the least-squares correction (``correct_border``). The result lies
        in the zero-padded operator's subspace where it is exact, but this is not its orthogonal projector (the
        correction is not symmetric). ``border='check'`` skips the correction: one FFT pair, and the border's extra
        response shows in the measured first-layer ratio."""
        d = self.project_circular(x)
        return self.correct_border(d) if border == "correct" else d

    def describe(self) -> dict:
        return {"view": "operator", "dim_total": self.dim, "exact": self.exact, "max_selected_sigma": self.max_sigma,
                "null_dim_per_block": self.null_dim_min, "blocks": list(self.grid)}


def cached_subspace(handle: HasFirstLayer, mode: str, select: Select) -> PatchSubspace | OperatorSubspace:
    """The handle's subspace for (mode, select), computed once per first layer: the SVD of a wide kernel takes
    seconds, and every encoder of a run (and of its certification) asks for the same one."""
    key = ("subspace", mode, str(select))
    if key not in handle.memo:
        handle.memo[key] = (PatchSubspace if mode == "patch" else OperatorSubspace)(handle, select)
    return handle.memo[key]


def null_dimension(handle: HasFirstLayer) -> int:
    """Exact null-space dimension of the first layer: per patch if non-overlapping, else per Fourier block (min)."""
    if natural_view(handle.first) == "patch":
        return PatchSubspace(handle, Select("k", 1)).null_dim
    return OperatorSubspace(handle, Select("k", 1)).null_dim_min
