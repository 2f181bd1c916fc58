"""Subspaces of a known first layer: what surrogate and oracle attackers (who hold the weights) remove or fill.

A convolution's null space (exact at a zero-padded border), the border-corrected subspace an operator-view encoder
draws its noise from, and a model's selected subspace as an NTE encoder with the same settings selects it.
"""

from __future__ import annotations

import torch

from nte_eval.attacks.subspace.fill import Subspace
from nte_eval.attacks.subspace.prior import Prior
from nte_eval.attacks.subspace.view import View, operator_view, patch_view, rows, whole_view
from nte_eval.geometry.conv import PixelConv, polyphase_operator
from nte_eval.geometry.subspace import OperatorSubspace, Select, cached_subspace, natural_view, select_mask
from nte_eval.models.handle import ModelHandle

DENSE_LIMIT = 8192  # largest image (C*H*W) for which exact zero-padded subspaces are built in image space


def operator_subspace(conv: PixelConv, view: View, prior: Prior, exact_border: bool) -> Subspace:
    """The null space of a convolution (rows = kernel directions of an m-row layer, m < C*sh*sw).

    ``exact_border`` and an image of at most ``DENSE_LIMIT`` pixels: the zero-padded layer's null space, exactly
    (the complement of its row space, in the whole-image view). Otherwise the circular one, per frequency.
    """
    c, h, w = view.shape
    if exact_border and c * h * w <= DENSE_LIMIT:
        visible = torch.linalg.qr(conv.matrix().T).Q
        return Subspace(whole_view(view.shape), prior.whole(), None, visible[None, None])
    blocks = polyphase_operator(conv.pixel_weight, conv.first.stride, conv.first.padding, view.grid)
    _, _, vh = torch.linalg.svd(blocks, full_matrices=True)
    return Subspace(view, prior, vh[..., blocks.shape[-2]:, :].mH, None)


def border_subspace(conv: PixelConv, sub: OperatorSubspace, view: View, prior: Prior) -> Subspace:
    """The subspace an operator-view encoder with ``border='correct'`` draws its noise from, in the whole-image view.

    The noise is T d for d in the circular subspace, with T = I - A^+ (A - A_circular): the encoder's CGLS converges
    to this minimum-norm least-squares correction. Built densely from a seeded random basis of the circular subspace
    (images up to ``DENSE_LIMIT`` pixels).
    """
    shape, k = view.shape, int(sub.dim)
    size = int(torch.tensor(shape).prod())
    r = torch.randn(k, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis = sub.basis.to(torch.complex128)
    q = torch.linalg.qr(view.from_blocks(rows(view.to_blocks(r), basis @ basis.mH)).flatten(1).T).Q  # (N, k)
    qi = q.T.reshape(k, *shape)
    gram = conv.gram()
    gram = gram + 1e-10 * torch.diagonal(gram).mean() * torch.eye(size, dtype=gram.dtype)
    rhs = conv.adjoint(conv.apply(qi) - conv.apply_circular(qi)).flatten(1).T
    hidden = torch.linalg.qr(q - torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))).Q
    visible = torch.linalg.qr(hidden, mode="complete").Q[:, k:] if 2 * k > size else None
    return Subspace(whole_view(shape), prior.whole(), hidden[None, None],
                    None if visible is None else visible[None, None])


def patch_split(handle: ModelHandle, select: Select) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(hidden U, visible B) of the pixel-space kernel matrix W D^-1 with ``PatchSubspace``'s selection, shaped
    (1, 1, d, k); only the visible one when the reduced SVD gives it and it is the narrower (a Linear layer)."""
    w = handle.pixel_operator(torch.float64).cpu()
    m, d = w.shape
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    sigma = torch.cat([s, s.new_zeros(max(0, d - m))])
    mask = select_mask(sigma, select)
    k = int(mask.sum())
    if k > d - k and not (~mask[len(s):]).any():
        return None, vh[~mask[:len(s)]].T[None, None].contiguous()
    _, _, vh = torch.linalg.svd(w, full_matrices=True)
    return vh[mask].T[None, None].contiguous(), vh[~mask].T[None, None].contiguous()


def model_subspace(handle: ModelHandle, select: str, mode: str, border: str, public: torch.Tensor) -> Subspace:
    """A model's selected low-sensitivity subspace, as an ``NTEEncoder`` with these settings selects it.

    ``mode``: 'patch', 'operator' or 'auto' (``natural_view``). Patch view: the kernel's per-patch subspace (an
    overlapping stem in patch mode: on kernel tiles, approximate). Operator view: the encoder's per-frequency basis;
    with zero padding and ``border='correct'`` the noise lies in the border-corrected subspace, built exactly for
    images up to ``DENSE_LIMIT`` pixels (approximated by the circular subspace beyond).
    """
    f, chosen = handle.first, Select.parse(select)
    view_kind = natural_view(f) if mode == "auto" else mode
    if view_kind == "patch":
        view = patch_view(handle.input_size, f.kernel)
        return Subspace(view, Prior(view, public), *patch_split(handle, chosen))
    view = operator_view(handle.input_size, f.stride)
    prior = Prior(view, public, per_frequency=True)
    sub = cached_subspace(handle, "operator", chosen)
    c, h, w = view.shape
    if border != "correct" or f.padding == (0, 0) or c * h * w > DENSE_LIMIT:
        return Subspace(view, prior, sub.basis.to(torch.complex128), None)
    pixel_kernel = handle.pixel_operator(torch.float64).cpu().view_as(f.weight.cpu())
    conv = PixelConv.on_pixels(pixel_kernel, f.stride, f.padding, view.shape)
    if sub.exact and sub.dim == c * h * w - f.out_channels * view.tiles:  # null(A) of a surjective A
        return operator_subspace(conv, view, prior, exact_border=True)
    return border_subspace(conv, sub, view, prior)
