"""Degradation geometry between a designated model D's NTE subspace S and another model B's first layer.

Every operator is a first layer in pixel space (its linear part W D^-1, normalisation included) acting on images in
R^n, n = C*H*W. With circular padding a stride-s convolution is block-diagonal in the Fourier domain after a polyphase
split (``nte_eval.geometry.conv.polyphase_operator``); a Linear first layer is the convolution whose kernel and stride
are the whole image (a single block). Two layers are compared at their common period s = lcm(s_D, s_B) per axis: each
model's right singular vectors at its own period are re-blocked to period s (exact, no new SVD). The polyphase DFT is
unitary up to one constant factor, so principal angles, Frobenius norms and traces of the image-space operators are
sums over the blocks of the rfft half, each block counted once (self-conjugate column) or twice (with its conjugate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nte_eval.encoders.nte import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.geometry.conv import PixelConv, full_spectrum_count, polyphase_operator, rfft_column_weights
from nte_eval.geometry.subspace import natural_view
from nte_eval.models.handle import ModelHandle

GEOMETRY_KEYS = ("period", "n", "k", "r", "angles_deg", "angle_min", "angle_median", "angle_mean", "angle_max",
                 "sum_cos2", "sigma_r", "energy_circular", "energy_isotropic", "lower_bound", "misalignment",
                 "abs_distance", "spectral_distance", "reason")


@dataclass(frozen=True)
class Spectrum:
    """Right singular values and vectors of a circular first layer per polyphase Fourier block (rfft half)."""

    sigma: torch.Tensor  # (gh, gw//2+1, n_s) float64: one value per right singular vector (zeros padded)
    v: torch.Tensor  # (gh, gw//2+1, n_s, n_s) complex128: columns are right singular vectors, in (C, sh, sw) order
    period: tuple[int, int]
    grid: tuple[int, int]

    @property
    def weights(self) -> torch.Tensor:
        """Multiplicity of each rfft column in the full spectrum: 1 if self-conjugate, else 2 (with its conjugate)."""
        return rfft_column_weights(self.grid[1])


def model_spectrum(handle: ModelHandle, period: tuple[int, int] | None = None) -> Spectrum:
    """The circular first layer's spectrum at ``period`` (default: its own stride), e.g. for plots and comparisons."""
    spec = _own_spectrum(handle, natural_view(handle.first))
    if period is None:
        return spec
    _, h, w = handle.input_size
    if period[0] % spec.period[0] or period[1] % spec.period[1] or h % period[0] or w % period[1]:
        raise NTEError(f"{handle.spec}: period {tuple(period)} must be a multiple of the stride {spec.period} and "
                       f"divide the image {h}x{w}.")
    return _reblock(spec, tuple(period))[0]


