"""``nte-eval encode``: recode a folder of images (or a bundled set) for one model and key into files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nte_eval.data.images import ImageSet, check_images, check_limit, list_images, read_image, resize_crop
from nte_eval.data.sources import SOURCES, load_pixels
from nte_eval.encoders import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.run_folder import atomic_write, key_fingerprint
from nte_eval.models.load import load_model


def load_source(source: str, size: int, channels: int, limit: int | None, split: str) -> tuple[ImageSet, int]:
    """``digits``, ``photos``, or any folder of images (searched recursively), at the model's size; with the number
    of a folder's images that were resized (and centre-cropped) to it."""
    if source in SOURCES and SOURCES[source].bundled:  # anything else names a folder
        return load_pixels(source, split, limit, size=size), 0
    root = Path(source)
    if not root.is_dir():
        bundled = ", ".join(repr(n) for n, s in SOURCES.items() if s.bundled)
        raise NTEError(f"--data {source!r} is neither a bundled set ({bundled}) nor an existing folder.")
    check_limit(limit, f"--data {root}")
    files = list_images(root)[:limit]
    if not files:
        raise NTEError(f"--data {root}: no image files found (png, jpg, ...).")
    images, resized = [], 0
    for path in files:
        image = read_image(path, channels)
        resized += tuple(image.shape[-2:]) != (size, size)
        images.append(resize_crop(image, size))
    names = [str(p.relative_to(root)) for p in files]
    return ImageSet(torch.stack(images), torch.full((len(files),), -1), [], names), resized


def save_png(img: torch.Tensor, path: Path) -> None:
    """Write a (C, H, W) image on the 8-bit grid as PNG, losslessly."""
    from PIL import Image

    arr = torch.round(img.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def key_file(out: str | Path) -> Path:
    """Where ``--save-key`` writes the key: ``OUT.key`` beside the release folder ``OUT``, never inside it."""
    out = Path(out).resolve()
    return out.with_name(f"{out.name}.key")


def save_key_file(key: str, path: Path) -> None:
    """Write the key readable by its owner only (0600); never over another key (that release would lose its key)."""
    if path.exists() and path.read_text().rstrip("\r\n") != key:
        raise NTEError(f"{path} holds another key (of an earlier release?); move it away or choose another --out.")
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(key + "\n")


def encode_to_folder(model: str, source: str, out: str | Path, key: str, psnr: float = 30.0, mode: str = "auto",
                     select: str = "tau=0.01", noise: str = "per_patch", box: str = "project", quantize: bool = True,
                     save_key: bool = False, limit: int | None = None, split: str = "test", device: str = "cpu",
                     batch: int = 64) -> dict[str, Any]:
    """Encode images into ``out``: PNG when storable (box + 8-bit quantization), else float ``.npy``; ``save_key``
    also writes the key to ``key_file(out)``, outside ``out``."""
    if not str(key):
        raise NTEError("the key is empty; give a long random one (--key-file PATH, --key-env NAME or NTE_EVAL_KEY).")
    if save_key:
        save_key_file(key, key_file(out))
    handle = load_model(model).to(device)
    c, h, _ = handle.input_size
    data, resized = load_source(source, h, c, limit, split)
    check_images(data.images, f"--data {source}", channels=c)
    encoder = NTEEncoder(handle, mode=mode, select=select, psnr=psnr, noise=noise, box=box, quantize=quantize).fit()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storable = box != "none" and quantize
    note = ("storable 8-bit PNG images" if storable else
            f"saved as float32 .npy because these NTEs are not images (box={box!r}, quantize={quantize}): "
            "pixels may leave [0, 1] or the 8-bit grid; use --box project --quantize for PNGs")
    if resized:
        note += (f"; {resized} of {len(data)} images were resized and centre-cropped to {h}x{h}, the model's input "
                 "size: the files hold those, not the originals")
    files = []
    for i in range(0, len(data), batch):
        res = encoder.encode(data.images[i:i + batch].to(device), key=key,
                             index=list(range(i, min(i + batch, len(data)))))
        for j, img in enumerate(res.images):
            src = data.names[i + j]
            stem = Path(src).with_suffix("").as_posix().replace("/", "__")
            target = out / (f"{stem}.png" if storable else f"{stem}.npy")
            with atomic_write(target) as tmp:
                if storable:
                    save_png(img, tmp)
                else:
                    np.save(tmp, img.cpu().numpy().astype(np.float32))
            files.append({"file": target.name, "source": src, "index": i + j, "psnr": float(res.psnr[j]),
                          "first_layer_ratio": float(res.first_layer_ratio[j])})
    manifest = {"model": model, "layer": handle.first.geometry(), "mode": encoder.mode,
                "subspace": encoder.subspace.describe(), "settings": encoder.params(),
                "format": "png" if storable else "npy", "note": note, "psnr_unit": "pixel-space dB, peak 1",
                "key_fingerprint": key_fingerprint(key), "files": files}
    with atomic_write(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest
