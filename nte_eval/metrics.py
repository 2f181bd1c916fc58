"""Per-sample metrics. PSNR is pixel-space PSNR with peak 1 on [0, 1] images (= 8-bit PSNR with peak 255)."""

from __future__ import annotations

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel difference per sample."""
    return torch.linalg.vector_norm((a - b).flatten(1), dim=1).double() ** 2 / a[0].numel()


def psnr_from_mse(err: torch.Tensor) -> torch.Tensor:
    """Pixel-space PSNR in dB (peak 1) from a per-sample mean squared error."""
    return -10 * torch.log10(err.clamp_min(1e-30))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-space PSNR in dB per sample, peak 1."""
    return psnr_from_mse(mse(a, b))


def noise_norm_for_psnr(psnr_db: float, numel: int) -> float:
    """L2 norm of a perturbation of ``numel`` pixels whose pixel-space PSNR (peak 1) is ``psnr_db``."""
    return (numel * 10 ** (-psnr_db / 10)) ** 0.5


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| / ||old|| per sample."""
    return (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-30)
