"""The model zoo: small timm classifiers trained on the bundled digits, one per first-layer geometry, and three
(``tex_*``) trained on the bundled textures (natural-image crops), so that attacks meet natural image statistics.

Every model takes 3x32x32 pixel-space input, has 10 classes and uses the same normalisation ``ZOO_MEAN``/``ZOO_STD``.
Weights ship in ``weights/NAME.safetensors``; ``weights/zoo.json`` records test accuracy and training time.
Retrain with ``nte-eval zoo train`` (deterministic on CPU, a few minutes on two cores).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nte_eval.data.textures import TEXTURE_PHOTOS
from nte_eval.errors import NTEError, did_you_mean
from nte_eval.geometry.subspace import natural_view, null_dimension
from nte_eval.models.checkpoint import apply_checkpoint
from nte_eval.models.handle import ModelHandle

ZOO_MEAN = (0.5, 0.5, 0.5)  # one normalisation for every zoo model: u = (x - 0.5) / 0.25 maps [0, 1] to [-2, 2]
ZOO_STD = (0.25, 0.25, 0.25)
ZOO_INPUT_SIZE = (3, 32, 32)
ZOO_DATA = {"digits": [str(i) for i in range(10)], "textures": [c for c, _ in TEXTURE_PHOTOS]}  # the classes
ZOO_DIR_ENV = "NTE_EVAL_ZOO_DIR"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it, where its first linear operator is, and how it is trained."""

    name: str
    arch: str
    description: str
    build: Callable[[], nn.Module]
    first_layer: str
    seed: int
    epochs: int = 30
    lr: float = 2e-3
    data: str = "digits"  # the bundled data set it is trained on (a key of ZOO_DATA)


def _vit(embed_dim: int, num_heads: int = 2) -> nn.Module:
    """A 3-block timm ViT with 4x4 patches on 32x32 input (8x8 tokens), max-pooled tokens, no class token."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=4, embed_dim=embed_dim, depth=3, num_heads=num_heads,
                             mlp_ratio=2.0, num_classes=10, class_token=False, global_pool="max", pre_norm=True)


def build_vit_null() -> nn.Module:
    """Patch embedding Conv2d(3, 32, 4, stride 4): d = 48 > m = 32, a 16-dim exact null space per patch."""
    return _vit(32)


def build_vit_wide() -> nn.Module:
    """Patch embedding Conv2d(3, 64, 4, stride 4): d = 48 <= m = 64, only small-singular-value directions."""
    return _vit(64)


def build_resnet_stem() -> nn.Module:
    """timm ResNet (BasicBlock, one block per stage) with the ResNet-50 stem Conv2d(3, 64, 7, stride 2, pad 3)."""
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), num_classes=10)


def build_resnet_nullstem() -> nn.Module:
    """timm ResNet with a deep stem whose first conv is Conv2d(3, 16, 6, stride 4, pad 1); no stem max-pool."""
    from timm.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16, stem_type="deep",
                   num_classes=10)
    model.conv1[0] = nn.Conv2d(3, 16, kernel_size=6, stride=4, padding=1, bias=False)  # 32x32 -> 8x8
    model.maxpool = nn.Identity()
    return model


def build_convnext_patchify() -> nn.Module:
    """timm ConvNeXt, patchify stem Conv2d(3, 64, 4, stride 4), one block per stage, no layer scale.

    Output stride 16 (the last stage is dilated, 2x2 map) with global max pooling: trains reliably on the digits.
    """
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(64, 64, 96, 128), patch_size=4, ls_init_value=None,
                    output_stride=16, global_pool="max", num_classes=10)


def build_mlp_linear() -> nn.Module:
    """Flatten + timm Mlp(3072 -> 128 -> 10): the first layer is a Linear on all pixels."""
    from timm.layers import Mlp

    return nn.Sequential(nn.Flatten(), Mlp(3 * 32 * 32, 128, 10))


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("vit_null", "timm VisionTransformer (patch 4, dim 32, depth 3)",
             "ViT whose patch embedding has an exact null space (d = 48 > m = 32, stride == kernel)",
             build_vit_null, "patch_embed.proj", seed=0, epochs=60, lr=3e-3),
    ZooEntry("vit_null_s1", "timm VisionTransformer (patch 4, dim 32, depth 3)",
             "same architecture as vit_null, different training seed",
             build_vit_null, "patch_embed.proj", seed=1, epochs=60, lr=3e-3),
    ZooEntry("vit_wide", "timm VisionTransformer (patch 4, dim 64, depth 3)",
             "ViT with d = 48 <= m = 64: no exact null space, only small-singular-value directions",
             build_vit_wide, "patch_embed.proj", seed=0, epochs=40, lr=3e-3),
    ZooEntry("resnet_stem", "timm ResNet (BasicBlock, 1-1-1-1, 7x7/2 stem)",
             "ResNet-50-style overlapping stem 7x7 stride 2 pad 3, 3 -> 64 (no exact image-space null space)",
             build_resnet_stem, "conv1", seed=0, epochs=25, lr=3e-3),
    ZooEntry("resnet_nullstem", "timm ResNet (BasicBlock, 1-1-1-1, deep stem, 6x6/4 first conv)",
             "overlapping stem 6x6 stride 4 pad 1, 3 -> 16: C*s^2 = 48 > 16, an exact image-space null space",
             build_resnet_nullstem, "conv1.0", seed=0, epochs=25, lr=3e-3),
    ZooEntry("convnext_patchify", "timm ConvNeXt (depths 1-1-1-1, dims 64-64-96-128)",
             "patchify stem 4x4 stride 4, 3 -> 64 (d = 48 <= m = 64, like ConvNeXt-T's 48 -> 96)",
             build_convnext_patchify, "stem.0", seed=0, epochs=30, lr=2e-3),
    ZooEntry("mlp_linear", "Flatten + timm Mlp (3072 -> 128 -> 10)",
             "first layer is a Linear on the flattened image (a full-image kernel)",
             build_mlp_linear, "1.fc1", seed=0, epochs=40, lr=1e-3),
    ZooEntry("tex_vit_null", "timm VisionTransformer (patch 4, dim 32, depth 3)",
             "vit_null's architecture trained on the textures (exact 16-dim null space per patch)",
             build_vit_null, "patch_embed.proj", seed=0, epochs=60, lr=3e-3, data="textures"),
    ZooEntry("tex_resnet_stem", "timm ResNet (BasicBlock, 1-1-1-1, 7x7/2 stem)",
             "resnet_stem's architecture trained on the textures (overlapping 7x7/2 stem)",
             build_resnet_stem, "conv1", seed=0, epochs=25, lr=3e-3, data="textures"),
    ZooEntry("tex_convnext_patchify", "timm ConvNeXt (depths 1-1-1-1, dims 64-64-96-128)",
             "convnext_patchify's architecture trained on the textures (patchify 4x4/4 stem, 48 -> 64)",
             build_convnext_patchify, "stem.0", seed=0, epochs=30, lr=2e-3, data="textures"),
]}


def weights_dir() -> Path:
    """The folder holding the zoo weights and zoo.json (``$NTE_EVAL_ZOO_DIR`` overrides the packaged one)."""
    env = os.environ.get(ZOO_DIR_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "weights"


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or an NTEError listing the zoo."""
    if name not in ZOO:
        raise NTEError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}.{did_you_mean(name, ZOO)}")
    return ZOO[name]


