"""Bundled and user image data, always as float tensors (N, C, H, W) in pixel space [0, 1].

- ``digits``: scikit-learn's 1,797 handwritten digits (8x8, shipped in the wheel), upsampled bilinearly to
  3x32x32 and coloured with seeded per-image foreground and background colour gradients, so that the three channels
  carry different information (no greyscale or single-colour-line shortcut for an attacker). Fixed split:
  ``sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels, random_state=0)`` gives 1,437 train
  and 360 test images. The zoo is trained on ``train``; attackers' public images come from ``train``; evaluation
  uses ``test``.
- ``photos``: scikit-image's bundled RGB sample photos, for PSNR and visual checks (no labels).
- ``imagefolder``: a user's folder ``ROOT/CLASS/*.png|jpg|...``, resized and centre-cropped to the model's size,
  read from the files only when indexed (``FileImages``; the in-memory sources are tensors).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from nte_eval.data.files import FileImages, opened
from nte_eval.errors import NTEError

DIGITS_PALETTE_SEED = 20251010
DIGITS_SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


@dataclass
class ImageSet:
    """Images in [0, 1] with integer labels (-1 where unknown) and a name per image.

    ``modality``: ``image``; or ``text``, where ``images`` holds packed soft tokens (see ``nte_eval.data.tokens``).
    ``extras``: per-sample side information a model reads beside the input (an MMBench question and its options).
    """

    images: torch.Tensor | FileImages
    labels: torch.Tensor
    class_names: list[str]
    names: list[str] = field(default_factory=list)
    extras: list[dict] | None = None
    modality: str = "image"
    transform: dict | None = None  # how images read from files were prepared (size, resize or timm's transform)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def label_free(self) -> bool:
        """No labels (all -1): every model is scored by agreement with its own prediction on the clean input."""
        return bool((self.labels < 0).all())

    def subset(self, index: slice | list[int]) -> ImageSet:
        idx = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        extras = None if self.extras is None else [self.extras[i] for i in idx]
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, [self.names[i] for i in idx], extras,
                        self.modality)


def check_images(x: torch.Tensor, what: str = "images", channels: int | None = None) -> None:
    """Raise NTEError unless ``x`` is a finite (N, C, H, W) float tensor in [0, 1] (with ``channels`` channels)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise NTEError(f"{what}: expected a (N, C, H, W) tensor, got {shape}.")
    if not x.is_floating_point():
        raise NTEError(f"{what}: expected floats in [0, 1], got dtype {x.dtype}; divide 8-bit images by 255.")
    if channels is not None and x.shape[1] != channels:
        raise NTEError(f"{what}: the model takes {channels} channels, the images have {x.shape[1]}.")
    bad = ~torch.isfinite(x)
    if bad.any():
        n = int(bad.flatten(1).any(1).sum())
        raise NTEError(f"{what}: {n} image(s) contain NaN or infinite pixels; clean or drop them first.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise NTEError(f"{what}: pixels must lie in [0, 1] (pixel space), found range [{lo:.3g}, {hi:.3g}]. "
                       "Pass unnormalised images; the model handle applies mean/std itself.")


