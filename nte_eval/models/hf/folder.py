"""Local Hugging Face folders: the optional ``transformers`` import, folder checks and the safetensors requirement."""

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
