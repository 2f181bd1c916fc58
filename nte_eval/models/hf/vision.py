"""``hf:PATH``: a local Hugging Face ``AutoModelForImageClassification`` folder as a pixel-space ``ModelHandle``.

- Weights: safetensors only, loaded offline (``local_files_only``); pickle weights (``pytorch_model.bin``) are refused.
- First linear operator: looked up by ``config.model_type`` in ``FIRST_LAYERS``. EfficientNet pads with
  ``ZeroPad2d((0, 1, 0, 1))`` before an unpadded conv, and MobileNet's ``tf_padding`` pads TF 'same' style, a fixed
  function of the (fixed) input size; both stems are rewired as ``nn.Sequential(ZeroPad2d, Conv2d)``, which the
  handle expresses exactly as one convolution.
- mean/std: from the saved image processor (``preprocessor_config.json``, or ``processor_config.json`` as
  ``AutoProcessor.save_pretrained`` writes it), mapped exactly onto pixels in [0, 1]:
  8-bit values times ``rescale_factor`` (minus 1 with EfficientNet's ``rescale_offset``), then ``image_mean`` /
  ``image_std`` if ``do_normalize``, then EfficientNet's ``include_top`` divides by ``image_std`` once more.
- Input size: the processor's ``crop_size`` if it center-crops, else its ``size`` (height x width, or the square
  ``shortest_edge`` x ``shortest_edge``), else ``config.image_size``.
- Class names: ``config.id2label`` in id order.

At load, one forward pass checks that the handle's first-layer response is exactly what the model's real first layer
outputs inside the network.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle
from nte_eval.models.hf.folder import require_safetensors

# config.model_type -> the first linear operator, relative to the AutoModelForImageClassification
FIRST_LAYERS = {
    "vit": "vit.embeddings.patch_embeddings.projection",
    "deit": "deit.embeddings.patch_embeddings.projection",
    "beit": "beit.embeddings.patch_embeddings.projection",
    "dinov2": "dinov2.embeddings.patch_embeddings.projection",
    "swin": "swin.embeddings.patch_embeddings.projection",
    "swinv2": "swinv2.embeddings.patch_embeddings.projection",
    "convnext": "convnext.embeddings.patch_embeddings",
    "convnextv2": "convnextv2.embeddings.patch_embeddings",
    "resnet": "resnet.embedder.embedder.convolution",
    "regnet": "regnet.embedder.embedder.convolution",
    "efficientnet": "efficientnet.embeddings.convolution",  # after _efficientnet_stem: Sequential(pad, conv)
    "mobilenet_v1": "mobilenet_v1.conv_stem.convolution",  # with tf_padding: Sequential(pad, conv)
    "mobilenet_v2": "mobilenet_v2.conv_stem.first_conv.convolution",  # with tf_padding: Sequential(pad, conv)
}


class HFImageClassifier(nn.Module):
    """An image classifier taking normalised pixels (B, C, H, W) and returning its logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=u).logits