def principal_angles(va: torch.Tensor, sel_a: torch.Tensor, vb: torch.Tensor, sel_b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between span(va[:, sel_a]) and span(vb[:, sel_b]) for unitary va, vb.

    The algorithm of ``scipy.linalg.subspace_angles`` (cosines from svdvals(A^H B), sines of the small angles from the
    residual) without its re-orthonormalisation; when a complement is smaller, the sines come from it instead
    (svdvals(B_perp^H A) for dim A <= dim B, svdvals(A_perp^H B) otherwise), which is exact for small angles and far
    cheaper when one subspace fills most of the space.
    """
    k, r, n = int(sel_a.sum()), int(sel_b.sum()), va.shape[0]
    count = min(k, r)
    if count == 0:
        return torch.zeros(0, dtype=torch.float64)
    complement = (n - r) * k if k <= r else (n - k) * r
    if complement < k * r:
        pair = (vb[:, ~sel_b], va[:, sel_a]) if k <= r else (va[:, ~sel_a], vb[:, sel_b])
        sines = torch.linalg.svdvals(pair[0].mH @ pair[1]) if pair[0].shape[1] else torch.zeros(0, dtype=torch.float64)
        sines = torch.cat([sines, torch.zeros(count - len(sines), dtype=torch.float64)])
        return torch.arcsin(sines.clamp(max=1.0)).sort().values
    a, b = va[:, sel_a], vb[:, sel_b]
    g = a.mH @ b
    cosines = torch.linalg.svdvals(g)  # descending: angles ascending
    angles = torch.arccos(cosines.clamp(max=1.0))
    small = cosines.square() >= 0.5
    if small.any():
        residual = b - a @ g if k >= r else a - b @ g.mH
        sines = torch.linalg.svdvals(residual).flip(0)  # ascending, as the angles
        angles = torch.where(small, torch.arcsin(sines.clamp(max=1.0)), angles)
    return angles


def pair_geometry(encoder: NTEEncoder, other: ModelHandle, tau: float = 0.01) -> dict[str, Any]:
    """Principal angles, circular response energy and spectral misalignment between the encoder's subspace S (of the
    designated model D) and the first layer of ``other`` (B), both circular, at their common period.

    S is the circular view of the encoder's subspace: the per-patch basis at every frequency (patch mode, layer tiling
    the image) or the masked Fourier blocks (operator mode; the zero-padding border correction is ignored here, see
    ``predicted_energy`` for the actual noise). R is B's sensitive subspace, its right singular vectors with sigma >
    ``tau``. Returns period, n, k = dim S, r = dim R, ``angles_deg`` (all min(k, r) principal angles, ascending: the
    per-block ones plus 90 degrees for the rest) and their min/median/mean/max, ``sum_cos2``, ``sigma_r`` (smallest
    sigma in R), ``energy_circular`` = ||A_B V_S||_F^2 / k (E||A_B d||^2 / ||d||^2 for d isotropic in S),
    ``energy_isotropic`` = ||A_B||_F^2 / n (the same for white noise), ``lower_bound`` = sigma_r^2 sum_cos2 / k
    (<= energy_circular), and the Hoffman-Wielandt scores of X = A_D / ||A_D||_F, Y = A_B / ||A_B||_F:
    ``abs_distance`` = || |X| - |Y| ||_F^2, ``spectral_distance`` = sum_k (sigma_k(X) - sigma_k(Y))^2 (sorted, zeros
    padded to n) and ``misalignment`` = their difference (>= 0; 0 iff the layers share right singular vectors in the
    same order). When the common period does not divide the image, every geometry field is None and ``reason`` says
    why.
    """
    d_spec, d_mask = _designated(encoder)
    handle = encoder.handle
    if tuple(other.input_size) != tuple(handle.input_size):
        raise NTEError(f"{other.spec}: input size {other.input_size} differs from the designated model's "
                       f"{handle.input_size}.")
    c, h, w = handle.input_size
    period = (math.lcm(d_spec.period[0], other.first.stride[0]), math.lcm(d_spec.period[1], other.first.stride[1]))
    out: dict[str, Any] = {**dict.fromkeys(GEOMETRY_KEYS), "period": list(period), "n": c * h * w}
    if h % period[0] or w % period[1]:
        out["reason"] = (f"the common period {period[0]}x{period[1]} of the two first layers does not divide the "
                         f"image {h}x{w}: they are not jointly block-diagonal under circular padding")
        return out
    d, mask = _reblock(d_spec, period, d_mask)
    b = _reblock(_own_spectrum(other, natural_view(other.first)), period)[0]
    weights = d.weights
    angles, energy, trace, sigma_r = [], 0.0, 0.0, math.inf
    for i in range(d.grid[0]):
        for j in range(len(weights)):
            a, e, t, s = _block_terms(d.v[i, j], d.sigma[i, j], mask[i, j], b.v[i, j], b.sigma[i, j], tau)
            wt = int(weights[j])
            angles.append(a.repeat(wt))
            energy, trace, sigma_r = energy + wt * e, trace + wt * t, min(sigma_r, s)
    k = int(full_spectrum_count(mask, d.grid[1]))
    r = int(full_spectrum_count(b.sigma > tau, d.grid[1]))
    theta = torch.cat(angles)
    theta = torch.cat([theta, torch.full((min(k, r) - len(theta),), math.pi / 2, dtype=torch.float64)]).sort().values
    deg = np.degrees(theta.numpy())
    sum_cos2 = float(torch.cos(theta).square().sum())
    sigma_r = sigma_r if r else 0.0
    norm_d, norm_b = _frobenius(d), _frobenius(b)
    aligned = float(_full_multiset(d.sigma, weights).sort().values @ _full_multiset(b.sigma, weights).sort().values)
    scale = norm_d * norm_b
    out.update(k=k, r=r, angles_deg=deg, sum_cos2=sum_cos2, sigma_r=sigma_r, energy_circular=energy / k,
               energy_isotropic=norm_b**2 / (c * h * w), lower_bound=sigma_r**2 * sum_cos2 / k,
               misalignment=2 * (aligned - trace) / scale, abs_distance=2 - 2 * trace / scale,
               spectral_distance=2 - 2 * aligned / scale)
    if len(deg):
        out.update(angle_min=float(deg[0]), angle_median=float(np.median(deg)), angle_mean=float(deg.mean()),
                   angle_max=float(deg[-1]))
    return out


def predicted_energy(encoder: NTEEncoder, others: dict[str, ModelHandle], batch: int = 256) -> dict[str, float]:
    """E||A_B d||^2 / E||d||^2 per model B in ``others`` for the encoder's actual noise d (before scaling, box and
    quantisation; zero-padded B, border correction included), plus ``k_eff``.

    The noise is a linear map N of white normals xi (operator mode: ``subspace.sample``, including its border
    correction; patch mode: the per-patch basis tiled over the image), so both expectations are exact Frobenius norms
    ||A_B N||_F^2 and ||N||_F^2, summed over N's p input coordinates. For noise isotropic in S (N = M V_S up to
    scale, M = ``encoder.project``) this is ||A_B M||_F^2 / ||M||_F^2, and ||A_B V_S||_F^2 / k when M is the orthogonal
    projector (patch mode; operator mode without padding). ``k_eff`` = ||N||_F^4 / ||N^T N||_F^2 is the noise's
    effective dimension (k for isotropic noise in a k-dim subspace). Cost: p noise-map evaluations instead of n
    projections (patch: p = k; operator: p = 2 * rfft blocks * max directions per block, about k (gw + 2) / gw, each
    with its CGLS border correction), each followed by every B's convolution; plus a p x p Gram in operator mode.
    """
    if "k_eff" in others:
        raise NTEError("predicted_energy: 'k_eff' is a reserved key; rename that model.")
    _check_noise(encoder)  # the same noise models as pair_geometry
    ops = {name: PixelConv(h) for name, h in others.items()}
    num, den, columns = dict.fromkeys(others, 0.0), 0.0, []
    for delta in _noise_columns(encoder, batch):
        y = delta.to(torch.float64)
        den += float(y.square().sum())
        for name, op in ops.items():
            num[name] += float(op.apply(y).square().sum())
        if encoder.mode == "operator":
            columns.append(y.flatten(1))
    if columns:
        ys = torch.cat(columns)
        gram = ys @ ys.T if ys.shape[0] <= ys.shape[1] else ys.T @ ys
        k_eff = den**2 / float(gram.square().sum())
    else:  # patch mode: the probes are orthonormal (disjoint patches, orthonormal basis)
        k_eff = den
    return {**{name: v / den for name, v in num.items()}, "k_eff": k_eff}


# ------------------------------------------------------------------------------------------------ internals


def _own_spectrum(handle: ModelHandle, view: str) -> Spectrum:
    """The circular first layer's spectrum at its own stride, computed as its NTE subspace class does (cached in
    the handle's memo, which moving the model clears)."""
    f, key = handle.first, ("spectrum", view)
    if key in handle.memo:
        return handle.memo[key]
    c, h, w = handle.input_size
    if h % f.stride[0] or w % f.stride[1]:
        raise NTEError(f"{handle.spec}: the stride {f.stride} does not divide the image {h}x{w}.")
    grid = (h // f.stride[0], w // f.stride[1])
    pixel = handle.pixel_operator(torch.float64).cpu()
    if view == "patch":  # as PatchSubspace: every block is the patch matrix
        _, s, vh = torch.linalg.svd(pixel, full_matrices=True)
        shape = (grid[0], grid[1] // 2 + 1)
        s, vh = s.expand(*shape, -1), vh.to(torch.complex128).expand(*shape, -1, -1)
    else:  # as OperatorSubspace
        blocks = polyphase_operator(pixel.view_as(f.weight.cpu()), f.stride, f.padding, grid)
        _, s, vh = torch.linalg.svd(blocks, full_matrices=True)
    n = vh.shape[-1]
    sigma = torch.cat([s, s.new_zeros(*s.shape[:-1], n - s.shape[-1])], dim=-1)
    spec = Spectrum(sigma, vh.mH, tuple(f.stride), grid)
    handle.memo[key] = spec
    return spec


def _check_noise(encoder: NTEEncoder) -> None:
    """Fit the encoder; NTEError unless its noise lives in a shift-invariant subspace (operator mode, or per-patch
    noise on non-overlapping patches that tile the image)."""
    encoder.fit()
    f, (_, h, w) = encoder.handle.first, encoder.handle.input_size
    if encoder.mode == "patch" and (encoder.noise != "per_patch" or not f.non_overlapping or h % f.kernel[0]
                                    or w % f.kernel[1]):
        raise NTEError(f"{encoder.handle.spec}: patch-mode noise ({encoder.noise}) is only supported on "
                       "non-overlapping patches tiling the image with per-patch noise (otherwise it is not isotropic "
                       "noise in a shift-invariant subspace); use mode='operator'.")


def _designated(encoder: NTEEncoder) -> tuple[Spectrum, torch.Tensor]:
    """D's own spectrum (computed as its subspace was) and the encoder's subspace mask on it."""
    _check_noise(encoder)
    spec = _own_spectrum(encoder.handle, encoder.mode)
    mask = encoder.subspace.mask
    return spec, mask if encoder.mode == "operator" else mask.expand(spec.sigma.shape)


def _reblock(spec: Spectrum, period: tuple[int, int],
             mask: torch.Tensor | None = None) -> tuple[Spectrum, torch.Tensor | None]:
    """The same spectrum (and subspace mask) at a multiple ``period`` of its own.

    A vector b at own frequency w' is the image pattern b exp(+2 pi i w'.q / G) over own tiles q (``polyphase_rfft``
    convention). With t = period / own period, tile q = Q t + u, so at the coarser period it sits at w = w' mod g
    (g = G / t) with entries b exp(2 pi i w'.u / G) / sqrt(t_h t_w) at sub-tile offset u. The t_h t_w own frequencies
    w + g j land in the same block: columns ordered (j_h, j_w, own column).
    """
    th, tw = period[0] // spec.period[0], period[1] // spec.period[1]
    if (th, tw) == (1, 1):
        return spec, mask
    (big_h, big_w), (sh, sw) = spec.grid, spec.period
    gh, gw = big_h // th, big_w // tw
    fh = torch.arange(gh)[:, None] + gh * torch.arange(th)  # (gh, th): own frequencies along h
    fw = torch.arange(gw // 2 + 1)[:, None] + gw * torch.arange(tw)  # (gw', tw)
    conj = (fw > big_w // 2)[None, :, None, :].expand(gh, -1, th, -1)  # stored as the conjugate of -w'
    ih = torch.where(conj, (-fh % big_h)[:, None, :, None], fh[:, None, :, None])
    iw = torch.where(conj, big_w - fw[None, :, None, :], fw[None, :, None, :])
    v = spec.v[ih, iw]
    v = torch.where(conj[..., None, None], v.conj(), v)  # (gh, gw', th, tw, n, n)
    n = v.shape[-1]
    ph = torch.exp(2j * math.pi * fh[:, :, None].double() * torch.arange(th) / big_h)  # (gh, j, u)
    pw = torch.exp(2j * math.pi * fw[:, :, None].double() * torch.arange(tw) / big_w)  # (gw', j, u)
    v = v.reshape(*v.shape[:4], n // (sh * sw), sh, sw, n)
    out = torch.einsum("hwjkcabn,hju,wkv->hwcuavbjkn", v, ph, pw) / math.sqrt(th * tw)
    size = n * th * tw
    sigma = spec.sigma[ih, iw].reshape(gh, gw // 2 + 1, size)
    new_mask = None if mask is None else mask[ih, iw].reshape(gh, gw // 2 + 1, size)
    return Spectrum(sigma, out.reshape(gh, gw // 2 + 1, size, size), period, (gh, gw)), new_mask


def _block_terms(vd: torch.Tensor, sd: torch.Tensor, sel: torch.Tensor, vb: torch.Tensor, sb: torch.Tensor,
                 tau: float) -> tuple[torch.Tensor, float, float, float]:
    """One Fourier block: principal angles between S and R, ||M_B S||_F^2, tr(|M_D| |M_B|) and min sigma_B in R.

    Only the needed sub-blocks of the cross Gram G = V_D^H V_B are formed (V_D unitary: for a large S, ||M_B S||_F^2 =
    ||M_B||_F^2 - ||M_B S_perp||_F^2); tr(|M_D| |M_B|) = sum_ij sigma_D,i sigma_B,j |G_ij|^2.
    """
    nzb, nzd, rsel = sb > 0, sd > 0, sb > tau
    vbn, sb2 = vb[:, nzb], sb[nzb].square()
    grams: dict[bytes, torch.Tensor] = {}

    def sq_gram(rows: torch.Tensor) -> torch.Tensor:
        key = rows.numpy().tobytes()
        if key not in grams:
            grams[key] = (vd[:, rows].mH @ vbn).abs().square()
        return grams[key]

    if 2 * int(sel.sum()) <= sel.numel():
        energy = float((sq_gram(sel) @ sb2).sum())
    else:
        energy = float(sb2.sum() - (sq_gram(~sel) @ sb2).sum())
    trace = float(sd[nzd] @ sq_gram(nzd) @ sb[nzb])
    sigma_r = float(sb[rsel].min()) if rsel.any() else math.inf
    return principal_angles(vd, sel, vb, rsel), energy, trace, sigma_r


def _frobenius(spec: Spectrum) -> float:
    """||A||_F of the image-space circular operator: sqrt of the sum of sigma^2 over the full spectrum."""
    return math.sqrt(float((spec.sigma.square().sum(dim=(0, 2)) * spec.weights).sum()))


def _full_multiset(sigma: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-block values over the full spectrum: each rfft column repeated by its multiplicity, flattened."""
    return sigma.repeat_interleave(weights.long(), dim=1).flatten()


def _noise_columns(encoder: NTEEncoder, batch: int) -> Iterator[torch.Tensor]:
    """The encoder's noise map applied to the unit vectors of its white input, ``batch`` at a time (images).

    Operator mode: ``subspace.sample``, whose border correction (``whole_border`` for a small image, else
    ``correct_border``) is applied only to the coordinates with a nonzero circular image (imaginary parts on real
    frequencies and padded directions map to zero; by linearity they stay zero, and CGLS would turn an all-zero
    float32 sample into NaN).
    """
    sub, (c, h, w) = encoder.subspace, encoder.handle.input_size
    if encoder.mode == "operator":
        shape = sub.coefficient_shape
        p = math.prod(shape)
        dense = sub.whole_border() if encoder.border == "correct" else None  # thousands of columns: one solve
        for start in range(0, p, batch):
            idx = torch.arange(start, min(start + batch, p))
            z = torch.zeros(len(idx), p)
            z[torch.arange(len(idx)), idx] = 1.0
            d = sub.sample(z.view(-1, *shape), "check")
            d = d[d.flatten(1).abs().amax(1) > 0]
            if dense is not None:
                d = d.double()
                x = d.clone()
                dense.refine_(x, d)
                yield x
            else:
                yield sub.correct_border(d) if encoder.border == "correct" and len(d) else d
        return
    (kh, kw), basis = encoder.handle.first.kernel, sub.basis64
    d, k = basis.shape
    tiles = (h // kh) * (w // kw)
    for start in range(0, tiles * k, batch):
        idx = torch.arange(start, min(start + batch, tiles * k))
        patches = torch.zeros(len(idx), tiles, d, dtype=torch.float64)
        patches[torch.arange(len(idx)), idx // k] = basis[:, idx % k].T
        yield patches.view(-1, h // kh, w // kw, c, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)
