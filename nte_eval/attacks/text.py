"""Attacks on soft-token NTEs (``nte_eval.data.tokens``): read each soft row back as one token.

- ``argmax_decode`` (knowledge none): the token with the largest weight, what a reader without any model does.
- ``prior_decode`` (knowledge method): knowing that the token is one of the stored entries, weigh each entry by how
  common it is in public text (a unigram prior) and by how much its weight exceeds the noise: the stored subsets
  are drawn uniformly from the vocabulary, so the real token tends to be the common word among rare decoys.
- Embedding decoding, used by ``oracle_projection`` (the designated embedding matrix) and ``surrogate_projection``
  (the surrogates' matrices over the same vocabulary): map the row into embedding space, r E', and pick the stored
  entry whose embedding is nearest. With the designated E this recovers every token exactly (r E = E[t]); with another
  model's E' it succeeds only as far as E' shares E's null space, e.g. after fine-tuning from the same checkpoint.
"""

from __future__ import annotations

import torch

from nte_eval.attacks.base import Attack
from nte_eval.attacks.context import AttackContext
from nte_eval.data import tokens

CHUNK = 32  # positions whose K candidate embedding rows are compared at once


class ArgmaxDecode(Attack):
    """Reads each soft token back as its largest-weight vocabulary entry (no model, no key)."""

    name = "argmax_decode"
    knowledge = "none"
    modalities = ("text",)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return tokens.hard(tokens.argmax_ids(x), tokens.attention_mask(x), x.shape[2])


class PriorDecode(Attack):
    """Picks each soft token's stored entry by a unigram prior from public text plus the evidence of its weight."""

    name = "prior_decode"
    knowledge = "method"
    modalities = ("text",)

    def fit(self, context: AttackContext) -> PriorDecode:
        super().fit(context)
        public = self.context.public.images
        mask = tokens.attention_mask(public) == 1
        vocab = int(tokens.indices(public).max()) + 1
        counts = torch.bincount(tokens.clean_ids(public)[mask], minlength=vocab).double()
        self.log_prior = torch.log(counts + 1.0)  # add-one smoothing; unseen ids beyond the public range score 0
        return self

    def run(self, x: torch.Tensor) -> torch.Tensor:
        idx, w = tokens.indices(x), x[..., 1].double()
        prior = self.log_prior.to(x.device)
        log_prior = torch.where(idx < len(prior), prior[idx.clamp_max(len(prior) - 1)], torch.zeros_like(w))
        # The token's entry is 1 + noise, the others noise: log-likelihood ratio (2w - 1) / (2 s^2), with s^2 the
        # row's mean square weight (the noise variance, up to the one-hot's 1 / K).
        var = w.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
        score = log_prior + (2 * w - 1) / (2 * var)
        ids = idx.gather(-1, score.argmax(-1, keepdim=True))[..., 0]
        return tokens.hard(ids, tokens.attention_mask(x), x.shape[2])


class EmbeddingDecoder:
    """Nearest stored entry in the embedding space of one or more matrices (V x d_i) over one vocabulary."""

    def __init__(self, tables: list[torch.Tensor]):
        self.tables = [t.detach().double() for t in tables]  # once, not per batch

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Hard tokens: per position, the slot whose embedding rows (all tables, concatenated) lie nearest r E."""
        idx = tokens.indices(x).reshape(-1, x.shape[2])  # (P, K)
        dist = torch.zeros(idx.shape, dtype=torch.float64, device=x.device)
        for table in self.tables:
            table = table.to(x.device)
            target = tokens.embed(x.double(), table).reshape(len(idx), -1)  # (P, d)
            for i in range(0, len(idx), CHUNK):  # (CHUNK, K, d) gathered rows at a time
                rows = table[idx[i:i + CHUNK]]
                dist[i:i + CHUNK] += (rows - target[i:i + CHUNK, None]).pow(2).sum(-1)
        ids = idx.gather(-1, dist.argmin(-1, keepdim=True)).reshape(x.shape[:2])
        return tokens.hard(ids, tokens.attention_mask(x), x.shape[2])
