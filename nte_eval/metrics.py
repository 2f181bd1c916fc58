"""Per-sample metrics. PSNR is pixel-space PSNR with peak 1 on [0, 1] images (= 8-bit PSNR with peak 255); SSIM is
scikit-image's ``structural_similarity`` (its defaults, data range 1), computed batched in torch."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from scipy.stats import binomtest

SSIM_WINDOW = 7  # scikit-image's default: uniform 7x7 windows, sample covariances, K1 = 0.01, K2 = 0.03


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel difference per sample."""
    return torch.linalg.vector_norm((a - b).flatten(1), dim=1).double() ** 2 / a[0].numel()


def psnr_from_mse(err: torch.Tensor) -> torch.Tensor:
    """Pixel-space PSNR in dB (peak 1) from a per-sample mean squared error."""
    return -10 * torch.log10(err.clamp_min(1e-30))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixel-space PSNR in dB per sample, peak 1."""
    return psnr_from_mse(mse(a, b))


def ssim(a: torch.Tensor, b: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """SSIM per sample of (B, C, H, W) images, as scikit-image computes it with data range 1 (the mean over channels
    and whole 7x7 windows): a perceptual measure beside PSNR, which weighs all pixel errors alike. ``chunk`` images
    at a time (float64 intermediates that stay in cache: twice as fast at 224 px as the whole batch at once)."""
    if len(a) > chunk:
        return torch.cat([ssim(a[i:i + chunk], b[i:i + chunk], chunk) for i in range(0, len(a), chunk)])
    x, y = a.double(), b.double()
    win = min(SSIM_WINDOW, *x.shape[-2:]) // 2 * 2 + 1 if min(x.shape[-2:]) > 1 else 1

    def mean(t: torch.Tensor) -> torch.Tensor:  # the window mean, over whole windows only (separable)
        return F.avg_pool2d(F.avg_pool2d(t, (win, 1), stride=1), (1, win), stride=1)

    ux, uy = mean(x), mean(y)
    norm = win * win / (win * win - 1) if win > 1 else 1.0
    vx, vy, vxy = norm * (mean(x * x) - ux * ux), norm * (mean(y * y) - uy * uy), norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def noise_norm_for_psnr(psnr_db: float, numel: int) -> float:
    """L2 norm of a perturbation of ``numel`` pixels whose pixel-space PSNR (peak 1) is ``psnr_db``."""
    return (numel * 10 ** (-psnr_db / 10)) ** 0.5


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| / ||old|| per sample."""
    return (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-30)


def proportion_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) ``level`` confidence interval of the proportion ``correct / n``: how sure an
    accuracy measured on n samples is (about +-7 points at 50% on 200)."""
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


@functools.lru_cache(maxsize=65536)
def _interval(correct: int, n: int) -> tuple[float, float]:
    return proportion_interval(correct, n)


def share_intervals(values: Iterable[float], ns: Iterable[int]) -> tuple[list[float], list[float]]:
    """The exact 95% intervals of proportions ``values`` of ``ns`` samples each, as (lows, highs): one binomial test
    per distinct (correct, n), not per row (a results table repeats them thousands of times)."""
    bounds = [_interval(round(v * n), int(n)) for v, n in zip(values, ns, strict=True)]
    return [lo for lo, _ in bounds], [hi for _, hi in bounds]


def widest_half_width(n: int) -> float:
    """Half the width, in points, of the widest exact 95% interval an accuracy over ``n`` samples can have (at 50%):
    what a table or heatmap without per-figure intervals says about all of them."""
    if n <= 0:
        return float("nan")
    low, high = proportion_interval(n // 2, n)
    return 50 * (high - low)


def deciding_n(value: float, threshold: float, n: int, limit: int = 10**7) -> int | None:
    """About the smallest sample count at which a proportion ``value`` would have a 95% interval wholly on one side
    of ``threshold`` (what an inconclusive verdict needs); None when no count up to ``limit`` would (a value at the
    threshold)."""
    if abs(value - threshold) < 1e-12:
        return None

    def decided(m: int) -> bool:
        low, high = proportion_interval(round(value * m), m)
        return high < threshold if value < threshold else low > threshold

    low, high = max(int(n), 1), max(int(n), 1)
    while not decided(high):
        low, high = high, 2 * high
        if high > limit:
            return None
    while high - low > max(1, low // 100):  # to about 1%
        mid = (low + high) // 2
        low, high = (low, mid) if decided(mid) else (mid, high)
    return high


def mcnemar_exact(first: list[bool], second: list[bool]) -> float:
    """McNemar's exact test (two-sided p) that two paired classifications of the same samples are equally often
    right: a binomial test on the discordant pairs; 1.0 when there are none."""
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
