"""Knowledge 'none': classical blind denoisers (scikit-image; BM3D through the optional ``bm3d`` package).

Values outside [0, 1]: every denoiser here acts on the released values as they are, without clipping or rescaling,
so that an unboxed NTE is denoised, not first truncated (chain with ``jpeg`` or ``bit_depth`` for a clipped version).
TV, non-local means, wavelet shrinkage and BM3D accept any real values; the bilateral filter needs non-negative
input, so each image is shifted by a constant to be non-negative and shifted back (the filter is shift-equivariant,
so this does not change the result). Noise levels that are not given are estimated per image with
``estimate_noise_sigma``. Images are denoised one at a time, channels last (``channel_axis``).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from nte_eval.attacks.base import Attack
from nte_eval.errors import NTEError

Sigma = Annotated[float | None, Field(gt=0, le=10)]


def estimate_noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per-image white-noise std (B,): median absolute finest diagonal Haar coefficient / 0.6745 (Donoho's MAD
    estimator), averaged over channels. Robust to image content, cheap, batched."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    if h == 0 or w == 0:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2  # orthonormal
    return (hh.abs().flatten(2).median(dim=2).values / 0.6745).mean(dim=1)


def _require(module: str, package: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise NTEError(f"{why} needs the optional package {package!r}: pip install {package}") from None


class _Denoiser(Attack):
    """Runs ``denoise`` on each image of the batch as a float64 (H, W, C) array (or (H, W) for one channel)."""

    @abstractmethod
    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        """Denoise one image; ``sigma`` is the estimated noise std of that image."""

    def run(self, x: torch.Tensor) -> torch.Tensor:
        sigmas = estimate_noise_sigma(x.detach().double()).cpu().tolist()
        arr = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
        one = arr.shape[3] == 1
        out = np.stack([self.denoise(img[:, :, 0] if one else img, None if one else -1, max(s, 1e-6))
                        for img, s in zip(arr, sigmas, strict=True)])
        out = torch.from_numpy(out.reshape(arr.shape)).permute(0, 3, 1, 2)
        return out.to(x.device, x.dtype).contiguous()


class TVChambolle(_Denoiser):
    """Total-variation denoising (Chambolle's algorithm, scikit-image); larger ``weight`` smooths more."""

    name = "tv_chambolle"
    knowledge = "none"
    strength = ("weight", 1)
    weight: Annotated[float, Field(gt=0, le=10)] = 0.1

    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        from skimage.restoration import denoise_tv_chambolle

        return denoise_tv_chambolle(img, weight=self.weight, channel_axis=channel_axis)


class NLMeans(_Denoiser):
    """Non-local means (scikit-image, fast mode); ``h`` defaults to 0.6x the estimated noise std per image."""

    name = "nl_means"
    knowledge = "none"
    strength = ("h", 1)
    h: Sigma = None
    patch_size: Annotated[int, Field(ge=1, le=15)] = 5
    patch_distance: Annotated[int, Field(ge=1, le=21)] = 6

    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        h = self.h if self.h is not None else 0.6 * sigma  # scikit-image's rule of thumb with sigma given
        return denoise_nl_means(img, h=h, sigma=sigma, patch_size=self.patch_size,
                                patch_distance=self.patch_distance, fast_mode=True, channel_axis=channel_axis)


class Wavelet(_Denoiser):
    """Wavelet shrinkage (scikit-image; needs PyWavelets); ``sigma`` None estimates the noise per image."""

    name = "wavelet"
    knowledge = "none"
    strength = ("sigma", 1)
    sigma: Sigma = None
    method: Literal["BayesShrink", "VisuShrink"] = "BayesShrink"
    mode: Literal["soft", "hard"] = "soft"
    wavelet: str = "db1"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _require("pywt", "PyWavelets", "attack 'wavelet'")
        import pywt

        if self.wavelet not in pywt.wavelist(kind="discrete"):
            raise NTEError(f"attack 'wavelet': unknown wavelet {self.wavelet!r}; use a discrete PyWavelets name "
                           f"such as 'db1', 'db2', 'sym4', 'coif1' (pywt.wavelist(kind='discrete')).")

    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        from skimage.restoration import denoise_wavelet

        return denoise_wavelet(img, sigma=self.sigma, wavelet=self.wavelet, mode=self.mode, method=self.method,
                               channel_axis=channel_axis)


class Bilateral(_Denoiser):
    """Bilateral filter (scikit-image): averages neighbours within ``sigma_spatial`` px and ``sigma_color`` value."""

    name = "bilateral"
    knowledge = "none"
    strength = ("sigma_color", 1)
    sigma_color: Annotated[float, Field(gt=0, le=10)] = 0.1
    sigma_spatial: Annotated[float, Field(gt=0, le=50)] = 1.0

    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        from skimage.restoration import denoise_bilateral

        lo = min(float(img.min()), 0.0)  # the filter needs non-negative values; it is shift-equivariant
        out = denoise_bilateral(img - lo, sigma_color=self.sigma_color, sigma_spatial=self.sigma_spatial,
                                mode="reflect", channel_axis=channel_axis)
        return out + lo


class BM3D(_Denoiser):
    """BM3D (optional ``bm3d`` package, non-commercial licence; CBM3D for RGB); ``sigma`` None estimates it."""

    name = "bm3d"
    knowledge = "none"
    strength = ("sigma", 1)
    sigma: Sigma = None
    profile: Literal["np", "refilter", "vn", "high"] = "np"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _require("bm3d", "bm3d", "attack 'bm3d' (non-commercial licence, an optional extra)")

    def denoise(self, img: np.ndarray, channel_axis: int | None, sigma: float) -> np.ndarray:
        import bm3d

        s = self.sigma if self.sigma is not None else sigma
        if img.ndim == 3 and img.shape[2] == 3:
            return bm3d.bm3d_rgb(img, s, profile=self.profile)
        return bm3d.bm3d(img, s, profile=self.profile)
