"""Attacks on soft-token NTEs (``nte_eval.tokens``): read each soft row back as one token.

- ``argmax_decode`` (knowledge none): the token with the largest weight, what a reader without any model does.
- Embedding decoding, used by ``oracle_projection`` (the designated embedding matrix) and ``surrogate_projection``
  (the surrogates' matrices over the same vocabulary): map the row into embedding space, r E', and pick the stored
  entry whose embedding is nearest. With the designated E this recovers every token exactly (r E = E[t]); with another
  model's E' it succeeds only as far as E' shares E's null space, e.g. after fine-tuning from the same checkpoint.
"""

from __future__ import annotations

import torch

from nte_eval import tokens
from nte_eval.attacks.base import Attack

CHUNK = 32  # positions whose K candidate embedding rows are compared at once


class ArgmaxDecode(Attack):
    """Reads each soft token back as its largest-weight vocabulary entry (no model, no key)."""

    name = "argmax_decode"
    knowledge = "none"
    modalities = ("text",)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return tokens.hard(tokens.argmax_ids(x), tokens.attention_mask(x), x.shape[2])


class EmbeddingDecoder:
    """Nearest stored entry in the embedding space of one or more matrices (V x d_i) over one vocabulary."""

    def __init__(self, tables: list[torch.Tensor]):
        self.tables = [t.detach() for t in tables]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Hard tokens: per position, the slot whose embedding rows (all tables, concatenated) lie nearest r E."""
        idx = tokens.indices(x).reshape(-1, x.shape[2])  # (P, K)
        dist = torch.zeros(idx.shape, dtype=torch.float64, device=x.device)
        for table in self.tables:
            table = table.to(x.device, torch.float64)
            target = tokens.embed(x.double(), table).reshape(len(idx), -1)  # (P, d)
            for i in range(0, len(idx), CHUNK):  # (CHUNK, K, d) gathered rows at a time
                rows = table[idx[i:i + CHUNK]]
                dist[i:i + CHUNK] += (rows - target[i:i + CHUNK, None]).pow(2).sum(-1)
        ids = idx.gather(-1, dist.argmin(-1, keepdim=True)).reshape(x.shape[:2])
        return tokens.hard(ids, tokens.attention_mask(x), x.shape[2])
