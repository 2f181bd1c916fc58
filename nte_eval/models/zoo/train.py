"""Deterministic CPU training of the zoo on the train split of each model's data set (digits or textures).

Recipe (same for every model, epochs and learning rate per ``ZooEntry``): AdamW (weight decay 0.05), batch 32,
linear warm-up over the first 15% of steps then cosine decay, gradient-norm clipping at 1. Augmentation shifts each
image by up to one pixel (edge padding); on the digits it first recolours it (random channel permutation, then per
channel x -> a*x + b with |a| in [0.8, 1], random sign, b keeping [0, 1]): the digits' palettes are random per image,
so recolouring teaches the colour invariance the test split needs. On the textures colour is part of the class, so
they are mirrored at random instead. One seeded generator drives data order and augmentation,
``torch.use_deterministic_algorithms`` is on and training runs on one CPU thread (``THREADS``; reductions depend on
the thread count), so the same CPU type and torch version give bit-identical weights. One thread also keeps
training fast on a busy two-core machine (OpenMP threads spin when they compete for cores).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nte_eval.data.images import ImageSet
from nte_eval.data.sources import load_pixels
from nte_eval.errors import NTEError
from nte_eval.models.zoo import (
    ZOO,
    ZOO_MEAN,
    ZOO_STD,
    ZooEntry,
    build_module,
    get_entry,
    make_handle,
    read_zoo_json,
    weights_dir,
)

BATCH_SIZE = 32
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.15
CLIP_NORM = 1.0
SHIFT = 1
MIN_GAIN = 0.8
THREADS = 1


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = SHIFT, recolour: bool = True) -> torch.Tensor:
    """Random recolouring (channel permutation, per-channel affine with random sign), or else a random mirror, and a
    shift of <= ``shift`` px."""
    n, c, h, w = x.shape
    if recolour:
        perm = torch.rand(n, c, generator=gen).argsort(dim=1)
        x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
        gain = (MIN_GAIN + (1 - MIN_GAIN) * torch.rand(n, c, 1, 1, generator=gen))
        gain = gain * (torch.randint(0, 2, (n, c, 1, 1), generator=gen) * 2 - 1)
        lo, hi = (-gain).clamp(min=0), 1 - gain.clamp(min=0)  # a*x + b stays in [0, 1] for x in [0, 1]
        x = gain * x + lo + (hi - lo) * torch.rand(n, c, 1, 1, generator=gen)
    else:
        x = torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)
    if shift:
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        dy, dx = (torch.randint(0, 2 * shift + 1, (2, n), generator=gen))
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    return x.contiguous()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Apply the zoo normalisation (the handle does the same at inference)."""
    mean = torch.tensor(ZOO_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(ZOO_STD).view(1, -1, 1, 1)
    return (x - mean) / std


def train_one(entry: ZooEntry, data: ImageSet, progress: bool = True) -> nn.Module:
    """Train one zoo model from its seed on ``data``; returns the module in eval mode."""
    torch.manual_seed(entry.seed)
    model = build_module(entry).train()
    gen = torch.Generator().manual_seed(entry.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=entry.lr, weight_decay=WEIGHT_DECAY)
    per_epoch = math.ceil(len(data) / BATCH_SIZE)
    total = entry.epochs * per_epoch
    warmup = max(1, int(WARMUP_FRACTION * total))

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    bar = tqdm(range(entry.epochs), desc=entry.name, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(data), generator=gen)
        running = 0.0
        for start in range(0, len(data), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            x = normalize(augment(data.images[idx], gen, recolour=entry.data == "digits"))
            loss = F.cross_entropy(model(x), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        bar.set_postfix(loss=f"{running / len(data):.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, entry: ZooEntry, data: ImageSet) -> float:
    """Top-1 accuracy through the pixel-space handle."""
    pred = make_handle(model, entry).logits(data.images).argmax(1)
    return float((pred == data.labels).float().mean())


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the state dict as safetensors (contiguous CPU tensors, no timestamps: same weights, same bytes)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})  # one key: safetensors writes a map in any order


def write_records(folder: Path, records: list[dict[str, Any]]) -> None:
    """Merge ``records`` into ``folder/zoo.json``, keeping zoo order."""
    path = folder / "zoo.json"
    models = read_zoo_json(folder)
    models.update({r["name"]: r for r in records})
    ordered = {n: models[n] for n in ZOO if n in models}
    doc = {"mean": list(ZOO_MEAN), "std": list(ZOO_STD),
           "data": "3x32x32; digits train (1437) / test (360), textures train (1600) / test (400)",
           "models": ordered}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def train_zoo(names: list[str] | None = None, out: Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train the named zoo models (all by default), save ``NAME.safetensors`` and merge results into zoo.json."""
    import timm

    entries = [get_entry(n) for n in (names or list(ZOO))]
    folder = Path(out) if out is not None else weights_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NTEError(f"cannot create the zoo weights folder {folder}: {e}") from None
    splits = {d: (load_pixels(d, "train"), load_pixels(d, "test")) for d in {e.data for e in entries}}
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)  # the float summation order depends on the thread count
    records = []
    try:
        for entry in tqdm(entries, desc="zoo", unit="model", disable=not progress):
            t0 = time.perf_counter()
            train, test = splits[entry.data]
            model = train_one(entry, train, progress)
            seconds = time.perf_counter() - t0
            save_weights(model, folder / f"{entry.name}.safetensors")
            records.append({"name": entry.name, "arch": entry.arch, "first_layer": entry.first_layer,
                            "data": entry.data, "seed": entry.seed, "epochs": entry.epochs, "lr": entry.lr,
                            "batch_size": BATCH_SIZE,
                            "params": sum(p.numel() for p in model.parameters()),
                            "test_accuracy": round(accuracy(model, entry, test), 4),
                            "train_accuracy": round(accuracy(model, entry, train), 4),
                            "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "timm": timm.__version__})
            if progress:
                r = records[-1]
                tqdm.write(f"{entry.name}: test accuracy {r['test_accuracy']:.4f}, {r['train_seconds']:.1f} s")
            write_records(folder, records[-1:])
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
    return records
