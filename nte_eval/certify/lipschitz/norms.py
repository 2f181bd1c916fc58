"""Operator norms of the linear ops on g's path (dense matrices, zero-padded convolutions, averages, broadcasts) and
the Lipschitz constants of max pooling: the gains the per-op rules multiply along the graph."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from nte_eval.certify.lipschitz.graph import Graph, replay, shape_of
from nte_eval.geometry.conv import polyphase_operator

DENSE_LIMIT = 1 << 19  # convolutions whose matrix has at most this many entries get their exact dense norm


def pair(v: Any) -> tuple[int, int]:
    """A size, stride or padding given as an int or a pair, as a pair."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def spectral(w: torch.Tensor) -> float:
    """Exact σ_max of a matrix (float64)."""
    return float(torch.linalg.matrix_norm(w.detach().to(torch.float64), ord=2))


def conv_operator_norm(weight: torch.Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1,
                       dense_limit: int = DENSE_LIMIT) -> float:
    """Certified upper bound on the l2 operator norm of a zero-padded Conv2d (no bias) on a C x H x W input.

    Exact (dense σ_max) when the matrix has at most ``dense_limit`` entries. Otherwise the exact norm of the circular
    convolution on a zero canvas N ≥ H + padding (a multiple of the stride with every output covered): the
    zero-padded outputs are a crop of the circular ones applied to the zero-extended input, so its norm bounds
    theirs; the circular norm is the largest σ_max over its Fourier polyphase blocks.
    """
    w = weight.detach().to("cpu", torch.float64)
    m, cg, kh, kw = w.shape
    (h, wd), (sh, sw), (ph, pw), (dh, dw) = input_hw, stride, padding, dilation
    kh, kw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # effective (dilated) kernel
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    n_in, n_out = cg * groups * h * wd, m * oh * ow
    if n_in * n_out <= dense_limit:
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, cg * groups, h, wd)
        return spectral(F.conv2d(eye, w, None, stride, padding, dilation, groups).reshape(n_in, -1))
    if dilation != (1, 1):
        dilated = w.new_zeros(m, cg, kh, kw)
        dilated[:, :, ::dh, ::dw] = w
        w = dilated
    nh = -(-max(h + ph, oh * sh) // sh) * sh
    nw = -(-max(wd + pw, ow * sw) // sw) * sw
    blocks = polyphase_operator(w, (sh, sw), (ph, pw), (nh // sh, nw // sw))
    blocks = blocks.reshape(*blocks.shape[:2], groups, m // groups, cg * sh * sw)  # block-diagonal over groups
    return float(torch.linalg.matrix_norm(blocks, ord=2).max())


def _coverage(size: int, windows: Iterable[range]) -> int:
    """The largest number of windows that contain one position in [0, size)."""
    count = [0] * size
    for win in windows:
        for i in win:
            if 0 <= i < size:
                count[i] += 1
    return max(count)


def max_pool_gain(node: fx.Node, kernel: Any, stride: Any, padding: Any, dilation: Any) -> float:
    """√(windows covering one input element): a max over each window moves by at most the window's l∞ change."""
    (h, w), (oh, ow) = shape_of(node.args[0])[-2:], shape_of(node)[-2:]
    k, s, p, d = pair(kernel), pair(stride if stride else kernel), pair(padding), pair(dilation)
    cover = [_coverage(n, (range(o * s[i] - p[i], o * s[i] - p[i] + (k[i] - 1) * d[i] + 1, d[i]) for o in range(no)))
             for i, (n, no) in enumerate(((h, oh), (w, ow)))]
    return math.sqrt(cover[0] * cover[1])


def adaptive_max_gain(node: fx.Node) -> float:
    (h, w), (oh, ow) = shape_of(node.args[0])[-2:], shape_of(node)[-2:]
    cover = [_coverage(n, (range(o * n // no, -(-(o + 1) * n // no)) for o in range(no)))
             for n, no in ((h, oh), (w, ow))]
    return math.sqrt(cover[0] * cover[1])


def nonnegative_gain(node: fx.Node, graph: Graph) -> float:
    """√(max row sum · max column sum) (Schur test) of a linear op with non-negative coefficients (averages, sums):
    row sums are its response to ones, column sums the gradient of its summed output. Exact for a mean or sum over
    disjoint groups."""
    x = torch.ones(shape_of(node.args[0]), dtype=torch.float64, device=graph.device, requires_grad=True)
    y = replay(node, graph, x)
    (col,) = torch.autograd.grad(y.sum(), x)
    return math.sqrt(float(y.detach().max()) * float(col.max()))


def avg_pool_gain(node: fx.Node, graph: Graph) -> float:
    """An average pooling acts on each channel alike: the exact norm of its one-channel matrix when that is small,
    else the Schur test."""
    shape = shape_of(node.args[0])
    n = shape[-2] * shape[-1]
    if len(shape) != 4 or n * math.prod(shape_of(node)[-2:]) > DENSE_LIMIT:
        return nonnegative_gain(node, graph)
    eye = torch.eye(n, dtype=torch.float64, device=graph.device).reshape(n, 1, *shape[-2:])
    return spectral(replay(node, graph, eye).reshape(n, -1))


def broadcast_gain(x_shape: tuple[int, ...], out_shape: tuple[int, ...], c: Any = 1.0) -> float:
    """Norm of x -> c * x broadcast to ``out_shape``: each element of x lands on several outputs."""
    c2 = torch.as_tensor(c, dtype=torch.float64).detach().cpu().abs().expand(out_shape) ** 2
    padded = (1,) * (len(out_shape) - len(x_shape)) + tuple(x_shape)
    dims = [i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a == 1 and b != 1]
    return float((c2.sum(dims) if dims else c2).max().sqrt())
