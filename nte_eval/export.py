"""``nte-eval encode``: recode a folder of images (or a bundled set) for one model and key into files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nte_eval.data.images import ImageSet, _resize_crop, check_images, list_images, read_image
from nte_eval.data.sources import SOURCES, load_pixels
from nte_eval.encoders import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.models.load import load_model


def load_source(source: str, size: int, channels: int, limit: int | None, split: str) -> ImageSet:
    """``digits``, ``photos``, or any folder of images (searched recursively), at the model's size."""
    if source in SOURCES and SOURCES[source].bundled:  # anything else names a folder
        return load_pixels(source, split, limit, size=size)
    root = Path(source)
    if not root.is_dir():
        bundled = ", ".join(repr(n) for n, s in SOURCES.items() if s.bundled)
        raise NTEError(f"--data {source!r} is neither a bundled set ({bundled}) nor an existing folder.")
    files = list_images(root)[:limit]
    if not files:
        raise NTEError(f"--data {root}: no image files found (png, jpg, ...).")
    images = torch.stack([_resize_crop(read_image(p, channels), size) for p in files])
    return ImageSet(images, torch.full((len(files),), -1), [], [str(p.relative_to(root)) for p in files])


def save_png(img: torch.Tensor, path: Path) -> None:
    """Write a (C, H, W) image on the 8-bit grid as PNG, losslessly."""
    from PIL import Image

    arr = torch.round(img.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def encode_to_folder(model: str, source: str, out: str | Path, key: str, psnr: float = 30.0, mode: str = "auto",
                     select: str = "tau=0.01", noise: str = "per_patch", box: str = "project", quantize: bool = True,
                     save_key: bool = False, limit: int | None = None, split: str = "test", device: str = "cpu",
                     batch: int = 64) -> dict[str, Any]:
    """Encode images into ``out``: PNG when storable (box + 8-bit quantization), else float ``.npy``."""
    handle = load_model(model).to(device)
    c, h, _ = handle.input_size
    data = load_source(source, h, c, limit, split)
    check_images(data.images, f"--data {source}", channels=c)
    encoder = NTEEncoder(handle, mode=mode, select=select, psnr=psnr, noise=noise, box=box, quantize=quantize).fit()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storable = box != "none" and quantize
    note = ("storable 8-bit PNG images" if storable else
            f"saved as float32 .npy because these NTEs are not images (box={box!r}, quantize={quantize}): "
            "pixels may leave [0, 1] or the 8-bit grid; use --box project --quantize for PNGs")
    files = []
    for i in range(0, len(data), batch):
        res = encoder.encode(data.images[i:i + batch].to(device), key=key, index=list(range(i, i + batch))[:len(
            data.images[i:i + batch])])
        for j, img in enumerate(res.images):
            src = data.names[i + j]
            stem = Path(src).with_suffix("").as_posix().replace("/", "__")
            target = out / (f"{stem}.png" if storable else f"{stem}.npy")
            if storable:
                save_png(img, target)
            else:
                np.save(target, img.cpu().numpy().astype(np.float32))
            files.append({"file": target.name, "source": src, "index": i + j, "psnr": float(res.psnr[j]),
                          "first_layer_ratio": float(res.first_layer_ratio[j])})
    manifest = {"model": model, "layer": handle.first.geometry(), "mode": encoder.mode,
                "subspace": encoder.subspace.describe(), "settings": encoder.params(),
                "format": "png" if storable else "npy", "note": note, "psnr_unit": "pixel-space dB, peak 1",
                "files": files}
    if save_key:
        manifest["key"] = key
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
