"""Shared machinery of the subspace attacks: block views of images, public-image priors, noise-subspace estimates
from NTE statistics, projection and Gaussian fill.

Views. Images are split into non-overlapping tiles (th, tw); the rfft2 over the tile grid of each of the
n = C*th*tw polyphase components gives, per frequency, a complex vector of n entries (``polyphase_rfft``).
- patch view: tiles of the first layer's kernel (a ViT/ConvNeXt patchify layer; a Linear first layer is one tile,
  the whole image). A per-patch subspace acts identically at every frequency, so patches and blocks are two
  descriptions of one thing. A layer whose kernel does not tile the image (an overlapping stem, a baseline
  encoder's designated ResNet) gets kernel-sized tiles of the image padded with its edge values, cut back after.
- operator view: tiles of the stride. A strided convolution with circular padding is block-diagonal over the
  frequencies, so its low-sensitivity subspace is one subspace per frequency (``OperatorSubspace``).
- whole-image view: one tile, the image itself; used for the exact subspaces of zero-padded operators, which are
  not per-frequency (the border couples frequencies), on images up to ``DENSE_LIMIT`` pixels.

Prior. From public clean images: the mean image and, per frequency, the Hermitian second moment of their mean-free
blocks (a Gaussian prior that is stationary over tile positions and uses the whole image as context); when that
would be too large (frequencies times n^2), the per-tile covariance shared by every frequency.

Fill. With a hidden subspace (orthonormal U, complement B) the Gaussian conditional mean keeps the visible part
and fills the hidden one: x = mu + S B (B^H S B)^-1 B^H (x - mu), evaluated from whichever of U and B is narrower.
Projection instead replaces the hidden part with the mean's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from nte_eval.encoders import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.geometry.conv import polyphase_irfft, polyphase_operator, polyphase_rfft
from nte_eval.geometry.subspace import OperatorSubspace, Select, select_mask
from nte_eval.models.handle import ModelHandle

PER_FREQUENCY_LIMIT = 2**23  # frequencies * n^2 entries up to which the prior is kept per frequency
RIDGE = 1e-4  # relative ridge on covariances (times their mean eigenvalue)
MAX_DIM = 16384  # largest tile dimension n the dense covariances accept
DENSE_LIMIT = 8192  # largest image (C*H*W) for which exact zero-padded subspaces are built in image space


@dataclass(frozen=True)
class View:
    """Images (C, H, W) <-> per-frequency polyphase blocks with step ``tile`` (see the module docstring)."""

    shape: tuple[int, int, int]
    tile: tuple[int, int]

    def __post_init__(self) -> None:
        if self.n > MAX_DIM:
            raise NTEError(f"a {self.tile[0]}x{self.tile[1]} tile of {self.shape[0]} channels has n = {self.n} "
                           f"entries, more than the {MAX_DIM} a dense covariance allows: subspace attacks cannot "
                           "handle this first layer at this input size.")

    @property
    def padded(self) -> tuple[int, int, int]:
        c, h, w = self.shape
        th, tw = self.tile
        return (c, -(-h // th) * th, -(-w // tw) * tw)

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = self.padded
        return (h // self.tile[0], w // self.tile[1])

    @property
    def n(self) -> int:
        return self.shape[0] * self.tile[0] * self.tile[1]

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def frequencies(self) -> int:
        return self.grid[0] * (self.grid[1] // 2 + 1)

    def check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise NTEError(f"this attack was fitted for images {self.shape} (the encoder's input size), got "
                           f"{tuple(x.shape[1:])}; evaluate images of the designated model's input size.")

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w = self.padded
        if (h, w) == tuple(x.shape[-2:]):
            return x
        return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (gh, gw//2+1, B, n) complex128."""
        return polyphase_rfft(self.pad(x.double()), self.tile)

    def from_blocks(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        return polyphase_irfft(z, self.tile, self.padded)[..., :h, :w]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B * tiles, n) float64 tiles in (C, th, tw) order."""
        x = self.pad(x.double())
        (th, tw), (gh, gw), c = self.tile, self.grid, x.shape[1]
        return x.reshape(-1, c, gh, th, gw, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, self.n)


def patch_view(shape: tuple[int, ...], kernel: tuple[int, ...]) -> View:
    return View(tuple(shape), tuple(kernel))


def operator_view(shape: tuple[int, ...], stride: tuple[int, ...]) -> View:
    _, h, w = shape
    if h % stride[0] or w % stride[1]:
        raise NTEError(f"operator view: the image size {h}x{w} must be a multiple of the stride {tuple(stride)}.")
    return View(tuple(shape), tuple(stride))


def whole_view(shape: tuple[int, ...]) -> View:
    return View(tuple(shape), tuple(shape[1:]))


# ------------------------------------------------------------------------------------------------ statistics


def rows(z: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Apply per-frequency matrices (..., n, n') to row vectors z (..., B, n'): each row v becomes mat @ v."""
    return z @ mat.to(z.dtype).transpose(-1, -2)


