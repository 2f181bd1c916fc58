"""The first layer's linear operator on pixel perturbations: the one convolution operator (zero or circular
padding, its adjoint, its dense matrix, CGLS) and its Fourier polyphase blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nte_eval.geometry.layer import FirstLayer, HasFirstLayer, PixelLayer


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
    """The first layer's linear part on pixel perturbations: delta -> conv(delta / std), zero or circular padding;
    its adjoint, and for small images its dense matrix and Gram matrix (exact subspaces at a zero-padded border)."""

    def __init__(self, handle: HasFirstLayer | PixelLayer):
        self.first, self.std, self.shape = handle.first, handle.std, tuple(handle.input_size)

    @classmethod
    def on_pixels(cls, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                  shape: tuple[int, int, int]) -> PixelConv:
        """The convolution of a kernel that already acts on pixels (a folded W D^-1, or a layer fitted from data)."""
        first = FirstLayer("pixels", "conv2d", weight, None, tuple(stride), tuple(padding))
        return cls(PixelLayer(first, tuple(shape)))

    @property
    def pixel_weight(self) -> torch.Tensor:
        """The kernel on raw pixels, W D^-1, as float64 (m, C, kh, kw)."""
        w = self.first.weight
        return w.double() / self.std.to(w.device, torch.float64).view(1, -1, 1, 1)

    def apply(self, d: torch.Tensor) -> torch.Tensor:
        f = self.first
        return F.conv2d(d / self.std.to(d), f.weight.to(d), None, f.stride, f.padding)

    def apply_circular(self, d: torch.Tensor) -> torch.Tensor:
        f, (ph, pw) = self.first, self.first.padding
        padded = F.pad(d / self.std.to(d), (pw, pw, ph, ph), mode="circular")
        return F.conv2d(padded, f.weight.to(d), None, f.stride)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The transpose of ``apply``: output_padding restores the input rows/columns that the last outputs read
        but a plain transposed convolution would not reach."""
        f = self.first
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.shape[1:], f.kernel, f.stride, f.padding
        extra = (h - ((y.shape[-2] - 1) * sh - 2 * ph + kh), w - ((y.shape[-1] - 1) * sw - 2 * pw + kw))
        out = F.conv_transpose2d(y, f.weight.to(y), None, f.stride, f.padding, output_padding=extra)
        return out / self.std.to(y)

    def windows(self) -> torch.Tensor:
        """(L, d): per output position, 1 + the index of each pixel its window reads (0 where it reads padding)."""
        f = self.first
        ids = torch.arange(1, math.prod(self.shape) + 1, dtype=torch.float64)
        return F.unfold(ids.view(1, *self.shape), f.kernel, stride=f.stride, padding=f.padding)[0].T.round().long()

    def matrix(self) -> torch.Tensor:
        """The dense float64 matrix A (m * L, N) of the zero-padded convolution on N = C*H*W pixels."""
        idx, w = self.windows(), self.pixel_weight.flatten(1)
        (m, d), n_out = w.shape, idx.shape[0]
        a = torch.zeros(m, n_out, math.prod(self.shape) + 1, dtype=torch.float64)
        a.index_put_((torch.arange(m)[:, None, None], torch.arange(n_out)[None, :, None], idx[None]),
                     w[:, None, :].expand(m, n_out, d), accumulate=True)
        return a[..., 1:].reshape(m * n_out, -1)

    def gram(self) -> torch.Tensor:
        """A^T A (N, N) in float64, summed window by window from W^T W."""
        idx, w = self.windows(), self.pixel_weight.flatten(1)
        size, (n_out, d) = math.prod(self.shape), idx.shape
        g = torch.zeros(size + 1, size + 1, dtype=torch.float64)
        g.index_put_((idx[:, :, None], idx[:, None, :]), (w.T @ w).expand(n_out, d, d), accumulate=True)
        return g[1:, 1:]


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
