"""Soft tokens: text as sparse rows over the vocabulary, the text counterpart of pixels.

A text model reads token t through its embedding matrix E (V x d): the one-hot row e_t times E. A soft token is any
row r over the vocabulary; the model reads r E. nte-eval stores each row sparsely, as K (vocabulary index, weight)
slots, packed into one float tensor so that batches slice, move and concatenate like images:

    x: (N, L, K, 2); x[..., 0] = vocabulary index (an integer value), x[..., 1] = weight.

A clean token is one slot (t, 1). A position whose weights are all zero is padding (attention mask 0). Indices are
stored as float32, exact for vocabularies up to 2**24 entries.

Token PSNR (peak 1, the one-hot's height): 10 log10(1 / MSE), with MSE the squared distance of each soft row to the
clean one-hot row, divided by the K stored entries per token, averaged over the sample's real (non-padding)
positions. So "0 dB" means noise with unit RMS on every stored entry, as large as the token's own one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nte_eval.errors import NTEError
from nte_eval.metrics import psnr_from_mse

MAX_VOCAB = 2**24  # float32 represents every integer index below this exactly


def pack(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Clean tokens (N, L) with attention mask (N, L) as packed one-slot soft tokens (N, L, 1, 2)."""
    weight = mask.to(torch.float32)
    return torch.stack([ids.to(torch.float32) * weight, weight], dim=-1)[:, :, None, :]


def check_tokens(x: torch.Tensor, vocab: int, what: str = "tokens") -> None:
    """Raise NTEError unless ``x`` is a finite packed soft-token tensor with indices in [0, vocab)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise NTEError(f"{what}: expected packed soft tokens (N, L, K, 2), got {shape}.")
    if not torch.isfinite(x).all():
        raise NTEError(f"{what}: soft tokens contain NaN or infinite values.")
    idx = x[..., 0]
    if (idx < 0).any() or (idx >= vocab).any() or (idx != idx.round()).any():
        raise NTEError(f"{what}: vocabulary indices must be integers in [0, {vocab}); the tokens do not belong to "
                       "this model's vocabulary (a tokenizer mismatch?).")


def indices(x: torch.Tensor) -> torch.Tensor:
    """The slots' vocabulary indices as int64 (N, L, K)."""
    return x[..., 0].round().long()


def attention_mask(x: torch.Tensor) -> torch.Tensor:
    """1 where a position holds a token (some nonzero weight), 0 for padding: (N, L) int64."""
    return (x[..., 1] != 0).any(-1).long()


def embed(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """r E for every position: the weighted sum of the slots' embedding rows, (N, L, d)."""
    n, length, k, _ = x.shape
    flat = indices(x).reshape(-1, k)
    out = F.embedding_bag(flat, table, per_sample_weights=x[..., 1].reshape(-1, k).to(table.dtype), mode="sum")
    return out.reshape(n, length, -1)


def hard(ids: torch.Tensor, mask: torch.Tensor, slots: int) -> torch.Tensor:
    """Hard tokens (N, L) in ``slots`` slots: the token with weight 1 in slot 0, the other slots empty."""
    out = torch.zeros(*ids.shape, slots, 2, device=ids.device)
    out[..., 0, :] = pack(ids, mask)[..., 0, :]
    return out


def argmax_ids(x: torch.Tensor) -> torch.Tensor:
    """Per position, the index of the largest weight: reading a soft token back as the token it looks most like."""
    best = x[..., 1].argmax(-1, keepdim=True)
    return indices(x).gather(-1, best)[..., 0]


def clean_ids(clean: torch.Tensor) -> torch.Tensor:
    """The token ids of clean one-slot tokens (N, L)."""
    if clean.shape[2] != 1:
        raise NTEError(f"clean tokens have one slot per position, got {clean.shape[2]}.")
    return indices(clean)[..., 0]


def squared_error(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """||r - e_t||^2 per position (N, L) for soft rows ``x`` against the clean one-hot rows (0 at padding).

    Slots with a nonzero weight hold distinct indices (as the encoder and attacks write them); slots of t add up.
    """
    idx, w = indices(x), x[..., 1].double()
    hit = idx == clean_ids(clean)[..., None]
    err = (w * ~hit).pow(2).sum(-1) + ((w * hit).sum(-1) - 1) ** 2
    return err * attention_mask(clean)


def token_psnr(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Token PSNR in dB per sample (see the module docstring): peak 1, MSE per stored entry over real positions."""
    real = attention_mask(clean).sum(1).clamp_min(1).double()
    return psnr_from_mse(squared_error(x, clean).sum(1) / (real * x.shape[2]))


def recovered(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per sample, the fraction of real positions whose argmax token is the clean token."""
    mask = attention_mask(clean)
    same = (argmax_ids(x) == clean_ids(clean)) & (mask == 1)
    return same.sum(1).double() / mask.sum(1).clamp_min(1).double()


def bytes_per_example(x: torch.Tensor) -> torch.Tensor:
    """Storage of each example in the sparse format: per real position K int32 indices and K float32 weights."""
    return attention_mask(x).sum(1).double() * x.shape[2] * 8
