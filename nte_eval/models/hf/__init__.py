"""Local Hugging Face ``transformers`` checkpoints (the optional extra ``pip install nte-eval[hf]``).

- ``hf:PATH``: an ``AutoModelForImageClassification`` folder (``vision.py``);
- ``hf-vlm:PATH``: a vision-language model, recoded for its vision tower and scored on multiple-choice questions
  (``vlm.py``);
- ``hf-text:PATH``: a sequence-classification (or sentence-embedding) text model whose first linear operator is its
  token embedding matrix (``text.py``).

Nothing is downloaded: every path is a local folder holding ``config.json`` and the weights.
"""

from __future__ import annotations

from typing import Any

from nte_eval.models.hf.folder import local_folder, require_transformers
from nte_eval.models.hf.text import from_hf_text
from nte_eval.models.hf.vision import from_hf
from nte_eval.models.hf.vlm import from_hf_vlm

HF_SCHEMES = ("hf", "hf-vlm", "hf-text")  # local Hugging Face checkpoints (the optional extra nte-eval[hf])


def load(scheme: str, path: str) -> Any:
    """Dispatch an ``hf``, ``hf-vlm`` or ``hf-text`` spec to its loader."""
    spec = f"{scheme}:{path}"
    folder = local_folder(path, spec)
    require_transformers().utils.logging.disable_progress_bar()  # nte-eval's own progress lines say what loads
    loader = {"hf": from_hf, "hf-vlm": from_hf_vlm, "hf-text": from_hf_text}[scheme]
    return loader(folder, spec)