def from_hf(folder: Path, spec: str) -> ModelHandle:
    """Load a local AutoModelForImageClassification folder (safetensors weights plus its image processor)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise NTEError(f"{spec}: cannot read {folder / 'config.json'}: {str(e).splitlines()[0]}") from None
    kind = config.model_type
    if kind not in FIRST_LAYERS:
        raise NTEError(f"{spec}: model type {kind!r} has no known first linear operator; hf: supports "
                       f"{', '.join(sorted(FIRST_LAYERS))}. For another model, build the handle in Python: "
                       "ModelHandle.from_module(module, first_layer='path.to.conv', mean=..., std=..., "
                       "input_size=(3, H, W)) with a module mapping normalised pixels to logits, or use a timm "
                       "model spec (timm:NAME@weights.safetensors, or a mapping with first_layer/mean/std).")
    processor = image_processor(folder, spec)
    input_size = (int(config.num_channels), *_image_size(processor, config, spec))
    mean, std = processor_mean_std(processor, input_size[0], spec)
    model = _load_weights(folder, spec)
    if kind in STEMS:
        STEMS[kind](model, input_size[1:])
    names = [str(label) for _, label in sorted(config.id2label.items(), key=lambda kv: int(kv[0]))]
    handle = ModelHandle(HFImageClassifier(model), f"model.{FIRST_LAYERS[kind]}", mean, std, input_size, names, spec)
    _check_in_network(handle)
    return handle


def _load_weights(folder: Path, spec: str) -> nn.Module:
    """The classifier in float32 from safetensors, offline; every weight must come from the checkpoint."""
    from transformers import AutoModelForImageClassification

    require_safetensors(folder, spec)
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise NTEError(f"{spec}: transformers cannot load an image classifier from {folder}: "
                       f"{str(e).splitlines()[0]}") from None
    if info["missing_keys"]:
        raise NTEError(f"{spec}: the checkpoint lacks {', '.join(sorted(info['missing_keys']))} (transformers would "
                       "initialise them at random); save the full image-classification model, head included.")
    return model.float().eval()


def image_processor(folder: Path, spec: str) -> dict[str, Any]:
    """The saved image processor's settings (``preprocessor_config.json``, or inside ``processor_config.json`` as
    AutoProcessor writes it), class defaults filled in by transformers. Shared by ``hf:`` and ``hf-vlm:``."""
    from transformers import AutoImageProcessor

    fix = ("Save the processor the model was trained with next to it: AutoImageProcessor.from_pretrained(NAME)"
           ".save_pretrained(FOLDER) (a VLM: AutoProcessor.from_pretrained(NAME).save_pretrained(FOLDER)); or build "
           "the handle in Python with ModelHandle.from_module(..., mean=..., std=..., input_size=...).")
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise NTEError(f"{spec}: cannot load the image processor from {folder}: it has no preprocessor_config.json "
                       f"or processor_config.json, so the model's mean/std and input size are unknown. {fix}")
    try:
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True).to_dict()
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise NTEError(f"{spec}: cannot load the image processor from {folder}: {str(e).splitlines()[0]}. "
                       f"{fix}") from None


def _image_size(processor: dict[str, Any], config: Any, spec: str) -> tuple[int, int]:
    """(H, W) the model sees: the center crop, else the resize target (square for shortest_edge), else the config's."""
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    if not size and processor.get("do_resize"):
        size = processor.get("size")
    if isinstance(size, dict) and size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and size.get("shortest_edge"):
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    image_size = getattr(config, "image_size", None)
    if image_size:
        return (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(map(int, image_size))
    raise NTEError(f"{spec}: neither the image processor (crop_size/size: {size}) nor config.image_size gives a "
                   "fixed input size; set size={'height': H, 'width': W} in preprocessor_config.json.")


def processor_mean_std(processor: dict[str, Any], channels: int, spec: str) -> tuple[tuple[float, ...], ...]:
    """mean/std with (x - mean) / std on pixels x in [0, 1] equal to the processor's output on 8-bit x * 255."""
    if processor.get("do_flip_channel_order"):
        raise NTEError(f"{spec}: the image processor flips RGB to BGR (do_flip_channel_order), which a per-channel "
                       "mean/std cannot express.")

    def per_channel(v: Any) -> torch.Tensor:
        if v is None:
            raise NTEError(f"{spec}: the image processor normalises but has no image_mean/image_std.")
        v = torch.as_tensor(v, dtype=torch.float64).flatten()
        return v.expand(channels) if v.numel() == 1 else v

    rescale = processor.get("do_rescale")
    scale = 255.0 * float(processor.get("rescale_factor", 1 / 255)) if rescale else 255.0
    shift = 1.0 if rescale and processor.get("rescale_offset") else 0.0  # EfficientNet: x * factor - 1
    normalize = processor.get("do_normalize")
    mean = per_channel(processor.get("image_mean") if normalize else 0.0)
    std = per_channel(processor.get("image_std") if normalize else 1.0)
    if processor.get("include_top"):  # EfficientNet divides by image_std a second time
        std = std * per_channel(processor.get("image_std"))
    if mean.numel() != channels or std.numel() != channels:
        raise NTEError(f"{spec}: the image processor's image_mean/image_std have {mean.numel()}/{std.numel()} "
                       f"values; the model takes {channels} channels.")
    return tuple(((mean + shift) / scale).tolist()), tuple((std / scale).tolist())


# ---------------------------------------------------------------------------------------- fixed-padding stems


def _efficientnet_stem(model: nn.Module, size: tuple[int, int]) -> None:
    """EfficientNet's ZeroPad2d((0, 1, 0, 1)) and 'valid' conv become one Sequential, the first layer's path."""
    emb = model.efficientnet.embeddings
    emb.convolution = nn.Sequential(emb.padding, emb.convolution)
    emb.padding = nn.Identity()


def _mobilenet_stem(model: nn.Module, size: tuple[int, int]) -> None:
    """MobileNet's TF 'same' stem padding (``tf_padding``), fixed for the handle's input size.

    transformers' ``apply_tf_padding`` pads each side by an amount that depends only on the input's height and width;
    it is read off a ones image of that size and moved into a ZeroPad2d in front of the conv, and the stem layer's
    own config copy turns its dynamic padding off.
    """
    layer = model.get_submodule(FIRST_LAYERS[model.config.model_type].removesuffix(".convolution"))
    if not layer.config.tf_padding:
        return
    apply_tf_padding = sys.modules[type(layer).__module__].apply_tf_padding
    padded = apply_tf_padding(torch.ones(1, 1, *size), layer.convolution)[0, 0]
    rows, cols = padded.any(1).nonzero().flatten(), padded.any(0).nonzero().flatten()
    pad = (int(cols[0]), padded.shape[1] - 1 - int(cols[-1]), int(rows[0]), padded.shape[0] - 1 - int(rows[-1]))
    layer.convolution = nn.Sequential(nn.ZeroPad2d(pad), layer.convolution)
    layer.config = copy.copy(layer.config)
    layer.config.tf_padding = False


STEMS = {"efficientnet": _efficientnet_stem, "mobilenet_v1": _mobilenet_stem, "mobilenet_v2": _mobilenet_stem}


@torch.no_grad()
def _check_in_network(handle: ModelHandle) -> None:
    """Raise NTEError unless the handle's first-layer response equals the real layer's output in a forward pass."""
    layer = handle.module.get_submodule(handle.first.path)
    seen = []
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    x = torch.rand(1, *handle.input_size, generator=torch.Generator().manual_seed(0))
    try:
        handle.logits(x)
    except (ValueError, RuntimeError) as e:
        raise NTEError(f"{handle.spec}: the model rejects input size {handle.input_size} (from the image processor "
                       f"or config.image_size): {str(e).splitlines()[0]}") from None
    finally:
        hook.remove()
    want = handle.first_layer_response(x)
    if len(seen) != 1 or seen[0].shape != want.shape or not torch.allclose(seen[0], want, rtol=1e-4, atol=1e-4):
        raise NTEError(f"{handle.spec}: the first layer {handle.first.path!r} does not act as the expected fixed "
                       f"convolution inside the model at input size {handle.input_size} (called {len(seen)} times); "
                       "the model may pad or resize before it. Use ModelHandle.from_module with a plain Conv2d.")
