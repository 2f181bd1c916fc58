"""The runner's time and memory against what it cannot avoid, on an imagefolder of synthetic 224-px images.

    python benchmarks/run_overhead.py [--images 200] [--rounds 3] [--threads 2]
    python benchmarks/run_overhead.py --memory 500,5000 [--threads 2]

The suite: `identity` only, four timm architectures with random weights (a ViT-Ti/16 designated; ResNet-18,
MobileNetV3-S, ConvNeXt-atto unauthorized), per-patch NTEs at 30 dB, `shard_size: 500`, no certification.

- Time: each round times the whole run (`run_suite`: reading and resizing the PNGs, encoding, evaluation, the item
  files, the merge, no report) and, side by side, the forward passes no runner can avoid: each model once on the
  clean images and once on the NTEs (tensors already in memory, the run's batch size). Medians over rounds, with the
  per-round ratio's median.
- Memory (``--memory N1,N2``): the same suite over N1 and over N2 images, each in its own process; the ratio of
  their peak resident memory (the process's maximum RSS; DataLoader workers are separate processes, not counted).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nte_eval.encoders import NTEEncoder
from nte_eval.evaluate.batching import batched_logits, encode_all
from nte_eval.evaluate.inputs import load_models, load_suite_data
from nte_eval.evaluate.suite import parse_suite
from nte_eval.runner import run_suite

MODELS = ["timm:resnet18", "timm:mobilenetv3_small_100", "timm:convnext_atto"]


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` smooth random 256-px PNGs in 4 class folders (upsampled low-resolution noise: image-like statistics)."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        small = torch.rand(1, 3, 8, 8, generator=gen)
        img = F.interpolate(small, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)[0]
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:05d}.png")
    return root


def suite_for(root: Path, batch: int) -> dict:
    return {"name": "overhead", "seed": 0, "data": {"source": "imagefolder", "root": str(root), "size": 224},
            "designated": "timm:vit_tiny_patch16_224", "models": MODELS, "encoders": [{"type": "nte", "psnr": 30}],
            "attacks": ["identity"], "shard_size": 500, "batch_size": batch}


def forward_floor(config: dict) -> float:
    """Seconds of the unavoidable forward passes: every model on the clean images and on the NTEs."""
    suite = parse_suite(config)
    handles = load_models(suite, "cpu")
    data = load_suite_data(suite, handles)
    x = data.images[:]
    ntes = encode_all(NTEEncoder(handles["timm:vit_tiny_patch16_224"], psnr=30), x, 0, suite.batch_size, "cpu")[0]
    t = time.perf_counter()
    for handle in handles.values():
        batched_logits(handle, x, suite.batch_size, "cpu")
        batched_logits(handle, ntes, suite.batch_size, "cpu")
    return time.perf_counter() - t


def whole_run(config: dict, out: Path) -> float:
    t = time.perf_counter()
    run_suite(parse_suite(config), out, progress=False, overwrite=True, log=lambda _: None)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", default=None, help="N1,N2: peak RSS of the run over N1 and over N2 images")
    parser.add_argument("--rss-of", default=None, help=argparse.SUPPRESS)  # child: run one folder, print max RSS
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_of:
        root = Path(args.rss_of)
        whole_run(suite_for(root, args.batch), root.parent / f"{root.name}-run")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            peaks = {}
            for n in (int(v) for v in args.memory.split(",")):
                root = make_folder(Path(tmp) / f"imgs{n}", n)
                child = subprocess.run([sys.executable, __file__, "--rss-of", str(root), "--batch", str(args.batch),
                                        "--threads", str(args.threads)], check=True, capture_output=True, text=True)
                peaks[n] = int(child.stdout.split()[-1]) / 1024
                print(f"{n} images: peak RSS {peaks[n]:.0f} MiB", flush=True)
            (a, pa), (b, pb) = list(peaks.items())[:2]
            print(f"peak RSS ratio {b} / {a} images: {pb / pa:.2f}")
            return
        config = suite_for(make_folder(Path(tmp) / "imgs", args.images), args.batch)
        floors, runs = [], []
        for r in range(args.rounds):
            floors.append(forward_floor(config))
            runs.append(whole_run(config, Path(tmp) / "run"))
            print(f"round {r + 1}: run {runs[-1]:.1f} s, forward passes {floors[-1]:.1f} s, "
                  f"ratio {runs[-1] / floors[-1]:.2f}", flush=True)
        ratios = [a / b for a, b in zip(runs, floors, strict=True)]
        print(f"{args.images} images, 4 models at 224 px, batch {args.batch}, {args.threads} threads: run "
              f"{statistics.median(runs):.1f} s, unavoidable forward passes {statistics.median(floors):.1f} s; "
              f"median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
