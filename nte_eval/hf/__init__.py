"""Local Hugging Face ``transformers`` checkpoints (the optional extra ``pip install nte-eval[hf]``).

- ``hf:PATH``: an ``AutoModelForImageClassification`` folder (``vision.py``);
- ``hf-vlm:PATH``: a vision-language model, recoded for its vision tower and scored on multiple-choice questions
  (``vlm.py``);
- ``hf-text:PATH``: a sequence-classification (or sentence-embedding) text model whose first linear operator is its
  token embedding matrix (``text.py``).

Nothing is downloaded: every path is a local folder holding ``config.json`` and the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nte_eval.errors import NTEError


def require_transformers() -> Any:
    """The ``transformers`` module, or an NTEError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise NTEError("Hugging Face models need the optional extra: pip install 'nte-eval[hf]' "
                       "(installs transformers).") from None
    return transformers


def local_folder(path: str, spec: str) -> Path:
    """``path`` as an existing local checkpoint folder with a config.json (no hub names: nothing is downloaded)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise NTEError(f"{spec}: {folder} is not a local folder. Hugging Face models load from local folders only "
                       "(nothing is downloaded); save one with model.save_pretrained(FOLDER) and point at it.")
    if not (folder / "config.json").is_file():
        raise NTEError(f"{spec}: {folder} has no config.json; point at the folder save_pretrained wrote.")
    return folder


def require_safetensors(folder: Path, spec: str) -> None:
    """An NTEError unless ``folder`` holds safetensors weights: pickled checkpoints can run code when loaded."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    raise NTEError(f"{spec}: {folder} has no safetensors weights" + (
        f", only pickle files ({', '.join(pickled)}), which can run code when loaded. Convert them once, in a trusted "
        "environment: loading the model with transformers and calling save_pretrained(FOLDER) writes "
        "model.safetensors." if pickled else "; save the model with model.save_pretrained(FOLDER)."))


def load(scheme: str, path: str) -> Any:
    """Dispatch an ``hf``, ``hf-vlm`` or ``hf-text`` spec to its loader."""
    spec = f"{scheme}:{path}"
    folder = local_folder(path, spec)
    require_transformers().utils.logging.disable_progress_bar()  # nte-eval's own progress lines say what loads
    if scheme == "hf":
        from nte_eval.hf.vision import from_hf

        return from_hf(folder, spec)
    if scheme == "hf-vlm":
        from nte_eval.hf.vlm import from_hf_vlm

        return from_hf_vlm(folder, spec)
    from nte_eval.hf.text import from_hf_text

    return from_hf_text(folder, spec)