def build_module(entry: ZooEntry) -> nn.Module:
    """Build the untrained module from its seed without touching the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        return entry.build()


def make_handle(module: nn.Module, entry: ZooEntry) -> ModelHandle:
    """Wrap a zoo module in a pixel-space ModelHandle with the zoo normalisation."""
    return ModelHandle(module, entry.first_layer, ZOO_MEAN, ZOO_STD, ZOO_INPUT_SIZE, list(ZOO_DATA[entry.data]),
                       spec=f"zoo:{entry.name}")


def load_zoo_model(name: str) -> ModelHandle:
    """Build zoo model ``name`` and load its shipped weights (``weights_dir()/NAME.safetensors``)."""
    entry = get_entry(name)
    path = weights_dir() / f"{name}.safetensors"
    if not path.is_file():
        where = f" (${ZOO_DIR_ENV} = {os.environ[ZOO_DIR_ENV]})" if os.environ.get(ZOO_DIR_ENV) else ""
        raise NTEError(f"zoo:{name}: weights {path} not found{where}; run `nte-eval zoo train` to train the zoo "
                       "(a few minutes on CPU).")
    module = build_module(entry)
    apply_checkpoint(module, path, f"zoo:{name}")
    return make_handle(module, entry)


def read_zoo_json(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Training records per model from ``zoo.json`` ({} when the file does not exist)."""
    path = (folder or weights_dir()) / "zoo.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["models"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise NTEError(f"{path} is not a valid zoo.json ({e}); retrain with `nte-eval zoo train`.") from None


def zoo_table() -> list[dict[str, Any]]:
    """One row per zoo model: first-layer geometry, exact null-space dimension, test accuracy, training time."""
    records = read_zoo_json()
    rows = []
    for name, entry in ZOO.items():
        trained = (weights_dir() / f"{name}.safetensors").is_file()
        handle = load_zoo_model(name) if trained else make_handle(build_module(entry), entry)
        first = handle.first
        rec = records.get(name, {})
        rows.append({"name": name, "arch": entry.arch, **first.geometry(), "patch_dim": first.patch_dim,
                     "exact_null_dim": null_dimension(handle),
                     "null_dim_scope": "per patch" if natural_view(first) == "patch" else "per Fourier block",
                     "trained": trained, "test_accuracy": rec.get("test_accuracy") if trained else None,
                     "train_seconds": rec.get("train_seconds") if trained else None})
    return rows
