"""Estimating the NTE noise subspace from statistics (method knowledge): the directions in which the released NTEs
vary more than public clean images do, and the subspace a blind attacker removes or fills."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nte_eval.attacks.subspace.fill import Subspace
from nte_eval.attacks.subspace.model import operator_subspace
from nte_eval.attacks.subspace.prior import Prior, patch_moments, ridged
from nte_eval.attacks.subspace.view import operator_view, patch_view
from nte_eval.geometry.conv import PixelConv


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
        conv = PixelConv.on_pixels(kernel_rows.T.reshape(-1, c, kh, kw), (sh, sw), first["padding"], shape)
        out = operator_subspace(conv, view, prior, exact and (ph, pw) != (0, 0))
        out.eigenvalues = lam
        return out
    z = view.to_blocks(ntes.to(prior.mean) - prior.mean)
    lam, dirs = noise_directions(prior.cov, z, ntes.shape[0])
    hidden = torch.linalg.qr(dirs[..., :rank or gap_rank(lam)]).Q
    return Subspace(view, prior, hidden, None, lam)
