"""``textures``: a 10-class natural-image data set made of crops of scikit-image's bundled photos, so that tests and
attacks meet natural image statistics (smooth regions, edges, fine texture, colour) and not only the digits.

Class k is photo k. Each crop is a square of a seeded random side (``MIN_SIDE`` to ``MAX_SIDE`` px of the photo) at
a seeded random position, randomly mirrored, resized (antialiased) to ``size``. The train crops come from the left
``TRAIN_SHARE`` of each photo's width and the test crops from the rest, so no test pixel appears in a train crop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nte_eval.data.images import ImageSet
from nte_eval.errors import NTEError

#: (class name, scikit-image function): seven colour photos and three grey textures (grey as three equal channels).
TEXTURE_PHOTOS = (("astronaut", "astronaut"), ("cat", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket"),
                  ("tissue", "immunohistochemistry"), ("galaxies", "hubble_deep_field"), ("retina", "retina"),
                  ("brick", "brick"), ("grass", "grass"), ("gravel", "gravel"))
PER_CLASS = {"train": 160, "test": 40}
TRAIN_SHARE = 0.7
MIN_SIDE, MAX_SIDE = 48, 128
SEED = 20261206


def _photo(name: str) -> torch.Tensor:
    """One bundled photo as (3, H, W) floats in [0, 1]."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(arr[:, :, :3]).permute(2, 0, 1).contiguous()


def _crops(photo: torch.Tensor, count: int, columns: tuple[int, int], size: int,
           gen: torch.Generator) -> torch.Tensor:
    """``count`` random square crops within the photo's ``columns`` range, mirrored at random, at ``size``."""
    _, h, w0 = photo.shape
    lo, hi = columns
    out = []
    for _ in range(count):
        side = int(torch.randint(MIN_SIDE, min(MAX_SIDE, h, hi - lo) + 1, (), generator=gen))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = lo + int(torch.randint(0, hi - lo - side + 1, (), generator=gen))
        crop = photo[:, top:top + side, left:left + side]
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        out.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out).clamp(0, 1)


def load_textures(split: str = "test", limit: int | None = None, size: int = 32) -> ImageSet:
    """The textures data set: ``split`` is ``train`` (160 crops per class), ``test`` (40) or ``all``; the first
    ``limit`` images of a split interleave the classes (image i has class i mod 10)."""
    if split not in ("train", "test", "all"):
        raise NTEError(f"textures: unknown split {split!r}; use 'train', 'test' or 'all'.")
    if limit is not None and limit < 1:
        raise NTEError(f"textures: limit must be a positive integer, got {limit}.")
    parts = []
    for part in ("train", "test") if split == "all" else (split,):
        images = []
        for k, (_, name) in enumerate(TEXTURE_PHOTOS):
            photo = _photo(name)
            cut = int(TRAIN_SHARE * photo.shape[2])
            gen = torch.Generator().manual_seed(SEED + 1000 * k + (0 if part == "train" else 1))
            images.append(_crops(photo, PER_CLASS[part], (0, cut) if part == "train" else (cut, photo.shape[2]),
                                 size, gen))
        # interleave: image i of the split has class i mod 10
        parts.append(torch.stack(images, 1).reshape(-1, 3, size, size))
    x = torch.cat(parts)
    classes = len(TEXTURE_PHOTOS)
    labels = torch.arange(len(x)) % classes
    n = len(x) if limit is None else min(limit, len(x))
    names = [f"textures-{split}-{i:04d}" for i in range(n)]
    return ImageSet(x[:n].contiguous(), labels[:n], [c for c, _ in TEXTURE_PHOTOS], names)
