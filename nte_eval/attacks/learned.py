"""Knowledge 'method': a DnCNN denoiser the attacker trains on NTEs it makes itself for random surrogate models."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.synthetic import init_uniform, random_surrogate
from nte_eval.encoders import ENCODERS
from nte_eval.errors import NTEError

CHUNK = 256  # images per encoding / inference batch
SETTINGS = ("type", "params", "first_layer", "mean", "std", "input_size")  # the public settings it reads


def polyphase_factor(geometry: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    """The space-to-depth factor of the denoiser: the first layer's stride when it divides the image (so each cell
    holds one stride-by-stride phase of the NTE's structure), else 4, 2 or 1 per axis (only to save compute)."""
    stride = tuple(int(s) for s in geometry["stride"])
    if geometry["kind"] == "conv2d" and all(n % s == 0 for n, s in zip(size, stride, strict=True)):
        return stride
    return tuple(next(f for f in (4, 2, 1) if n % f == 0) for n in size)


def unshuffle(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*fh*fw, H/fh, W/fw): every fh x fw block becomes one cell's channels."""
    (b, c, h, w), (fh, fw) = x.shape, factor
    return x.reshape(b, c, h // fh, fh, w // fw, fw).permute(0, 1, 3, 5, 2, 4).reshape(b, c * fh * fw, h // fh, w // fw)


def shuffle(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``unshuffle``."""
    (b, cf, gh, gw), (fh, fw) = x.shape, factor
    c = cf // (fh * fw)
    return x.reshape(b, c, fh, fw, gh, gw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, gh * fh, gw * fw)


def dncnn(channels: int, depth: int, width: int, gen: torch.Generator) -> nn.Sequential:
    """conv-ReLU, (depth - 2) x conv-ReLU, conv (3x3, no normalisation layers), PyTorch's default init scale drawn
    from ``gen``; the last conv's weight starts at zero, so the untrained network outputs the mean image."""
    with torch.device("meta"):
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
    net = nn.Sequential(*layers).to_empty(device="cpu")
    init_uniform(net, gen)
    with torch.no_grad():
        net[-1].weight.zero_()
    return net


class LearnedDenoiser(Attack):
    """A DnCNN-style denoiser trained on NTEs the attacker makes for random surrogates of the designated geometry.

    Given (knowledge 'method'): the public clean images (``context.public``) and the encoder's public settings
    (``context.encoder``: encoder type and parameters, the designated architecture's first-layer geometry, its
    mean/std and input size). Not used: the designated weights, the key, the evaluated images, the released NTEs.

    Built: ``n_surrogates`` surrogate models, each with a fresh random first layer of the designated geometry (a
    Conv2d, or for kind 'linear' a Linear on the flattened image; PyTorch's default init scale), the designated
    mean/std, and a random head (ReLU, average pool, Linear to 10 classes) so that every encoder type runs, the
    logit-based 'adversarial' one included. The encoder ``context.encoder['type']`` with the public parameters then
    encodes ``pairs`` public images (drawn at random, split evenly over the surrogates, at least one each) under the
    attacker's own keys ``'learned_denoiser/{seed}/{surrogate}'``. A ``clean_share`` of the ``pairs`` are clean
    public images as their own targets, so that the network leaves clean content alone: trained on NTEs only, it
    cost unauthorized models 16-23 points of accuracy on clean digits at 0 dB; with half the pairs clean, 3-5 points,
    and it restores the NTEs no worse (its cost on clean images is part of its quality).

    The network is DnCNN's stack (conv-ReLU, ``depth - 2`` conv-ReLU, conv; ``width`` channels, no normalisation
    layers) on the space-to-depth view whose factor is the first layer's stride when it divides the image (each cell
    holds one stride-aligned block, where the NTE noise is structured; FFDNet-style), else 4, 2 or 1. Inputs are
    centred and scaled by the training NTEs' mean and standard deviation (unboxed NTE noise can dwarf the image),
    outputs by the clean images'. It outputs the clean image, so its noise estimate is input minus output: on the
    digits, predicting the noise itself (DnCNN's residual form) learned far slower within a CPU budget (Gaussian
    noise at 10 dB: 12 dB vs 26 dB after 1000 steps; at 30 dB no gain at all). Training: Adam, ``lr`` decayed by a
    cosine over ``steps`` batches of ``batch_size``, MSE. Everything is drawn from generators seeded by ``seed``:
    the same seed gives identical weights and outputs on CPU.
    """

    name = "learned_denoiser"
    knowledge = "method"
    steps: Annotated[int, Field(ge=1, le=100_000)] = 500
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    lr: Annotated[float, Field(gt=0, le=1)] = 3e-3
    depth: Annotated[int, Field(ge=2, le=30)] = 5
    width: Annotated[int, Field(ge=1, le=1024)] = 64
    n_surrogates: Annotated[int, Field(ge=1, le=4096)] = 16
    pairs: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    clean_share: Annotated[float, Field(ge=0, lt=1)] = 0.5
    seed: int = 0

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.net: nn.Sequential | None = None

    def fit(self, context: AttackContext) -> LearnedDenoiser:
        super().fit(context)
        settings, public = self.context.encoder, self.context.public.images
        missing = [k for k in SETTINGS if k not in settings]
        if missing:
            raise NTEError(f"learned_denoiser: context.encoder lacks {missing}; it needs {list(SETTINGS)}.")
        self.input_size = tuple(int(v) for v in settings["input_size"])
        self.factor = polyphase_factor(settings["first_layer"], self.input_size[1:])
        if tuple(public.shape[1:]) != self.input_size:
            raise NTEError(f"learned_denoiser: the public images are {tuple(public.shape[1:])}, the designated model "
                           f"takes {self.input_size}; give public images of the model's input size.")
        gen = torch.Generator().manual_seed(self.seed)
        n_clean = min(round(self.clean_share * self.pairs), self.pairs - 1)
        index, noisy = self.training_pairs(settings, public, gen, self.pairs - n_clean)
        plain = torch.randint(len(public), (n_clean,), generator=gen)  # clean in, clean out: leave content alone
        index, noisy = torch.cat([index, plain]), torch.cat([noisy, public[plain]])
        clean = public[index]
        self.in_center, self.in_scale = float(noisy.mean()), max(float(noisy.std()), 1e-6)
        self.out_center, self.out_scale = float(clean.mean()), max(float(clean.std()), 1e-6)
        self.net = self.train(public, index, noisy, gen)
        return self

    def state(self) -> dict[str, Any]:
        """The trained network's weights and the normalisation it was trained with."""
        return {"net": {k: v.cpu() for k, v in self.net.state_dict().items()}, "input_size": list(self.input_size),
                "factor": list(self.factor),
                "scales": [self.in_center, self.in_scale, self.out_center, self.out_scale]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.input_size, self.factor = tuple(state["input_size"]), tuple(state["factor"])
        self.in_center, self.in_scale, self.out_center, self.out_scale = state["scales"]
        net = dncnn(self.input_size[0] * self.factor[0] * self.factor[1], self.depth, self.width,
                    torch.Generator().manual_seed(self.seed))
        net.load_state_dict(state["net"])
        self.net = net.to(self.context.device).eval()

    def training_pairs(self, settings: dict[str, Any], public: torch.Tensor, gen: torch.Generator,
                       pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """About ``pairs`` public-image indices and their NTEs, made for random surrogates under the attacker's own
        keys."""
        per = math.ceil(pairs / self.n_surrogates)
        index, noisy = [], []
        for s in self.context.progress.bar(range(self.n_surrogates), desc="learned_denoiser: training pairs",
                                           unit="surrogate"):
            handle = random_surrogate(settings, gen, f"learned_denoiser-surrogate-{s}")
            encoder = ENCODERS.get(settings["type"])(handle, **settings["params"]).fit()
            idx = torch.randint(len(public), (per,), generator=gen)
            for i in range(0, per, CHUNK):
                res = encoder.encode(public[idx[i:i + CHUNK]], key=f"learned_denoiser/{self.seed}/{s}",
                                     index=list(range(i, min(i + CHUNK, per))), record=False)
                noisy.append(res.images)
            index.append(idx)
        return torch.cat(index), torch.cat(noisy)

    def train(self, public: torch.Tensor, index: torch.Tensor, noisy: torch.Tensor,
              gen: torch.Generator) -> nn.Sequential:
        """Fit the network to map normalised NTEs to normalised clean images."""
        device = self.context.device
        net = dncnn(self.input_size[0] * self.factor[0] * self.factor[1], self.depth, self.width, gen).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        for _ in self.context.progress.bar(range(self.steps), desc="learned_denoiser: training", unit="step"):
            b = torch.randint(len(index), (self.batch_size,), generator=gen)
            x, y = noisy[b].to(device), public[index[b]].to(device)
            loss = F.mse_loss(net(self.normalise(x)), unshuffle((y - self.out_center) / self.out_scale, self.factor))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        return net.eval()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> the network's input: centred, scaled, space-to-depth."""
        return unshuffle((x - self.in_center) / self.in_scale, self.factor)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise NTEError("learned_denoiser: call fit(context) first; it trains the denoiser.")
        if tuple(x.shape[1:]) != self.input_size:
            raise NTEError(f"learned_denoiser: trained for images {self.input_size}, got {tuple(x.shape[1:])}.")
        device = next(self.net.parameters()).device
        out = []
        for chunk in x.split(CHUNK):
            clean = shuffle(self.net(self.normalise(chunk.to(device))), self.factor)
            out.append((self.out_center + self.out_scale * clean).to(x.device, x.dtype))
        return torch.cat(out)
