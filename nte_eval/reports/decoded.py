"""Decoded samples, the text counterpart of the image gallery: for the run's first texts (``examples/*.npy``, packed
soft tokens), the clean text, each encoder setting's NTE read back by argmax, and the reconstruction of the best
attack at or below each knowledge level (the gallery's rule), decoded with the designated model's tokenizer, or shown
as vocabulary ids when its folder is gone. Tokens that differ from the clean ones are marked «like this»; each line
gives its token recovery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nte_eval.data import tokens
from nte_eval.evaluate.run_folder import example_file
from nte_eval.reports.gallery import level_examples


def tokenizer_folder(config: dict) -> str | None:
    """The (first) designated model's folder from a run's suite config: ``hf-text:PATH`` or ``{hf-text: PATH}``."""
    spec = config.get("designated")
    spec = spec[0] if isinstance(spec, list) else spec
    if isinstance(spec, dict):
        return spec.get("hf-text")
    if isinstance(spec, str) and spec.startswith("hf-text:"):
        return spec.removeprefix("hf-text:")
    return None


def load_tokenizer(folder: str | None) -> Any | None:
    """The tokenizer saved in ``folder``, or None when there is none (folder gone, transformers not installed)."""
    if folder is None or not Path(folder).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ImportError, OSError, ValueError):
        return None


def _text(ids: list[int], tokenizer: Any | None) -> str:
    """Token ids as text (special tokens kept), or the ids themselves without a tokenizer."""
    if tokenizer is None:
        return " ".join(map(str, ids))
    return " ".join(tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(ids)).split())


def render(ids: list[int], clean: list[int], tokenizer: Any | None) -> str:
    """Tokens as text, each run of tokens equal to the clean ones decoded together, every other token «marked»."""
    pieces, run = [], []
    for token, reference in zip(ids, clean, strict=True):
        if token == reference:
            run.append(token)
            continue
        if run:
            pieces.append(_text(run, tokenizer))
            run = []
        pieces.append(f"«{_text([token], tokenizer)}»")
    if run:
        pieces.append(_text(run, tokenizer))
    return " ".join(pieces)


def _decoded(x: torch.Tensor, clean: torch.Tensor, tokenizer: Any | None) -> tuple[str, str]:
    """The token recovery of one text (a batch of one) and the text read back by argmax, padding skipped."""
    real = tokens.attention_mask(clean)[0] == 1
    ids = tokens.argmax_ids(x)[0][real].tolist()
    rate = f"{100 * float(tokens.recovered(x, clean)[0]):5.1f}%"
    return rate, render(ids, tokens.clean_ids(clean)[0][real].tolist(), tokenizer)


def decoded_lines(run_dir: Path, worst: pd.DataFrame, settings: pd.DataFrame, config: dict) -> list[str]:
    """The decoded-samples page as text lines: per example, the clean text, then per encoder setting its NTE and each
    knowledge level's best reconstruction (empty if the run kept no examples)."""
    clean_path = example_file(run_dir)
    if not clean_path.exists():
        return []
    clean = torch.from_numpy(np.load(clean_path))
    folder = tokenizer_folder(config)
    tokenizer = load_tokenizer(folder)
    source = (f"decoded with the designated model's tokenizer ({folder})" if tokenizer is not None else
              f"shown as vocabulary ids: the designated model's tokenizer ({folder}) could not be loaded")
    blocks = []
    for s in settings.itertuples(index=False):
        nte = example_file(run_dir, s.encoder, s.encoder_params)
        if not nte.exists():
            continue
        rows = [("NTE (released), read by argmax", torch.from_numpy(np.load(nte)))]
        rows += [(label, torch.from_numpy(np.load(path)))
                 for label, path in level_examples(run_dir, worst, s.encoder, s.encoder_params) if path.exists()]
        blocks.append((f"{s.designated}, {s.setting}", rows))
    lines = [f"The first {len(clean)} evaluated texts, {source}. Every line is read back by argmax (the largest "
             "entry of each soft token); «token» = differs from the clean token; % = token recovery (share of the "
             "text's tokens read back right); padding skipped. Best = the attack at or below that knowledge level "
             "that lifts an unauthorized model highest (that model and its accuracy named)."]
    width = max([len(label) for _, rows in blocks for label, _ in rows], default=0) + 4
    for i in range(len(clean)):
        ref = clean[i:i + 1]
        lines += ["", f"Text {i + 1}:", f"{'  clean':<{width}}  {'':6}  {_decoded(ref, ref, tokenizer)[1]}"]
        for name, rows in blocks:
            lines.append(f"  {name}:")
            for label, x in rows:
                rate, text = _decoded(x[i:i + 1], ref, tokenizer)
                lines.append(f"{'    ' + label:<{width}}  {rate}  {text}")
    return lines
