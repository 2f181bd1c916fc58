"""``tile_average`` (knowledge 'method'): against tiled noise, the reference encoder's one noise vector repeated in
every patch, which averaging over an image's tiles reveals."""

from __future__ import annotations

import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.attacks.subspace.estimate import gap_rank, noise_directions
from nte_eval.attacks.subspace.prior import moments, ridged
from nte_eval.attacks.subspace.view import View


class TileAverage(Attack):
    """Against tiled noise (one vector in every patch): estimates the repeated pattern per image and removes it.

    The pattern: the mean over the image's tiles of (tile - public mean tile at that position).

    Tiles are the designated layer's stride (the period of tiled noise; the kernel for patchify layers).
    ``shrink``: weigh the estimate per direction by how much of its variance over the NTE corpus is noise rather
    than the clean images' own tile averages (a Wiener weight, from public images and the corpus), so that the
    images' own content is kept. Only the directions above the spectrum's largest gap (the noise rank, found as
    ``blind_subspace`` finds it) are weighed: below it the corpus differs from public tile averages only by
    sampling and by how the released images differ from the public ones, and weighing those directions took each
    image's own colour (on natural-image crops it cost unauthorized models 3-8 points of accuracy on clean images;
    now at most 1). With a single tile (a Linear layer) there is nothing to average: images pass.
    """

    name = "tile_average"
    knowledge = "method"
    shrink: bool = True

    def fit(self, context: AttackContext) -> TileAverage:
        super().fit(context)
        settings = self.context.encoder
        self.view = View(tuple(settings["input_size"]), tuple(settings["first_layer"]["stride"]))
        self.mean = self.context.public.images.double().mean(0, keepdim=True)
        self.weight = None
        if self.shrink and self.view.tiles > 1:
            public, ntes = self.context.public.images, self.context.ntes
            self.view.check(ntes)
            clean = moments(self.pattern(public), public.shape[0])[None, None]
            lam, dirs = noise_directions(clean, self.pattern(ntes)[None, None], ntes.shape[0])
            gain = ((lam - 1) / lam.clamp_min(1e-30)).clamp(0, 1)  # noise share of each direction's variance
            gain[..., gap_rank(lam):] = 0
            dual = torch.cholesky_solve(dirs, torch.linalg.cholesky(ridged(clean)))
            self.weight = ((dirs * gain[..., None, :]) @ dual.mH)[0, 0]
        return self

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        """Per image, the mean over its tiles of the deviation from the public mean image: (B, n)."""
        return self.view.patches(x.double() - self.mean).view(x.shape[0], -1, self.view.n).mean(1)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.view.check(x)
        x = x.to(self.mean.device)  # fitted on the context's (CPU) tensors
        if self.view.tiles == 1:
            return x
        pattern = self.pattern(x) if self.weight is None else self.pattern(x) @ self.weight.T
        (th, tw), (gh, gw), c = self.view.tile, self.view.grid, x.shape[1]
        tile = pattern.view(-1, 1, 1, c, th, tw).permute(0, 3, 1, 4, 2, 5).expand(-1, c, gh, th, gw, tw)
        out = self.view.pad(x.double()) - tile.reshape(x.shape[0], c, gh * th, gw * tw)
        return out[..., :x.shape[2], :x.shape[3]].to(x.dtype)
