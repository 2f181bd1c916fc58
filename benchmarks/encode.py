"""Encoder throughput against the memory floor (copying the same batch into a preallocated tensor), side by side.

    python benchmarks/encode.py [--batch 32] [--device cpu] [--repeat 5]

Geometries: patch mode on a ViT-B/16 patch embedding (Conv2d 3->768, 16x16 stride 16) and operator mode on a
ResNet-50 stem (Conv2d 3->64, 7x7 stride 2 padding 3), both 224x224 with random weights. Reported: images/s, the
ratio to the floor, with and without the per-sample record (the first-layer response ratio, two extra convolutions).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from nte_eval.encoders import NTEEncoder
from nte_eval.handles import ModelHandle


def timed(fn, device: str, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stem_handle(conv: nn.Conv2d, device: str) -> ModelHandle:
    torch.manual_seed(0)
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(conv.out_channels, 1000))
    return ModelHandle.from_module(net, "0", input_size=(3, 224, 224)).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    dev = args.device
    x = torch.rand(args.batch, 3, 224, 224, device=dev)
    buf = torch.empty_like(x)
    floor = timed(lambda: buf.copy_(x), dev, args.repeat * 4)
    print(f"device={dev} batch={args.batch} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"memory floor (copy into preallocated tensor): {floor * 1e3:.2f} ms = {args.batch / floor:,.0f} images/s")
    cases = {
        "patch (ViT-B/16 patch embedding)": (nn.Conv2d(3, 768, 16, 16), "patch"),
        "operator (ResNet-50 stem 7x7/2 pad 3)": (nn.Conv2d(3, 64, 7, 2, 3), "operator"),
    }
    for label, (conv, mode) in cases.items():
        handle = stem_handle(conv, dev)
        enc = NTEEncoder(handle, mode=mode, psnr=30).fit()
        for record in (False, True):
            t = timed(lambda: enc.encode(x, key=0, record=record), dev, args.repeat)  # noqa: B023
            print(f"{label:40s} record={str(record):5s}: {t * 1e3:9.2f} ms = {args.batch / t:10,.0f} images/s, "
                  f"{t / floor:7.1f}x the floor   [{enc.subspace.describe()}]")


if __name__ == "__main__":
    main()
