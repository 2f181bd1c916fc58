"""The zero-padded border of an operator-mode NTE, corrected in closed form.

Operator mode draws noise d for the circular convolution. At a zero-padded border the true layer reads zeros where
the circular one wraps around, so it responds differently. The correction is the least-squares c with
A_zero(d - c) ~ A_circ(d) (the minimum-norm solution, as CGLS on the whole image finds it). It is local: it lies
within a few kernel widths of the border. ``BorderSolver`` solves it with matrices computed once per layer:
- each edge as a strip that is periodic along the edge: one small least-squares matrix per Fourier frequency;
- then each corner, where the edges are not periodic, as a dense least-squares problem on the residual left there.
A batch then costs a few FFTs and small matrix products instead of hundreds of convolutions. A small image (under
four strip widths) keeps CGLS on the whole image: cheap there, and a dense solve would cost seconds to set up per
layer (the learned denoiser's random surrogates are a new layer each); work that corrects thousands of images of one
layer sets up ``Dense`` on the whole image once (``OperatorSubspace.whole_border``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# pixels: the correction's energy beyond 16 px of the border is below 1e-5 of it for the ResNet-50 stem and common
# 3x3 and 5x5 stems (the optimum's response to 1e-5); where it decays more slowly (a 5x3 kernel with stride (2, 1),
# say), the result is still at least as close as the 300 CGLS steps it replaces (tests/test_border.py)
STRIP = 16


class Cast:
    """A float64 (or complex128) matrix kept once per (device, dtype) it is used with."""

    def __init__(self, value: torch.Tensor):
        self.copies = {(value.device, value.dtype): value}

    def __call__(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if (device, dtype) not in self.copies:
            self.copies[(device, dtype)] = next(iter(self.copies.values())).to(device, dtype)
        return self.copies[(device, dtype)]


def out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def window(x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], circular: bool) -> torch.Tensor:
    """x[..., r0:r1, c0:c1] where indices outside the image wrap around (circular) or read zero padding."""
    (r0, r1), (c0, c1), (h, w) = rows, cols, x.shape[-2:]
    if circular:
        ri, ci = torch.arange(r0, r1, device=x.device) % h, torch.arange(c0, c1, device=x.device) % w
        return x.index_select(-2, ri).index_select(-1, ci)
    crop = x[..., max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
    return F.pad(crop, (max(0, -c0), max(0, c1 - w), max(0, -r0), max(0, r1 - h)))


def reading(n: int, k: int, s: int, p: int, lo: int, hi: int) -> list[int]:
    """Output positions (along one axis) whose window reads any of the input positions lo..hi-1."""
    return [i for i in range(out_size(n, k, s, p)) if s * i - p < hi and s * i - p + k > lo]


class Edge:
    """The top or bottom strip of ``width`` rows, periodic along the width: per Fourier frequency along it, the
    least-squares map from the wrapped padding rows' response to the strip's correction."""

    def __init__(self, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 shape: tuple[int, int, int], side: str, width: int):
        m, c, kh, kw = weight.shape
        (sh, sw), (ph, pw), (_, h, w) = stride, padding, shape
        self.weight, self.stride, self.pw, self.side, self.width = weight, stride, pw, side, width
        self.c, self.sw, self.h, self.w, self.gw = c, sw, h, w, w // sw
        lo = 0 if side == "top" else h - width
        outs = reading(h, kh, sh, ph, lo, lo + width)
        first = sh * outs[0] - ph
        # to the strip's end: with kernel - padding < stride, the last rows are read by no output (less than a
        # stride of them, so no output is added)
        impulses = torch.zeros(c, width, sw, c, max(sh * outs[-1] - ph + kh, lo + width) - first, w,
                               dtype=torch.float64)
        for ci in range(c):
            for r in range(width):
                for phase in range(sw):
                    impulses[ci, r, phase, ci, lo + r - first, phase] = 1.0
        y = self._conv(impulses.flatten(0, 2), weight, circular=True)  # (n, m, len(outs), gw)
        blocks = torch.fft.rfft(y, dim=-1).permute(3, 1, 2, 0).flatten(1, 2)  # (gw', m * len(outs), n)
        # The wrapped padding rows reach only the outputs at this edge: keep the map's columns for those.
        self.pad_outs = reading(h, kh, sh, ph, -ph, 0) if side == "top" else reading(h, kh, sh, ph, h, h + ph)
        keep = torch.tensor([o * len(outs) + outs.index(i) for o in range(m) for i in self.pad_outs])
        self.solve_map = Cast(torch.linalg.pinv(blocks, rtol=1e-10)[:, :, keep])
        self.band = (sh * self.pad_outs[0] - ph, sh * self.pad_outs[-1] - ph + kh)

    def _conv(self, rows: torch.Tensor, weight: torch.Tensor, circular: bool) -> torch.Tensor:
        """Convolve a band of rows whose first row is the first one an output reads; along the width, periodic
        (the edge's own model) or zero-padded (the true layer, for a band that must not wrap at the corners)."""
        rows = F.pad(rows, (self.pw, self.pw, 0, 0), mode="circular" if circular else "constant")
        return F.conv2d(rows, weight.to(rows), None, self.stride)

    def wrapped_response(self, d: torch.Tensor, wrap_along: bool) -> torch.Tensor:
        """The response to the padding rows of this edge when they wrap around (circular minus zero padding)."""
        r0, r1 = self.band
        rows = window(d, (r0, r1), (0, d.shape[-1]), circular=True)
        inside = (torch.arange(r0, r1, device=d.device) >= 0) & (torch.arange(r0, r1, device=d.device) < self.h)
        return self._conv(rows * ~inside[:, None], self.weight, circular=wrap_along)

    def solve(self, response: torch.Tensor) -> torch.Tensor:
        """(B, m, len(pad_outs), gw) response -> (B, C, width, W) least-squares strip with that response."""
        b = response.shape[0]
        spectrum = torch.fft.rfft(response, dim=-1).permute(3, 1, 2, 0).flatten(1, 2)
        coef = self.solve_map(response.device, spectrum.dtype) @ spectrum  # (gw', n, B)
        coef = coef.reshape(-1, self.c, self.width, self.sw, b).permute(4, 1, 2, 0, 3)
        return torch.fft.irfft(coef, n=self.gw, dim=3).reshape(b, self.c, self.width, self.w)


class Dense:
    """Least squares on a rectangle of pixels: the correction there that best removes what is left of the border's
    response on every output that reads the rectangle (dense pseudo-inverse of its Gram matrix)."""

    def __init__(self, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 shape: tuple[int, int, int], rows: tuple[int, int], cols: tuple[int, int]):
        (kh, kw), (sh, sw), (ph, pw), (c, h, w) = weight.shape[-2:], stride, padding, shape
        oi, oj = reading(h, kh, sh, ph, *rows), reading(w, kw, sw, pw, *cols)
        # the outputs' windows, to the rectangle's end (rows no output reads, fewer than a stride, add no output)
        self.win = ((sh * oi[0] - ph, max(sh * oi[-1] - ph + kh, rows[1])),
                    (sw * oj[0] - pw, max(sw * oj[-1] - pw + kw, cols[1])))
        self.weight, self.stride, self.rows, self.cols = weight, stride, rows, cols
        self.shape = (c, rows[1] - rows[0], cols[1] - cols[0])
        n = math.prod(self.shape)
        gram = torch.empty(n, n, dtype=torch.float64)
        for start in range(0, n, 512):
            stop = min(n, start + 512)
            impulses = torch.zeros(stop - start, n, dtype=torch.float64)
            impulses[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            gram[start:stop] = self._adjoint(self._apply(self._embed(impulses.view(-1, *self.shape)))).flatten(1)
        factor, info = torch.linalg.cholesky_ex(gram)  # positive definite when the rectangle is fully seen
        self.inverse = Cast(torch.cholesky_inverse(factor) if info == 0
                            else torch.linalg.pinv(gram, hermitian=True, rtol=1e-12))  # else the minimum norm

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        (r0, r1), (c0, c1) = self.win
        return F.pad(x, (self.cols[0] - c0, c1 - self.cols[1], self.rows[0] - r0, r1 - self.rows[1]))

    def _apply(self, win: torch.Tensor) -> torch.Tensor:
        return F.conv2d(win, self.weight.to(win), None, self.stride)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Transpose of ``_apply`` restricted to the rectangle."""
        (r0, r1), (c0, c1) = self.win
        full = F.conv_transpose2d(y, self.weight.to(y), None, self.stride)
        full = F.pad(full, (0, (c1 - c0) - full.shape[-1], 0, (r1 - r0) - full.shape[-2]))
        return full[..., self.rows[0] - r0:self.rows[1] - r0, self.cols[0] - c0:self.cols[1] - c0]

    def refine_(self, x: torch.Tensor, d: torch.Tensor) -> None:
        """Correct x in place on the rectangle so that the zero-padded layer's response to it approaches the
        circular layer's response to d on the outputs reading the rectangle (least squares)."""
        rows, cols = self.win
        residual = self._apply(window(d, rows, cols, circular=True)) - self._apply(window(x, rows, cols, False))
        step = self._adjoint(residual).flatten(1) @ self.inverse(x.device, x.dtype)
        x[..., self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]] += step.view(-1, *self.shape)


class BorderSolver:
    """The closed-form border correction of one zero-padded convolution on pixels (``applies`` says when)."""

    def __init__(self, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
                 shape: tuple[int, int, int]):
        c, h, w = shape
        b = strip_width(weight.shape[-2:], stride)
        flip = weight.transpose(-1, -2), stride[::-1], padding[::-1], (c, w, h)
        self.edges = [(axis, Edge(*geometry, side, b)) for axis, geometry in
                      (("rows", (weight, stride, padding, shape)), ("cols", flip)) for side in ("top", "bottom")
                      if wraps(*geometry, side)]
        self.dense = [Dense(weight, stride, padding, shape, r, s)
                      for r in ((0, b), (h - b, h)) for s in ((0, b), (w - b, w))]

    @staticmethod
    def applies(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                shape: tuple[int, int, int]) -> bool:
        """Strips need both axes padded, each output grid equal to the circular one (size // stride), and an image
        large enough that the strips do not meet (four strip widths)."""
        c, *size = shape
        periodic = all(p > 0 and n % s == 0 and out_size(n, k, s, p) == n // s
                       for n, k, s, p in zip(size, kernel, stride, padding, strict=True))
        return periodic and min(size) >= 4 * strip_width(kernel, stride)

    def correct(self, d: torch.Tensor) -> torch.Tensor:
        """d - c, with c the least-squares correction that makes the zero-padded layer respond as the circular."""
        x = d.clone()
        for axis, edge in self.edges:
            view = d if axis == "rows" else d.transpose(-1, -2)
            strip = edge.solve(edge.wrapped_response(view, wrap_along=axis == "rows"))
            target = x if axis == "rows" else x.transpose(-1, -2)
            lo = 0 if edge.side == "top" else edge.h - edge.width
            target[..., lo:lo + edge.width, :] += strip
        for part in self.dense:
            part.refine_(x, d)
        return x


def wraps(weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int], shape: tuple[int, int, int],
          side: str) -> bool:
    """Whether any output reads the padding rows on this side (a bottom pad that the stride skips is never read)."""
    (kh, sh, ph), h = (weight.shape[-2], stride[0], padding[0]), shape[1]
    return bool(reading(h, kh, sh, ph, -ph, 0) if side == "top" else reading(h, kh, sh, ph, h, h + ph))


def strip_width(kernel: tuple[int, int], stride: tuple[int, int]) -> int:
    """Strip width: STRIP pixels or two kernels, a multiple of both strides."""
    step = math.lcm(*stride)
    return -(-max(STRIP, 2 * max(kernel)) // step) * step