def check_limit(limit: int | None, what: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise NTEError(f"{what}: limit must be a positive integer or None, got {limit!r}.")


def _digit_colours(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-image foreground and background colour fields, (n, 3, size, size) each.

    Each field is a linear gradient between two random colours along a random direction, so that within one image
    the pixel colours do not lie on a single colour line (which an attacker could fit and project onto, deleting
    the noise's off-line colour components). Both gradient ends keep enough luminance contrast to stay legible.
    """
    rng = np.random.default_rng(DIGITS_PALETTE_SEED)
    lum = np.array([0.299, 0.587, 0.114])
    ends = np.empty((n, 4, 3))  # fg0, fg1, bg0, bg1
    angles = rng.uniform(0, 2 * np.pi, n)
    for i in range(n):
        while True:
            c = rng.uniform(0, 1, (4, 3))
            d0, d1 = (c[0] - c[2]) @ lum, (c[1] - c[3]) @ lum  # ink-paper luminance gap at both gradient ends
            if min(abs(d0), abs(d1)) >= 0.35 and d0 * d1 > 0:  # same sign: the gap never closes in between
                ends[i] = c
                break
    grid = (np.arange(size) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    t = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy
    t = torch.from_numpy((t - t.min((1, 2), keepdims=True)) / np.ptp(t, (1, 2), keepdims=True)).float()[:, None]
    e = torch.from_numpy(ends).float()[:, :, :, None, None]
    return e[:, 0] + t * (e[:, 1] - e[:, 0]), e[:, 2] + t * (e[:, 3] - e[:, 2])


def load_digits(split: str = "test", limit: int | None = None, size: int = 32) -> ImageSet:
    """scikit-learn digits as coloured 3 x size x size images; ``split`` is ``train``, ``test`` or ``all``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise NTEError(f"digits: unknown split {split!r}; use 'train', 'test' or 'all'.")
    check_limit(limit, "digits")
    raw = sk_digits()
    grey = torch.from_numpy(raw.images / 16.0).float()[:, None]
    grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    fg, bg = _digit_colours(len(grey), size)
    images = bg + grey * (fg - bg)
    labels = torch.from_numpy(raw.target).long()
    idx = np.arange(len(labels))
    if split != "all":
        train, test = train_test_split(idx, test_size=0.2, stratify=raw.target, random_state=DIGITS_SPLIT_SEED)
        idx = np.sort(train if split == "train" else test)
    if limit is not None:
        idx = idx[:limit]
    names = [f"digits-{i:04d}" for i in idx]
    return ImageSet(images[idx].contiguous(), labels[idx], [str(d) for d in range(10)], names)


DOCSTRING_MODULES = ("json", "os", "pathlib", "collections", "functools", "itertools", "string", "textwrap", "re",
                     "subprocess", "argparse", "logging", "random", "statistics", "shutil", "tarfile", "zipfile", "csv",
                     "datetime", "decimal", "fractions", "heapq", "bisect", "inspect", "unittest", "asyncio",
                     "threading", "socket", "email", "http.client", "urllib.request", "xml.etree.ElementTree",
                     "sqlite3", "concurrent.futures", "dataclasses", "enum", "contextlib", "copy", "pickle", "pprint",
                     "time", "calendar", "codecs", "io", "tempfile", "glob", "fnmatch", "hashlib", "uuid", "base64",
                     "struct", "queue", "selectors", "difflib", "operator", "math", "weakref", "types", "ast",
                     "tokenize", "traceback", "warnings", "platform", "shlex", "configparser", "mimetypes",
                     "html.parser", "smtplib", "gzip", "bz2", "lzma", "filecmp", "timeit", "doctest", "pydoc",
                     "pkgutil", "runpy")


def load_docstrings(limit: int | None = None) -> list[str]:
    """Real English text that ships with Python: the first paragraph of the public functions' and classes'
    docstrings of some standard-library modules (20-200 characters, deduplicated, in a fixed order; about
    970 on CPython 3.11). Unlabelled: for checks of text NTEs, such as sentence-embedding fidelity."""
    check_limit(limit, "docstrings")
    out: list[str] = []
    for module in DOCSTRING_MODULES:
        for name, obj in inspect.getmembers(importlib.import_module(module)):
            doc = inspect.getdoc(obj) if not name.startswith("_") and (inspect.isfunction(obj) or
                                                                        inspect.isclass(obj)) else None
            first = doc.split("\n\n")[0].replace("\n", " ").strip() if doc else ""
            if 20 <= len(first) <= 200 and first not in out:
                out.append(first)
    return out[:limit]


def resize_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased), then centre-crop to size x size."""
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[:, top:top + size, left:left + size].clamp(0, 1)


def load_photos(size: int = 224, limit: int | None = None) -> ImageSet:
    """scikit-image's bundled RGB sample photos, resized and centre-cropped (labels are -1: no classes)."""
    import skimage.data

    check_limit(limit, "photos")
    imgs = []
    for name in PHOTO_NAMES[:limit]:
        arr = getattr(skimage.data, name)()
        imgs.append(resize_crop(torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0, size))
    names = list(PHOTO_NAMES[:limit])
    return ImageSet(torch.stack(imgs), torch.full((len(imgs),), -1, dtype=torch.long), [], names)


def read_image(path: Path | BinaryIO, channels: int = 3, name: str | None = None) -> torch.Tensor:
    """Read one image (a file, or an open binary stream called ``name`` in errors) as a (C, H, W) float tensor in
    [0, 1]; a corrupt image is an NTEError naming it."""
    with opened(path, name) as im:
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit greyscale: convert() would clip to 255
            arr = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
            arr = np.repeat(arr[:, :, None], 3, axis=2) if channels == 3 else arr
        else:
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t[None]


def list_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursively), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_imagefolder(root: str | Path, size: int, limit: int | None = None, channels: int = 3) -> ImageSet:
    """A folder of class subfolders (labels follow the sorted folder names, or their values if all are integers),
    or of images without subfolders (no labels: evaluated label-free). The images are read from their files when
    indexed (``FileImages``): a corrupt one is an error then, naming it."""
    check_limit(limit, "imagefolder")
    root = Path(root)
    if not root.is_dir():
        raise NTEError(f"imagefolder: {root} is not a folder; point data.root at ROOT/CLASS/*.png (labelled) or "
                       "ROOT/*.png (label-free).")
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    per_class = [(p.name, files) for p in sorted(root.iterdir()) if p.is_dir() and (files := list_images(p))]
    classes = [c for c, _ in per_class]
    if loose and classes:
        raise NTEError(f"imagefolder: {root} mixes {len(loose)} image(s) directly in it (no label, e.g. "
                       f"{loose[0].name}) with class subfolders ({', '.join(classes[:3])}"
                       f"{', ...' if len(classes) > 3 else ''}); put every image in a class folder (labelled) or "
                       "give the unlabelled ones their own folder (label-free).")
    if loose:
        paths = loose[:limit] if limit is not None else loose
        images = FileImages(paths, (channels, size, size), partial(prepare_file, size=size, channels=channels))
        return ImageSet(images, torch.full((len(paths),), -1, dtype=torch.long), [], [p.name for p in paths])
    if not classes:
        raise NTEError(f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}.")
    numeric = all(c.isdigit() for c in classes)
    # Round-robin over classes so that a limit keeps every class represented.
    order: list[tuple[int, Path]] = []
    for rank in range(max(len(f) for _, f in per_class)):
        for label, (c, files) in enumerate(per_class):
            if rank < len(files):
                order.append((int(c) if numeric else label, files[rank]))
    order = order[:limit] if limit is not None else order
    images = FileImages([p for _, p in order], (channels, size, size), partial(prepare_file, size=size,
                                                                              channels=channels))
    labels = torch.tensor([lab for lab, _ in order], dtype=torch.long)
    names = [str(p.relative_to(root)) for _, p in order]
    class_names = [str(i) for i in range(max(int(c) for c in classes) + 1)] if numeric else classes
    return ImageSet(images, labels, class_names, names)


def prepare_file(path: Path, size: int, channels: int) -> torch.Tensor:
    """One imagefolder file as the run sees it: decoded, resized and centre-cropped to ``size``."""
    return resize_crop(read_image(path, channels), size)