def moments(samples: torch.Tensor, count: int) -> torch.Tensor:
    """sum of z z^H over the sample rows z of (..., S, n), divided by ``count`` (the number of images)."""
    return samples.transpose(-1, -2) @ samples.conj() / count


def block_moments(view: View, x: torch.Tensor, mean: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-frequency second moments (gh, gw', n, n) of the blocks of x - mean, per image."""
    total = sum(moments(view.to_blocks(x[i:i + chunk].to(mean) - mean), 1) for i in range(0, x.shape[0], chunk))
    return total / x.shape[0]


def patch_moments(patches: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mean: torch.Tensor,
                  chunk: int = 256) -> torch.Tensor:
    """Second moment (1, 1, n, n) of the patches of x - mean, per image."""
    total = sum(moments(patches(x[i:i + chunk].to(mean) - mean), 1) for i in range(0, x.shape[0], chunk))
    return (total / x.shape[0])[None, None]


class Prior:
    """Public clean images' statistics in a view, each computed when first needed: the mean image (1, C, H, W),
    the per-tile covariance ``tile_cov`` (1, 1, n, n) and ``cov``, the second moments the fill uses: per frequency
    (gh, gw', n, n) where small enough (frequencies * n^2 <= PER_FREQUENCY_LIMIT) or asked for, else ``tile_cov``.
    ``times`` / ``solve`` apply the ridged ``cov`` or its inverse to basis columns.

    ``source``: the per-frequency prior of another view whose (stationary) Gaussian this one restates in the
    whole-image view (see ``whole``); it is applied through the source's blocks, never as a dense matrix.
    """

    def __init__(self, view: View, images: torch.Tensor, per_frequency: bool | None = None,
                 source: Prior | None = None):
        self.view, self.images, self.source = view, images, source
        self.mean = images.double().mean(0, keepdim=True) if source is None else source.mean
        limit = view.frequencies * view.n**2 <= PER_FREQUENCY_LIMIT
        self.per_frequency = limit if per_frequency is None else per_frequency

    @cached_property
    def tile_cov(self) -> torch.Tensor:
        return patch_moments(self.view.patches, self.images, self.mean)

    @cached_property
    def cov(self) -> torch.Tensor:
        return block_moments(self.view, self.images, self.mean) if self.per_frequency else self.tile_cov

    @cached_property
    def _ridged(self) -> torch.Tensor:
        return ridged(self.cov)

    @cached_property
    def _chol(self) -> torch.Tensor:
        return torch.linalg.cholesky(self._ridged)

    def whole(self) -> Prior:
        """The same Gaussian in ``whole_view`` (one block: the image), for exact zero-padded subspaces."""
        return Prior(whole_view(self.view.shape), self.images, False, source=self)

    def times(self, u: torch.Tensor) -> torch.Tensor:
        """S u for basis columns u (..., n, k), S the ridged second moments."""
        return self._through(u, self.source._ridged) if self.source is not None else self._ridged @ u.to(
            self._ridged.dtype)

    def solve(self, u: torch.Tensor) -> torch.Tensor:
        """S^-1 u for basis columns u (..., n, k)."""
        if self.source is not None:
            return self._through(u, torch.cholesky_inverse(self.source._chol))
        u = u.to(self._chol.dtype)
        return torch.cholesky_solve(u.expand(*torch.broadcast_shapes(u.shape[:-2], self._chol.shape[:-2]),
                                             *u.shape[-2:]), self._chol)

    def _through(self, u: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
        """Whole-image columns (1, 1, N, k) -> images -> per-frequency ``mats`` of the source view -> columns."""
        src = self.source.view
        images = u[0, 0].T.reshape(-1, *src.shape)
        return src.from_blocks(rows(src.to_blocks(images), mats)).flatten(1).T[None, None]


def ridged(cov: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """cov + a white floor: ``ridge`` times the mean variance over all blocks (a pixel-noise floor, not per block,
    so that low-variance frequencies cannot make the fill amplify small mismatches)."""
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).real.mean().clamp_min(1e-30)
    return cov + ridge * scale * torch.eye(cov.shape[-1], dtype=cov.dtype)


# ----------------------------------------------------------------------------------------- noise subspaces


def noise_directions(clean: torch.Tensor, samples: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised eigenpairs of (NTE, clean) second moments: eigenvalues (descending; ~1 where NTEs vary as clean
    images do, > 1 where noise adds variance) and matching noise directions u (columns, with u^H S^-1 u = I for the
    ridged clean moments S).

    ``samples`` (..., S, n): mean-free NTE patches or blocks as rows, from ``count`` images. Whitening by the clean
    moments weighs each direction by its clean variance, so noise shows as clearly in low-variance directions as
    the corpus allows. With fewer samples than n the eigenpairs come from the samples' Gram matrix instead (the
    directions lie in their span), which keeps a whole-image Linear layer cheap.
    """
    chol = torch.linalg.cholesky(ridged(clean))
    z = samples.transpose(-1, -2).to(chol.dtype)  # (..., n, S): one sample per column
    if z.shape[-1] >= z.shape[-2]:
        a = torch.linalg.solve_triangular(chol, z @ z.mH / count, upper=False)
        a = torch.linalg.solve_triangular(chol, a.mH, upper=False).mH
        lam, w = torch.linalg.eigh((a + a.mH) / 2)
        dirs = chol @ w
    else:
        lam, w = torch.linalg.eigh(z.mH @ torch.cholesky_solve(z, chol) / count)
        dirs = z @ w / (count * lam.clamp_min(1e-30)).sqrt()[..., None, :]
    return lam.flip(-1), dirs.flip(-1)


def gap_rank(lam: torch.Tensor) -> int:
    """The rank at the largest relative gap lam_r / lam_{r+1} among eigenvalues above the clean level 1.

    ``lam``: whitened eigenvalues, descending, (..., r); per-frequency spectra vote with their median rank.
    """
    lam = lam.reshape(-1, lam.shape[-1]).clamp_min(1e-12)
    ratio = (lam[:, :-1] / lam[:, 1:]).log()
    ratio = torch.where(lam[:, :-1] > 1, ratio, torch.zeros_like(ratio))  # only cut above the clean level
    best = torch.where(ratio.amax(-1) > 0, ratio.argmax(-1) + 1, torch.zeros_like(ratio[:, 0], dtype=torch.long))
    return max(int(best.median()), 1)


# ------------------------------------------------------------------------------------ projection and fill


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


# ----------------------------------------------------------------------------------- operators and borders


class Conv:
    """A strided, zero-padded convolution on float64 pixel images, its adjoint and its circular-padding twin."""

    def __init__(self, weight: torch.Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                 shape: tuple[int, ...]):
        self.weight, self.stride, self.padding, self.shape = weight.double(), tuple(stride), tuple(padding), shape
        out = self(torch.zeros(1, *shape, dtype=torch.float64)).shape[-2:]
        (kh, kw), (sh, sw), (ph, pw) = self.weight.shape[-2:], self.stride, self.padding
        self.extra = [shape[1] - ((out[0] - 1) * sh - 2 * ph + kh), shape[2] - ((out[1] - 1) * sw - 2 * pw + kw)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding)

    def circular(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.conv2d(F.pad(x, (pw, pw, ph, ph), mode="circular"), self.weight, None, self.stride)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y, self.weight, None, self.stride, self.padding, output_padding=self.extra)

    def windows(self) -> torch.Tensor:
        """(L, d): per output position, 1 + the index of each pixel its window reads (0 where it reads padding)."""
        ids = torch.arange(1, int(torch.tensor(self.shape).prod()) + 1, dtype=torch.float64)
        return F.unfold(ids.view(1, *self.shape), self.weight.shape[-2:], stride=self.stride,
                        padding=self.padding)[0].T.round().long()

    def matrix(self) -> torch.Tensor:
        """The dense matrix A (m * L, N) of the zero-padded convolution."""
        idx, w = self.windows(), self.weight.flatten(1)
        (m, d), n_out = w.shape, idx.shape[0]
        a = torch.zeros(m, n_out, int(torch.tensor(self.shape).prod()) + 1, dtype=torch.float64)
        a.index_put_((torch.arange(m)[:, None, None], torch.arange(n_out)[None, :, None], idx[None]),
                     w[:, None, :].expand(m, n_out, d), accumulate=True)
        return a[..., 1:].reshape(m * n_out, -1)

    def gram(self) -> torch.Tensor:
        """A^T A (N, N), summed window by window from W^T W."""
        idx, w = self.windows(), self.weight.flatten(1)
        size, (n_out, d) = int(torch.tensor(self.shape).prod()), idx.shape
        g = torch.zeros(size + 1, size + 1, dtype=torch.float64)
        g.index_put_((idx[:, :, None], idx[:, None, :]), (w.T @ w).expand(n_out, d, d), accumulate=True)
        return g[1:, 1:]


def operator_subspace(conv: Conv, view: View, prior: Prior, exact_border: bool) -> Subspace:
    """The null space of a convolution (rows = kernel directions of an m-row layer, m < C*sh*sw).

    ``exact_border`` and an image of at most ``DENSE_LIMIT`` pixels: the zero-padded layer's null space, exactly
    (the complement of its row space, in the whole-image view). Otherwise the circular one, per frequency.
    """
    c, h, w = view.shape
    if exact_border and c * h * w <= DENSE_LIMIT:
        visible = torch.linalg.qr(conv.matrix().T).Q
        return Subspace(whole_view(view.shape), prior.whole(), None, visible[None, None])
    blocks = polyphase_operator(conv.weight, conv.stride, conv.padding, view.grid)
    _, _, vh = torch.linalg.svd(blocks, full_matrices=True)
    return Subspace(view, prior, vh[..., blocks.shape[-2]:, :].mH, None)


def border_subspace(conv: Conv, sub: OperatorSubspace, view: View, prior: Prior) -> Subspace:
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
    rhs = conv.adjoint(conv(qi) - conv.circular(qi)).flatten(1).T
    hidden = torch.linalg.qr(q - torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))).Q
    visible = torch.linalg.qr(hidden, mode="complete").Q[:, k:] if 2 * k > size else None
    return Subspace(whole_view(shape), prior.whole(), hidden[None, None],
                    None if visible is None else visible[None, None])


# ------------------------------------------------------------------------------ a model's own subspace


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

    Patch view: the kernel's per-patch subspace (an overlapping stem in patch mode: on kernel tiles, approximate).
    Operator view: the encoder's per-frequency basis; with zero padding and ``border='correct'`` the noise lies in
    the border-corrected subspace, built exactly for images up to ``DENSE_LIMIT`` pixels (approximated by the
    circular subspace beyond).
    """
    enc = NTEEncoder(handle, mode=mode, select=select, border=border)
    f = handle.first
    if enc.mode == "patch":
        view = patch_view(handle.input_size, f.kernel)
        return Subspace(view, Prior(view, public), *patch_split(handle, enc.select))
    view = operator_view(handle.input_size, f.stride)
    prior = Prior(view, public, per_frequency=True)
    sub = enc.fit().subspace
    c, h, w = view.shape
    if border != "correct" or f.padding == (0, 0) or c * h * w > DENSE_LIMIT:
        return Subspace(view, prior, sub.basis.to(torch.complex128), None)
    conv = Conv(handle.pixel_operator(torch.float64).cpu().view_as(f.weight.cpu()), f.stride, f.padding, view.shape)
    if sub.exact and sub.dim == c * h * w - f.out_channels * view.tiles:  # null(A) of a surjective A
        return operator_subspace(conv, view, prior, exact_border=True)
    return border_subspace(conv, sub, view, prior)


# ------------------------------------------------------------------------------ estimates from NTEs


def estimate_subspace(settings: dict, public: torch.Tensor, ntes: torch.Tensor, rank: int | None) -> Subspace:
    """The NTE noise subspace estimated from the corpus against public clean images (method knowledge).

    - patch view (patchify or Linear layers, baselines): noise directions of the kernel tiles, pooled over tiles;
      ``rank`` per tile (None: the largest eigenvalue gap).
    - operator view, where the designated geometry has a null space per Fourier block (m < C*sh*sw): the noise
      lies in the null space of the layer, so the layer's row space is the m-dimensional complement of the noise in
      the patches the layer itself sees (its kernel, stride and padding; circular for ``border='check'``). It fits that
      m-row layer (m is public; ``rank``, if given, is the noise dimension per unfolded patch instead) and uses its
      null space: exact at a zero-padded border.
    - operator view otherwise: noise directions per Fourier block (circular), ``rank`` per block.
    """
    first, shape = settings["first_layer"], tuple(settings["input_size"])
    params = settings.get("params", {})
    c = shape[0]
    (kh, kw), (sh, sw) = first["kernel"], first["stride"]
    if settings.get("view") != "operator":
        view = patch_view(shape, (kh, kw))
        prior = Prior(view, public)
        lam, dirs = noise_directions(prior.tile_cov, view.patches(ntes - prior.mean)[None, None], ntes.shape[0])
        hidden = torch.linalg.qr(dirs[..., :rank or gap_rank(lam)]).Q
        return Subspace(view, prior, hidden, None, lam)
    view = operator_view(shape, (sh, sw))
    prior = Prior(view, public, per_frequency=True)
    if first["out_channels"] < c * sh * sw:
        (ph, pw), exact = first["padding"], params.get("border", "correct") == "correct"

        def unfold(x: torch.Tensor) -> torch.Tensor:  # the windows the layer sees (circularly padded: 'check')
            x = x if exact else F.pad(x, (pw, pw, ph, ph), mode="circular")
            windows = F.unfold(x, (kh, kw), stride=(sh, sw), padding=(ph, pw) if exact else 0)
            return windows.transpose(1, 2).reshape(-1, c * kh * kw)

        lam, dirs = noise_directions(patch_moments(unfold, public, prior.mean), unfold(ntes - prior.mean)[None, None],
                                     ntes.shape[0])
        d = c * kh * kw
        k = min(max(rank or d - first["out_channels"], d - c * sh * sw + 1), d - 1)
        kernel_rows = torch.linalg.qr(dirs[0, 0, :, :k], mode="complete").Q[:, k:]  # the fitted layer (columns)
        conv = Conv(kernel_rows.T.reshape(-1, c, kh, kw), (sh, sw), tuple(first["padding"]), shape)
        out = operator_subspace(conv, view, prior, exact and (ph, pw) != (0, 0))
        out.eigenvalues = lam
        return out
    z = view.to_blocks(ntes.to(prior.mean) - prior.mean)
    lam, dirs = noise_directions(prior.cov, z, ntes.shape[0])
    hidden = torch.linalg.qr(dirs[..., :rank or gap_rank(lam)]).Q
    return Subspace(view, prior, hidden, None, lam)
