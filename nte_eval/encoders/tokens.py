"""Soft-token NTEs for text: one-hot rows plus noise in the null space of the designated embedding matrix.

Each token t becomes a soft row e_t + delta supported on a keyed random subset S of K vocabulary entries (t among
them, slots sorted by index so their order reveals nothing), with delta in the null space of E_S^T (K > d gives it
K - d dimensions). The designated model computes r E = E[t] exactly (up to float rounding); a model with another
embedding matrix E' over the same vocabulary computes E'[t] + delta E'_S, and reading the row back by argmax fails
once the noise outgrows the one-hot. Storage: K (index, weight) pairs per token (``tokens.bytes_per_example``).
"""

from __future__ import annotations

from typing import Any

import torch

from nte_eval.data import tokens
from nte_eval.encoders.base import PSNR, Encoder, EncodeResult, sample_seed
from nte_eval.errors import NTEError
from nte_eval.metrics import noise_norm_for_psnr, relative_change

CHUNK = 64  # positions per batched Gram solve (K x d float64 each)
REFINE = 6  # at most this many refinement steps of the null-space projection


class TokenNTEEncoder(Encoder):
    """Soft-token NTEs for a text model: noise on K keyed vocabulary entries per token, in the null space of E_S^T.

    ``psnr``: token PSNR in dB (peak 1; MSE per stored entry, see ``nte_eval.data.tokens``). ``support``: K, the stored
    entries per token; it must exceed the embedding dimension d (default 2 d, a null space of d dimensions).
    """

    name = "nte_tokens"
    modalities = ("text",)
    psnr: PSNR = 10.0
    support: int | None = None

    def __init__(self, handle: Any, **params: Any):
        if handle.modality != "text":
            raise NTEError(f"encoder 'nte_tokens' recodes text; {handle.spec} is an image model (use 'nte').")
        super().__init__(handle, **params)
        v, d = handle.embedding.shape
        if v > tokens.MAX_VOCAB:
            raise NTEError(f"nte_tokens: a vocabulary of {v} entries exceeds the {tokens.MAX_VOCAB} that packed soft "
                           "tokens index exactly (float32 indices).")
        self.support = 2 * d if self.support is None else self.support
        if not d < self.support <= v:
            raise NTEError(f"nte_tokens: support {self.support} must exceed the embedding dimension d = {d} (so that "
                           f"a null space exists) and not exceed the vocabulary ({v}).")

    def params(self) -> dict[str, Any]:
        """The declared parameters with ``support`` as used (its default, 2 d, depends on the model)."""
        return {**super().params(), "support": self.support}

    def public_settings(self) -> dict[str, Any]:
        v, dim = self.handle.embedding.shape
        return {"type": self.name, "params": self.params(), "view": None, "vocab_size": v, "embedding_dim": dim,
                "vocabulary": self.handle.vocabulary}

    def encode(self, x: torch.Tensor, key: int | str, index: torch.Tensor | list[int] | None = None,
               labels: torch.Tensor | None = None, record: bool = True) -> EncodeResult:
        """Encode clean packed tokens (N, L, 1, 2); ``index`` with ``key`` fixes each sample's subsets and noise.
        ``labels`` are not used; the embedding response ratio is always recorded (it is cheap)."""
        idx = self.indices(x, index)
        self.handle.check_input(x)
        table = self.handle.embedding
        ids, mask = tokens.clean_ids(x), tokens.attention_mask(x)
        subsets, noise = [], []
        for row, i in enumerate(idx):
            s, z = self._draw(ids[row][mask[row] == 1].cpu(), key, i, table.shape[0])
            subsets.append(s)
            noise.append(z)
        subset, z = torch.cat(subsets).to(table.device), torch.cat(noise).to(table.device)
        delta = torch.cat([null_project(table[subset[j:j + CHUNK]].double(), z[j:j + CHUNK])
                           for j in range(0, len(z), CHUNK)])
        target = noise_norm_for_psnr(self.psnr, self.support)  # per token: MSE per stored entry at the target
        delta = delta * (target / delta.norm(dim=1, keepdim=True).clamp_min(1e-30))
        weight = delta + (subset == ids[mask == 1][:, None].to(subset.device)).double()
        out = torch.zeros(*x.shape[:2], self.support, 2, device=x.device)
        out[mask == 1] = torch.stack([subset.float(), weight.float()], dim=-1).to(x.device)
        ratio = relative_change(tokens.embed(out, table), tokens.embed(x, table))
        info = {"modality": "text", "support": self.support, "embedding_dim": table.shape[1],
                "null_dim": self.support - table.shape[1],
                "bytes_per_example": float(tokens.bytes_per_example(out).mean())}
        return EncodeResult(out, tokens.token_psnr(out, x).float(), ratio.float(), {**info, "storable": True})

    def _draw(self, ids: torch.Tensor, key: int | str, i: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``i``'s keyed subsets (positions x K, sorted, each holding its token) and Gaussian noise."""
        gen = torch.Generator().manual_seed(sample_seed(key, i))
        scores = torch.rand(len(ids), vocab, generator=gen)
        scores[torch.arange(len(ids)), ids] = 2.0  # the token itself is always in its subset
        subset = scores.topk(self.support, dim=1).indices.sort(dim=1).values
        return subset, torch.randn(len(ids), self.support, generator=gen, dtype=torch.float64)


def null_project(rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Project each z (n, K) onto the null space of its E_S^T, where ``rows`` (n, K, d) holds E_S: z - E_S G^-1 E_S^T z
    with G = E_S^T E_S. G is factored in float32 (the cost: K d^2 per token) and the projection refined with
    float64 residuals until E_S^T z is at float64 rounding level."""
    rows32 = rows.float()
    factor, info = torch.linalg.cholesky_ex(rows32.transpose(1, 2) @ rows32)
    if bool(info.any()):
        raise NTEError("nte_tokens: a token subset's embedding rows are linearly dependent (the embedding matrix "
                       "is rank-deficient on it); use a larger support.")
    scale = rows.norm(dim=(1, 2))
    for _ in range(REFINE + 1):
        residual = (rows.transpose(1, 2) @ z[..., None])
        if bool((residual.norm(dim=(1, 2)) <= 1e-12 * scale * z.norm(dim=1)).all()):
            return z
        z = z - (rows @ torch.cholesky_solve(residual.float(), factor).double())[..., 0]
    raise NTEError(f"nte_tokens: the null-space projection did not converge in {REFINE} refinement steps (an "
                   "ill-conditioned embedding subset); use a larger support.")
