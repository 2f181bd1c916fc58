"""Low-sensitivity subspaces of a model's first linear operator, in pixel space.

Two views of the same operator A = W D^-1 (D = diag(std)):
- ``PatchSubspace``: the SVD of the flattened kernel, one (m x C*kh*kw) matrix shared by every patch. Exact for
  non-overlapping layers (stride == kernel, no padding, or a Linear on the whole image).
- ``OperatorSubspace``: the whole strided, padded convolution on a C x H x W image. With circular padding, a polyphase
  split makes it block-diagonal in the Fourier domain: at each frequency an (m x C*s*s) matrix. Zero padding differs
  only at the border; ``OperatorSubspace.project`` corrects that with a few CGLS steps on the true operator.

``select`` picks the subspace: ``tau=1e-2`` (singular values <= tau, plus the exact null space; the reference
default, falling back to the single weakest direction per patch/block when nothing is under tau), ``k=N`` (the N
weakest directions per patch/block) or ``energy=F`` (the weakest directions holding at most a fraction F of the
operator's squared Frobenius norm, over all patches/blocks jointly; at least the single weakest one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nte_eval.errors import NTEError
from nte_eval.handles import ModelHandle

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

    def __init__(self, handle: ModelHandle, select: Select):
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

    def __init__(self, handle: ModelHandle, select: Select):
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

    def correct_border(self, d: torch.Tensor, iters: int = 300, rtol: float = 1e-6) -> torch.Tensor:
        """Make the zero-padded operator respond to d as the circular one does (minimum-norm CGLS correction)."""
        if self.handle.first.padding == (0, 0):  # unpadded outputs never wrap
            return d
        op = PixelConv(self.handle)
        err = op.apply(d) - op.apply_circular(d)
        return d - cgls(op, err, iters, rtol)

    def project(self, x: torch.Tensor, border: str = "correct") -> torch.Tensor:
        """Project (circular view); with ``border='correct'``, then correct the border so the zero-padded operator
        sees what the circular one would: the minimum-norm correction (CGLS, up to ``iters`` steps). The result lies
        in the zero-padded operator's subspace where it is exact, but this is not its orthogonal projector (the
        correction is not symmetric). ``border='check'`` skips the correction: one FFT pair, and the border's extra
        response shows in the measured first-layer ratio."""
        d = self.project_circular(x)
        return self.correct_border(d) if border == "correct" else d

    def describe(self) -> dict:
        return {"view": "operator", "dim_total": self.dim, "exact": self.exact, "max_selected_sigma": self.max_sigma,
                "null_dim_per_block": self.null_dim_min, "blocks": list(self.grid)}


def polyphase_operator(w: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                       grid: tuple[int, int]) -> torch.Tensor:
    """Fourier blocks of a strided, padded convolution with circular padding on a (gh*sh, gw*sw) image.

    M(omega)[o, (c, rh, rw)] = sum over taps of phase (rh, rw) of w * exp(2 pi i omega . q / grid): the circular
    convolution's output rfft2 at omega is M(omega) times the input's ``polyphase_rfft`` at omega.
    Returns (gh, gw//2+1, m, C*sh*sw) complex128.
    """
    m, c, kh, kw = w.shape
    (sh, sw), (gh, gw), (ph, pw) = stride, grid, padding
    fh = torch.arange(gh, dtype=torch.float64)
    fw = torch.arange(gw // 2 + 1, dtype=torch.float64)
    out = torch.zeros(gh, gw // 2 + 1, m, c, sh, sw, dtype=torch.complex128)
    for a in range(kh):
        qa, ra = divmod(a - ph, sh)
        for b in range(kw):
            qb, rb = divmod(b - pw, sw)
            phase = torch.exp(2j * math.pi * (fh[:, None] * qa / gh + fw[None, :] * qb / gw))
            out[:, :, :, :, ra, rb] += phase[:, :, None, None] * w[None, None, :, :, a, b].to(torch.float64)
    return out.reshape(gh, gw // 2 + 1, m, c * sh * sw)


def polyphase_rfft(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) real -> (gh, gw//2+1, B, C*sh*sw) complex: rfft2 over the grid of each polyphase component.

    With stride == tile, the vector at a frequency is in a tile's (C, sh, sw) order, so a per-tile subspace acts
    the same at every frequency. H and W must be multiples of the stride.
    """
    b, c, h, w = x.shape
    (sh, sw) = stride
    gh, gw = h // sh, w // sw
    poly = x.reshape(b, c, gh, sh, gw, sw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * sh * sw, gh, gw)
    return torch.fft.rfft2(poly).permute(2, 3, 0, 1)


def polyphase_irfft(z: torch.Tensor, stride: tuple[int, int], shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``polyphase_rfft``: (gh, gw//2+1, B, n) complex -> (B, C, H, W) real for image ``shape``."""
    c, h, w = shape
    (sh, sw) = stride
    gh, gw = h // sh, w // sw
    poly = torch.fft.irfft2(z.permute(2, 3, 0, 1), s=(gh, gw))
    b = poly.shape[0]
    return poly.reshape(b, c, sh, sw, gh, gw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)


def rfft_column_weights(gw: int) -> torch.Tensor:
    """Multiplicity of each rfft column of a width-``gw`` grid in the full spectrum: 1 for the self-conjugate
    columns (0, and gw/2 when gw is even), 2 for the others (each stands for itself and its conjugate)."""
    weight = torch.full((gw // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if gw % 2 == 0:
        weight[-1] = 1.0
    return weight


def full_spectrum_count(mask: torch.Tensor, gw: int) -> torch.Tensor:
    """Count selected directions over the full (gh x gw) spectrum from its rfft half (gh x gw//2+1)."""
    return (mask.sum(-1) * rfft_column_weights(gw)[None]).sum()


class PixelConv:
    """The first layer's linear part on pixel perturbations: delta -> conv(delta / std), zero or circular padding."""

    def __init__(self, handle: ModelHandle):
        self.f, self.std, self.size = handle.first, handle.std, handle.input_size[1:]

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        return F.conv2d(d / self.std.to(d), self.f.weight.to(d), None, self.f.stride, self.f.padding)

    def apply_circular(self, d: torch.Tensor) -> torch.Tensor:
        ph, pw = self.f.padding
        padded = F.pad(d / self.std.to(d), (pw, pw, ph, ph), mode="circular")
        return F.conv2d(padded, self.f.weight.to(d), None, self.f.stride)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The transpose of ``apply``: output_padding restores the input rows/columns that the last outputs read
        but a plain transposed convolution would not reach."""
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.size, self.f.kernel, self.f.stride, self.f.padding
        extra = (h - ((y.shape[-2] - 1) * sh - 2 * ph + kh), w - ((y.shape[-1] - 1) * sw - 2 * pw + kw))
        out = F.conv_transpose2d(y, self.f.weight.to(y), None, self.f.stride, self.f.padding, output_padding=extra)
        return out / self.std.to(y)


def cgls(op: PixelConv, rhs: torch.Tensor, iters: int, rtol: float, ntol: float = 1e-6,
         window: int = 10) -> torch.Tensor:
    """Minimum-norm least-squares solution of op(c) = rhs per sample, by conjugate gradients (CGLS).

    A sample stops when its residual is below ``rtol`` of the right-hand side (consistent systems: exact), when its
    normal-equation residual ||op^T r|| fell below ``ntol`` of its start (inconsistent systems: least squares
    reached), or when its residual dropped by less than 1% over ``window`` steps (float32 stagnation).
    """
    b = rhs.shape[0]
    norm = lambda t: t.flatten(1).pow(2).sum(1)  # noqa: E731
    tiny = torch.finfo(rhs.dtype).tiny
    target = norm(rhs).sqrt() * rtol
    r = rhs.clone()
    s = op.adjoint(r)
    c = torch.zeros_like(s)
    p, gamma = s.clone(), norm(s)
    gamma_stop = gamma * ntol**2
    history = [norm(r).sqrt()]
    active = torch.ones(b, dtype=torch.bool, device=rhs.device)
    for step in range(iters):
        active &= (history[-1] > target) & (gamma > gamma_stop)
        if step >= window:
            active &= history[-1] < 0.99 * history[-1 - window]
        if not active.any():
            break
        q = op.apply(p)
        alpha = torch.where(active, gamma / norm(q).clamp_min(tiny), torch.zeros_like(gamma)).view(b, 1, 1, 1)
        c, r = c + alpha * p, r - alpha * q
        s = op.adjoint(r)
        new = norm(s)
        direction = s + (new / gamma.clamp_min(tiny)).view(b, 1, 1, 1) * p
        p = torch.where(active.view(b, 1, 1, 1), direction, p)  # a finished sample's direction stays finite and unused
        gamma = torch.where(active, new, gamma)
        history.append(norm(r).sqrt())
    return c


def cached_subspace(handle: ModelHandle, mode: str, select: Select) -> PatchSubspace | OperatorSubspace:
    """The handle's subspace for (mode, select), computed once per first layer: the SVD of a wide kernel takes
    seconds, and every encoder of a run (and of its certification) asks for the same one."""
    key = ("subspace", mode, str(select))
    if key not in handle.memo:
        handle.memo[key] = (PatchSubspace if mode == "patch" else OperatorSubspace)(handle, select)
    return handle.memo[key]


def null_dimension(handle: ModelHandle) -> int:
    """Exact null-space dimension of the first layer: per patch if non-overlapping, else per Fourier block (min)."""
    if handle.first.non_overlapping:
        return PatchSubspace(handle, Select("k", 1)).null_dim
    return OperatorSubspace(handle, Select("k", 1)).null_dim_min
