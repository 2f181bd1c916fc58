"""Method-level attacks against their oracles, per NTE setting: a strength measurement, not a timing.

    python benchmarks/attacks_vs_oracles.py [--data textures] [--designated zoo:tex_vit_null]
        [--models zoo:tex_resnet_stem,zoo:tex_convnext_patchify] [--psnr 30,20,10,0] [--limit N] [--corpus-extra N]

For per-patch and tiled NTEs at each PSNR: each unauthorized model's accuracy (%) on the NTEs after every attack, the
accuracy it loses when the attack is applied to the clean images (its cost on clean content), and the blind estimate's
largest principal angle to the true subspace (degrees). The attackers see the data set's train split as public
images and the test split's NTEs as the released corpus, as in a suite. ``--corpus-extra N`` moves N train images
(seeded) from the public images into the released corpus as NTEs, to show how the blind estimates improve with the
corpus's size; the measured images stay the test split.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from nte_eval.attacks import AttackContext, build_attack
from nte_eval.attacks.subspace.oracle import designated_subspace
from nte_eval.data.sources import load_pixels
from nte_eval.encoders import NTEEncoder
from nte_eval.evaluate.batching import apply_attack, batched_logits
from nte_eval.evaluate.cells import estimate_angle
from nte_eval.models.load import load_model

ATTACKS = ("identity", "tile_average", "blind_fill", "blind_subspace", "oracle_fill", "oracle_projection")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="textures")
    parser.add_argument("--designated", default="zoo:tex_vit_null")
    parser.add_argument("--models", default="zoo:tex_resnet_stem,zoo:tex_convnext_patchify")
    parser.add_argument("--psnr", default="30,20,10,0")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--corpus-extra", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    test, public = load_pixels(args.data, "test", args.limit), load_pixels(args.data, "train")
    order = torch.randperm(len(public), generator=torch.Generator().manual_seed(0)).tolist()
    extra, public = public.subset(order[:args.corpus_extra]), public.subset(sorted(order[args.corpus_extra:]))
    designated = load_model(args.designated)
    models = [load_model(m) for m in args.models.split(",")]

    def accuracy(x: torch.Tensor) -> list[float]:
        return [100 * float((batched_logits(h, x, 256, "cpu").argmax(1) == test.labels).float().mean())
                for h in models]

    clean = accuracy(test.images)
    print(f"{args.data} test ({len(test)} images, + {len(extra)} train images in the corpus; {len(public)} public), "
          f"designated {args.designated}; unauthorized {args.models}: "
          f"clean {'/'.join(f'{v:.1f}' for v in clean)}")
    print("per attack: accuracy on the NTEs after it (per model) [accuracy lost on clean images]; angle of the "
          "blind estimate")
    for noise in ("per_patch", "tiled"):
        for db in (float(v) for v in args.psnr.split(",")):
            encoder = NTEEncoder(designated, psnr=db, noise=noise)
            ntes = encoder.encode(test.images, key=0).images
            corpus = ntes if not len(extra) else torch.cat([ntes, encoder.encode(
                extra.images, key=0, index=list(range(len(test), len(test) + len(extra)))).images])
            context = AttackContext(public=public, ntes=corpus, encoder=encoder.public_settings(),
                                    designated=designated)
            cells, angle = [], None
            for name in ATTACKS:
                attack = build_attack(name).fit(context)
                angle = estimate_angle(attack, partial(designated_subspace, context)) if angle is None else angle
                restored = accuracy(apply_attack(attack, ntes, 256, "cpu"))
                lost = [c - a for c, a in zip(clean, accuracy(apply_attack(attack, test.images, 256, "cpu")),
                                              strict=True)]
                cells.append(f"{name} {'/'.join(f'{v:.0f}' for v in restored)} "
                             f"[{'/'.join(f'{v:.0f}' for v in lost)}]")
            print(f"{noise:9s} {db:4.0f} dB  angle {angle:5.1f}  " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
