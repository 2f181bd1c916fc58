"""Encoder throughput against the memory floor (copying the same batch into a preallocated tensor), side by side.

    python benchmarks/encode.py [--batch 32] [--device cpu] [--rounds 7]

Geometries, 224x224 with random weights: patch mode on a ViT-B/16 patch embedding (Conv2d 3->768, 16x16 stride
16); operator mode on a ResNet-50 stem (Conv2d 3->64, 7x7 stride 2 padding 3), with the zero-padding border left to
be measured (border=check: one inverse FFT) and corrected in closed form (border=correct, geometry/border.py). Each
round times the floor and every encoder once, interleaved, so that a busy machine slows both alike; medians over
rounds are reported, with the per-round ratio's median. ``record=False`` skips the per-sample first-layer response
(two extra convolutions).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from nte_eval.encoders import NTEEncoder
from nte_eval.models.handle import ModelHandle


def timed(fn, device: str) -> float:
    """Wall time of one call of ``fn()``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def stem_handle(conv: nn.Conv2d, device: str) -> ModelHandle:
    torch.manual_seed(0)
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(conv.out_channels, 1000))
    return ModelHandle.from_module(net, "0", input_size=(3, 224, 224)).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--record", action="store_true", help="also time encoders that measure the first-layer ratio")
    ap.add_argument("--skip-correct", action="store_true", help="skip operator mode with the border correction")
    args = ap.parse_args()
    dev = args.device
    x = torch.rand(args.batch, 3, 224, 224, device=dev)
    buf = torch.empty_like(x)
    vit, r50 = nn.Conv2d(3, 768, 16, 16), nn.Conv2d(3, 64, 7, 2, 3)
    cases = {"patch     ViT-B/16 patch embedding": NTEEncoder(stem_handle(vit, dev), mode="patch", psnr=30),
             "operator  ResNet-50 stem, border=check": NTEEncoder(stem_handle(r50, dev), mode="operator", psnr=30,
                                                                  border="check")}
    if not args.skip_correct:
        cases["operator  ResNet-50 stem, border=correct"] = NTEEncoder(stem_handle(r50, dev), mode="operator",
                                                                       psnr=30, border="correct")
    runs = {(label, rec): enc.fit() for label, enc in cases.items() for rec in ((False, True) if args.record
                                                                               else (False,))}
    floors, times = [], {k: [] for k in runs}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        floors.append(timed(lambda: buf.copy_(x), dev))
        for (label, rec), enc in runs.items():
            times[(label, rec)].append(timed(lambda: enc.encode(x, key=0, record=rec), dev))  # noqa: B023
    floors = floors[1:]
    floor = statistics.median(floors)
    print(f"device={dev} batch={args.batch} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"rounds={args.rounds}")
    print(f"memory floor (copy into a preallocated tensor): {floor * 1e3:.2f} ms = {args.batch / floor:,.0f} images/s")
    for (label, rec), ts in times.items():
        ts = ts[1:]
        t = statistics.median(ts)
        ratio = statistics.median(a / b for a, b in zip(ts, floors, strict=True))
        sub = runs[(label, rec)].subspace.describe()
        print(f"{label:42s} record={str(rec):5s} {t * 1e3:9.2f} ms = {args.batch / t:9,.0f} images/s = "
              f"{ratio:7.1f}x the floor   (subspace: {sub['view']}, exact={sub['exact']})")


if __name__ == "__main__":
    main()
