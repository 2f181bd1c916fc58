"""``hf-text:PATH``: a local Hugging Face text model whose first linear operator is its token embedding matrix.

The model reads packed soft tokens (``nte_eval.data.tokens``) as ``inputs_embeds = r E``, which for one-hot rows is
exactly what it computes from token ids. That equivalence is checked when the model loads, so a model that reads its
tokens any other way (scaled embeddings, extra token-id inputs) is refused instead of silently mis-evaluated.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nte_eval.data import tokens
from nte_eval.errors import NTEError
from nte_eval.models.hf.folder import require_safetensors

TESTED_FAMILIES = ("bert (incl. MiniLM)", "roberta", "deberta", "deberta-v2", "distilbert")


class TextHandle:
    """A text classifier (or sentence encoder) over soft tokens, with its tokenizer and embedding matrix E.

    Sentence pairs: the tokenizer's segment ids (``token_type_ids``) are per-sample side information, bound with
    ``bind(extras)`` like a VLM's questions and read at the positions ``index`` that ``logits`` receives.
    """

    modality = "text"

    def __init__(self, model: nn.Module, tokenizer: Any, spec: str, max_length: int = 128):
        self.module = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = int(max_length)
        config = model.config
        self.classifier = hasattr(model, "classifier") or hasattr(model, "score")
        labels = getattr(config, "id2label", None) or {}
        self.class_names = [str(labels[i]) for i in sorted(labels)] if self.classifier and labels else None
        self.num_classes = len(self.class_names) if self.class_names else None
        self.uses_segments = (getattr(config, "type_vocab_size", 1) or 1) > 1
        self.segments: list[list[int]] | None = None
        self.memo: dict[Any, Any] = {}
        check_embedding_input(self)

    @property
    def embedding(self) -> torch.Tensor:
        """E, (V, d): row t is what the model reads for token t."""
        return self.module.get_input_embeddings().weight.detach()

    @property
    def vocab_size(self) -> int:
        """V, the rows of E (the tokenizer may have a few fewer: embeddings are often padded)."""
        return self.embedding.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.embedding.device

    def to(self, device: str | torch.device) -> TextHandle:
        """Move the model (in place) and return self."""
        self.module.to(device)
        self.memo.clear()
        return self

    @functools.cached_property
    def vocabulary(self) -> str:
        """A fingerprint of the tokenizer's vocabulary (token -> id): NTEs are only comparable across equal ones."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()[:16]

    def _encode(self, texts: list[str], pairs: list[str] | None) -> Any:
        return self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt", return_token_type_ids=True)

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
        """Clean packed tokens (N, L, 1, 2), padded to the longest text and truncated at ``max_length``."""
        enc = self._encode(texts, pairs)
        return tokens.pack(enc["input_ids"], enc["attention_mask"])

    def segment_ids(self, texts: list[str], pairs: list[str] | None = None) -> list[list[int]]:
        """Each text's segment ids as ``tokenize`` lays it out (0 for the first text, 1 for a pair's second)."""
        return self._encode(texts, pairs)["token_type_ids"].tolist()

    def bind(self, extras: list[dict]) -> TextHandle:
        """Set each sample's segment ids (``extras[i]['segments']``), for the sentence-pair tasks."""
        self.segments = [list(e["segments"]) for e in extras]
        return self

    def _segment_ids(self, x: torch.Tensor, index: list[int] | None) -> dict[str, torch.Tensor]:
        """``token_type_ids`` for a batch, when the model has segment embeddings and segments are bound."""
        if not self.uses_segments or self.segments is None:
            return {}
        if index is None:
            raise NTEError(f"{self.spec}: segment ids are bound for {len(self.segments)} samples; pass the batch's "
                           "sample positions (index) so that each text gets its own.")
        rows = [self.segments[i][:x.shape[1]] + [0] * (x.shape[1] - len(self.segments[i])) for i in index]
        return {"token_type_ids": torch.tensor(rows, device=self.device)}

    def check_input(self, x: torch.Tensor) -> None:
        """Packed soft tokens over this model's vocabulary (shape, finiteness, index range)."""
        tokens.check_tokens(x, self.vocab_size, self.spec)

    def _run(self, x: torch.Tensor, index: list[int] | None = None, **kwargs: Any) -> Any:
        self.check_input(x)
        x = x.to(self.device)
        embeds = tokens.embed(x, self.embedding)
        return self.module(inputs_embeds=embeds, attention_mask=tokens.attention_mask(x),
                           **self._segment_ids(x, index), **kwargs)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Class logits for packed soft tokens (``index``: the samples' positions, for their segment ids)."""
        if not self.classifier:
            raise NTEError(f"{self.spec}: has no classification head (its config's architectures are "
                           f"{self.module.config.architectures}); a suite needs *ForSequenceClassification models.")
        return self._run(x, index).logits

    @torch.no_grad()
    def features(self, x: torch.Tensor, index: list[int] | None = None) -> torch.Tensor:
        """Sentence embeddings: the mean of the last hidden states over real tokens, L2-normalised (as
        sentence-transformers' all-MiniLM-L6-v2 computes them)."""
        out = self._run(x, index, output_hidden_states=self.classifier)
        hidden = out.hidden_states[-1] if self.classifier else out.last_hidden_state
        mask = tokens.attention_mask(x).to(hidden)[..., None]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(mean, dim=-1)

    @torch.no_grad()
    def first_layer_response(self, x: torch.Tensor) -> torch.Tensor:
        """r E per position: what the model's first linear operator makes of the soft tokens, (N, L, d)."""
        return tokens.embed(x.to(self.device), self.embedding)

    @torch.no_grad()
    def first_layer_change(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """A(x) - A(reference): packed soft tokens (indices and weights) are no vector space, so two responses."""
        return self.first_layer_response(x) - self.first_layer_response(reference)

    def describe(self) -> dict[str, Any]:
        v, d = self.embedding.shape
        return {"spec": self.spec, "modality": "text", "model_type": self.module.config.model_type,
                "layer": "input embeddings", "kind": "embedding", "vocab_size": v, "embedding_dim": d,
                "max_length": self.max_length, "vocabulary": self.vocabulary}

    def __repr__(self) -> str:
        return f"TextHandle({self.spec!r}, vocab={self.vocab_size})"


@torch.no_grad()
def check_embedding_input(handle: TextHandle) -> None:
    """Raise NTEError unless the model computes the same from token ids as from ``inputs_embeds = E[ids]``."""
    model, spec = handle.module, handle.spec
    v = handle.vocab_size
    ids = torch.randint(0, v, (2, 8), generator=torch.Generator().manual_seed(0)).to(handle.device)
    mask = torch.ones_like(ids)
    try:
        a = model(input_ids=ids, attention_mask=mask)
        b = model(inputs_embeds=handle.embedding[ids], attention_mask=mask)
    except (TypeError, ValueError) as e:
        raise NTEError(f"{spec}: the model does not accept inputs_embeds ({e}); soft-token NTEs need a model that "
                       f"reads tokens through its input embedding matrix (tested: {', '.join(TESTED_FAMILIES)}).") \
            from None
    key = "logits" if handle.classifier else "last_hidden_state"
    x, y = getattr(a, key), getattr(b, key)
    if float((x - y).abs().max()) > 1e-4 * (1 + float(x.abs().max())):
        raise NTEError(f"{spec}: the model ({model.config.model_type}) computes something else from token ids "
                       "than from their embedding rows (e.g. it scales embeddings or reads the ids elsewhere), so "
                       f"soft tokens cannot be evaluated on it. Tested families: {', '.join(TESTED_FAMILIES)}; for "
                       "another model wrap it so that it reads inputs_embeds only.")


def from_hf_text(folder: Path, spec: str) -> TextHandle:
    """Load a local text model (a sequence classifier, or a bare encoder for sentence embeddings) and its tokenizer,
    in float32 (soft tokens are exact only at full precision)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    custom = (f"Tested families: {', '.join(TESTED_FAMILIES)}. For another model use the Python API: "
              "TextHandle(model, tokenizer, spec) with any model that reads inputs_embeds.")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise NTEError(f"{spec}: transformers cannot read {folder}/config.json ({str(e).splitlines()[0]}). "
                       f"{custom}") from None
    archs = getattr(config, "architectures", None) or []
    head = any(a.endswith("ForSequenceClassification") for a in archs)
    require_safetensors(folder, spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise NTEError(f"{spec}: no usable tokenizer in {folder} ({str(e).splitlines()[0]}); save it beside the "
                       "model with tokenizer.save_pretrained(folder).") from None
    loader = AutoModelForSequenceClassification if head else AutoModel
    try:
        model, info = loader.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                             dtype=torch.float32, output_loading_info=True)
    except (ValueError, RuntimeError, OSError) as e:
        raise NTEError(f"{spec}: transformers cannot build a {'classifier' if head else 'text model'} for model "
                       f"type {config.model_type!r}: {str(e).splitlines()[0]}. {custom}") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise NTEError(f"{spec}: the checkpoint lacks {len(missing)} weight(s) of {type(model).__name__} (e.g. "
                       f"{missing[0]}), which would be random; save the complete fine-tuned model.")
    if not isinstance(model.get_input_embeddings(), nn.Embedding):
        raise NTEError(f"{spec}: its input embeddings are {type(model.get_input_embeddings()).__name__}, not an "
                       f"nn.Embedding matrix. {custom}")
    rows = model.get_input_embeddings().weight.shape[0]
    if not rows / 2 <= len(tokenizer) <= rows:
        raise NTEError(f"{spec}: the tokenizer in {folder} has {len(tokenizer)} tokens for {rows} embedding rows; it "
                       "is not this model's tokenizer (missing tokenizer files load a default one). Save the model's "
                       "own with tokenizer.save_pretrained(folder).")
    return TextHandle(model, tokenizer, spec)
