"""Knowledge 'none': common preprocessing (the reference's JPEG, resize, occlusion, illumination) and more.

Released images may lie outside [0, 1] (unboxed NTEs). Attacks that must produce a storable 8-bit or b-bit image
(``jpeg``, ``bit_depth``) offer ``scale``: ``"clip"`` clips to [0, 1] first (what saving the image as a file does),
``"minmax"`` maps each image's own [min, max] to [0, 1] (the reference code's JPEG) and maps the result back, so that
only the quantisation / compression loss remains. The other attacks act on the values as they are and never clip,
except ``illumination`` with ``clip=True``.
"""

from __future__ import annotations

import io
import math
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from nte_eval.attacks.base import Attack, image_generators
from nte_eval.errors import NTEError

Interpolation = Literal["bilinear", "bicubic", "nearest", "area"]
Scale = Literal["clip", "minmax"]
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance weights (as Pillow's "L" conversion)


def _odd(v: int) -> int:
    if v % 2 == 0:
        raise ValueError(f"must be odd (a window centred on the pixel), got {v}")
    return v


class Identity(Attack):
    """No reconstruction: the released images as they are."""

    name = "identity"
    knowledge = "none"
    modalities = ("image", "text")

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return x


def to_unit(x: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map images into [0, 1] ('clip' or per-image 'minmax'); returns (u, lo, span) so that x ≈ lo + span * u."""
    if scale == "clip":
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return x.clamp(0, 1), one * 0, one
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
    span = torch.where(span > 0, span, torch.ones_like(span))  # a constant image maps to 0
    return (x - lo) / span, lo, span


def resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """``F.interpolate`` with the options each mode accepts (antialias only for bilinear/bicubic)."""
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    return F.interpolate(x, size=size, mode=mode)


class Jpeg(Attack):
    """JPEG compression at a given quality (Pillow, 8-bit, per image; scale: clip or per-image min-max)."""

    name = "jpeg"
    knowledge = "none"
    strength = ("quality", -1)
    quality: Annotated[int, Field(ge=1, le=100)] = 75
    scale: Scale = "clip"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        u, lo, span = to_unit(x.detach().float(), self.scale)
        arr = (u * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(arr)
        for i, img in enumerate(arr):
            # RGB: one colour JPEG (Pillow's default 4:2:0 chroma subsampling); other channel counts: each channel
            # as its own greyscale JPEG.
            planes = [img] if img.shape[2] == 3 else [img[:, :, c] for c in range(img.shape[2])]
            decoded = []
            for plane in planes:
                buf = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="JPEG", quality=self.quality)
                buf.seek(0)
                with Image.open(buf) as im:
                    decoded.append(np.asarray(im))
            out[i] = decoded[0] if img.shape[2] == 3 else np.stack(decoded, axis=2)
        y = torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, torch.float32) / 255
        return (lo + span * y).to(x.dtype)


class Resize(Attack):
    """Resize down by ``factor`` and back up to the original size (the reference uses bilinear)."""

    name = "resize"
    knowledge = "none"
    strength = ("factor", 1)
    factor: Annotated[float, Field(ge=1, le=64)] = 2.0
    interpolation: Interpolation = "bilinear"
    antialias: bool = True  # low-pass before downsampling (bilinear/bicubic), as image libraries do

    def run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = (max(1, round(h / self.factor)), max(1, round(w / self.factor)))
        return resize(resize(x, small, self.interpolation, self.antialias), (h, w), self.interpolation)


class CropResize(Attack):
    """Keep the central ``keep`` fraction of each side and resize it back to the full size."""

    name = "crop_resize"
    knowledge = "none"
    strength = ("keep", -1)
    keep: Annotated[float, Field(gt=0, le=1)] = 0.875
    interpolation: Interpolation = "bilinear"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(self.keep * h)), max(1, round(self.keep * w))
        top, left = (h - ch) // 2, (w - cw) // 2
        return resize(x[..., top:top + ch, left:left + cw], (h, w), self.interpolation)


class Occlusion(Attack):
    """Blank a random round(t*H) x round(t*W) rectangle per image (the reference's "crop"); seeded per image."""

    name = "occlusion"
    knowledge = "none"
    strength = ("fraction", 1)
    fraction: Annotated[float, Field(ge=0, le=1)] = 0.25
    value: float = 0.0  # the blanked pixels' value
    seed: int = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        oh, ow = round(self.fraction * h), round(self.fraction * w)
        corners = torch.tensor([[int(torch.randint(0, n + 1, (), generator=g)) for n in (h - oh, w - ow)]
                                for g in image_generators(x, self.seed)], device=x.device).view(b, 2, 1, 1, 1)
        top, left = corners[:, 0], corners[:, 1]
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        mask = (rows >= top) & (rows < top + oh) & (cols >= left) & (cols < left + ow)
        return torch.where(mask, torch.full_like(x, self.value), x)


class Illumination(Attack):
    """Add one brightness shift U(-t, t) per image (the reference does not clip; ``clip`` clips to [0, 1]); seeded per
    image."""

    name = "illumination"
    knowledge = "none"
    strength = ("shift", 1)
    shift: Annotated[float, Field(ge=0, le=1)] = 0.1
    clip: bool = False
    seed: int = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in image_generators(x, self.seed)])
        s = (u.view(-1, 1, 1, 1) * 2 - 1) * self.shift
        y = x + s.to(x.device, x.dtype)
        return y.clamp(0, 1) if self.clip else y


class GaussianBlur(Attack):
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel radius ceil(3 sigma), edges replicated)."""

    name = "gaussian_blur"
    knowledge = "none"
    strength = ("sigma", 1)
    sigma: Annotated[float, Field(gt=0, le=50)] = 1.0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        r = math.ceil(3 * self.sigma)
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-t ** 2 / (2 * self.sigma ** 2))
        k = (k / k.sum()).to(x.device, x.dtype)
        y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
        y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        return y.reshape(b, c, h, w)


class Median(Attack):
    """Median filter over an odd ``size`` x ``size`` window per channel (edges reflected)."""

    name = "median"
    knowledge = "none"
    strength = ("size", 1)
    size: Annotated[int, Field(ge=1, le=31), AfterValidator(_odd)] = 3

    def run(self, x: torch.Tensor) -> torch.Tensor:
        from scipy.ndimage import median_filter

        y = median_filter(x.detach().cpu().numpy(), size=(1, 1, self.size, self.size), mode="reflect")
        return torch.from_numpy(y).to(x.device, x.dtype)


class BitDepth(Attack):
    """Quantise to ``bits`` bits per channel (2^bits levels; scale: clip or per-image min-max)."""

    name = "bit_depth"
    knowledge = "none"
    strength = ("bits", -1)
    bits: Annotated[int, Field(ge=1, le=16)] = 4
    scale: Scale = "clip"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        u, lo, span = to_unit(x.double(), self.scale)
        levels = 2 ** self.bits - 1
        return (lo + span * (u * levels).round() / levels).to(x.dtype)


class Grayscale(Attack):
    """Replace RGB by its luminance (BT.601 weights) in all three channels; one-channel images pass unchanged."""

    name = "grayscale"
    knowledge = "none"

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        if x.shape[1] != 3:
            raise NTEError(f"attack 'grayscale': needs RGB images (3 channels), got {x.shape[1]} channels.")
        wts = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * wts).sum(1, keepdim=True).expand_as(x).contiguous()


class GaussianNoise(Attack):
    """Add white Gaussian noise of standard deviation ``sigma`` (pixel units); seeded per image."""

    name = "gaussian_noise"
    knowledge = "none"
    strength = ("sigma", 1)
    sigma: Annotated[float, Field(ge=0, le=10)] = 0.05
    seed: int = 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in image_generators(x, self.seed)])
        return x + self.sigma * noise.to(x.device, x.dtype)
