"""hf:PATH image classifiers: tiny random-init transformers models saved with save_pretrained, loaded offline.

Each family is checked against the model it was saved from: the processor's own output equals the handle's
normalisation, logits match, the first-layer response equals the real first conv's output (a forward hook), and an
NTE leaves the first layer's response unchanged to < 1e-4 relative. Every tiny stem has an exact null space: patch
stems see more pixels per patch than they have output channels (8x8x3 = 192 > 32, 4x4x3 = 48 > 16), and the
stride-2 stems have 8 output channels per 2x2 block of 3-channel pixels (8 < 12).
"""

from dataclasses import dataclass, field
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from nte_eval.encoders import NTEEncoder  # noqa: E402
from nte_eval.errors import NTEError  # noqa: E402
from nte_eval.models.handle import ModelHandle  # noqa: E402
from nte_eval.models.load import load_model  # noqa: E402

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.3, 0.4)  # not ImageNet's, to prove they come from the processor file
NAMES = [f"class_{i}" for i in range(10)]
SIZE = {"height": 32, "width": 32}
VIT_LIKE = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
SWIN_LIKE = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
             "window_size": 4}
STAGES = {"num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]}


@dataclass
class Family:
    model: str  # transformers class
    config: dict[str, Any]
    path: str  # the first conv in the transformers model
    geometry: tuple[int, int, int]  # (kernel, stride, padding) of the handle's first layer
    processor: str = "ViTImageProcessor"
    processor_kwargs: dict[str, Any] = field(default_factory=lambda: {"size": SIZE})
    mean: tuple[float, ...] = MEAN  # the handle's expected mean/std on pixels in [0, 1]
    std: tuple[float, ...] = STD
    size: int = 32


FAMILIES = {
    "vit": Family("ViTForImageClassification", {**VIT_LIKE, "intermediate_size": 37},
                  "vit.embeddings.patch_embeddings.projection", (8, 8, 0)),
    "deit": Family("DeiTForImageClassification", {**VIT_LIKE, "intermediate_size": 37},
                   "deit.embeddings.patch_embeddings.projection", (8, 8, 0)),
    "beit": Family("BeitForImageClassification", {**VIT_LIKE, "intermediate_size": 37},
                   "beit.embeddings.patch_embeddings.projection", (8, 8, 0)),
    "dinov2": Family("Dinov2ForImageClassification", {**VIT_LIKE, "mlp_ratio": 1},
                     "dinov2.embeddings.patch_embeddings.projection", (8, 8, 0)),
    "swin": Family("SwinForImageClassification", SWIN_LIKE, "swin.embeddings.patch_embeddings.projection", (4, 4, 0)),
    "swinv2": Family("Swinv2ForImageClassification", SWIN_LIKE, "swinv2.embeddings.patch_embeddings.projection",
                     (4, 4, 0)),
    # ConvNeXt's processor: shortest_edge 32 -> a 32 x 32 input
    "convnext": Family("ConvNextForImageClassification", STAGES, "convnext.embeddings.patch_embeddings", (4, 4, 0),
                       "ConvNextImageProcessor", {"size": {"shortest_edge": 32}}),
    "convnextv2": Family("ConvNextV2ForImageClassification", STAGES, "convnextv2.embeddings.patch_embeddings",
                         (4, 4, 0)),
    "resnet": Family("ResNetForImageClassification", {"embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1]},
                     "resnet.embedder.embedder.convolution", (7, 2, 3)),
    # do_normalize false: the model sees rescaled pixels as they are
    "regnet": Family("RegNetForImageClassification", {"embedding_size": 8, "hidden_sizes": [16, 32],
                                                      "depths": [1, 1], "groups_width": 8},
                     "regnet.embedder.embedder.convolution", (3, 2, 1),
                     processor_kwargs={"size": SIZE, "do_normalize": False}, mean=(0.0,) * 3, std=(1.0,) * 3),
    # ZeroPad2d((0, 1, 0, 1)) + 3x3 stride-2 'valid' conv == 4x4 kernel (zero top row/left column), padding 1.
    # Its processor maps pixels to [-1, 1] (rescale_offset) and divides by image_std twice (include_top).
    "efficientnet": Family("EfficientNetForImageClassification",
                           {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 320},
                           "efficientnet.embeddings.convolution", (4, 2, 1), "EfficientNetImageProcessor",
                           {"size": SIZE, "rescale_offset": True, "include_top": True},
                           mean=tuple(m + 1 for m in MEAN), std=tuple(s * s for s in STD)),
    # tf_padding: TF 'same' pads 32 -> (0, 1) per axis, as EfficientNet; 33 -> (1, 1), the 3x3 conv with padding 1.
    # The processor center-crops 32 (33) out of a shortest_edge 36 resize. Without tf_padding the conv pads 1 itself.
    "mobilenet_v2": Family("MobileNetV2ForImageClassification", {"image_size": 32, "depth_multiplier": 0.25},
                           "mobilenet_v2.conv_stem.first_conv.convolution", (4, 2, 1), "MobileNetV2ImageProcessor",
                           {"size": {"shortest_edge": 36}, "crop_size": SIZE}),
    "mobilenet_v2_odd": Family("MobileNetV2ForImageClassification", {"image_size": 33, "depth_multiplier": 0.25},
                               "mobilenet_v2.conv_stem.first_conv.convolution", (3, 2, 1), "MobileNetV2ImageProcessor",
                               {"size": {"shortest_edge": 36}, "crop_size": {"height": 33, "width": 33}}, size=33),
    "mobilenet_v2_no_tf": Family("MobileNetV2ForImageClassification",
                                 {"image_size": 32, "depth_multiplier": 0.25, "tf_padding": False},
                                 "mobilenet_v2.conv_stem.first_conv.convolution", (3, 2, 1)),
    "mobilenet_v1": Family("MobileNetV1ForImageClassification", {"image_size": 32, "depth_multiplier": 0.25},
                           "mobilenet_v1.conv_stem.convolution", (4, 2, 1)),
}


def save_tiny(folder, family: Family, processor: bool = True):
    """A random-init model of ``family`` (seeded), saved with its image processor; returns the model."""
    torch.manual_seed(0)
    config_cls = getattr(transformers, family.model.replace("ForImageClassification", "Config"))
    config = config_cls(**family.config, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = getattr(transformers, family.model)(config).eval()
    model.save_pretrained(folder)
    if processor:
        proc_cls = getattr(transformers, family.processor)
        proc_cls(image_mean=list(MEAN), image_std=list(STD), **family.processor_kwargs).save_pretrained(folder)
    return model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_loads_exactly_and_nte_keeps_first_layer(tmp_path, name):
    family = FAMILIES[name]
    model = save_tiny(tmp_path, family)
    handle = load_model(f"hf:{tmp_path}")
    n = family.size

    assert handle.input_size == (3, n, n) and handle.class_names == NAMES and handle.num_classes == 10
    assert handle.first.path == f"model.{family.path}"
    kernel, stride, padding = family.geometry
    f = handle.first
    assert (f.kernel, f.stride, f.padding) == ((kernel,) * 2, (stride,) * 2, (padding,) * 2)
    assert handle.mean.flatten().tolist() == pytest.approx(family.mean)
    assert handle.std.flatten().tolist() == pytest.approx(family.std)

    # The saved processor itself, on 8-bit images already at the input size, gives what the handle feeds the model.
    x8 = torch.randint(0, 256, (2, 3, n, n), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    proc = transformers.AutoImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    u = proc(list(x8), do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    x = x8.float() / 255
    torch.testing.assert_close(handle.normalize(x), u, rtol=1e-5, atol=1e-5)

    # Logits and the real first conv's output (after the pad, for padded stems) in the original, unmodified model.
    seen = []
    conv = model.get_submodule(family.path)
    assert type(conv) is torch.nn.Conv2d
    hook = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        want = model(pixel_values=u).logits
    hook.remove()
    torch.testing.assert_close(handle.logits(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(handle.first_layer_response(x), seen[0], rtol=1e-5, atol=1e-5)

    # An NTE at PSNR 20 dB: the exact null space leaves the first layer's response unchanged. (Operator mode needs
    # the image size divisible by the stride, which the odd size is not.)
    if n % stride == 0:
        r = NTEEncoder(handle, psnr=20).fit().encode(x, key=1)
        assert r.psnr.tolist() == pytest.approx([20.0, 20.0], abs=0.01)
        assert float(r.first_layer_ratio.max()) < 1e-4


def test_safetensors_weights_are_the_ones_loaded(tmp_path):
    save_tiny(tmp_path, FAMILIES["resnet"])
    handle = load_model(f"hf:{tmp_path}")
    saved = load_file(str(tmp_path / "model.safetensors"))
    loaded = handle.module.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_unsupported_model_type_names_the_python_api(tmp_path):
    config = transformers.CvtConfig(embed_dim=[8], num_heads=[1], depth=[1], num_labels=10)
    config.save_pretrained(tmp_path)
    with pytest.raises(NTEError, match=r"model type 'cvt' has no known first linear operator.*convnext.*vit.*"
                                       r"ModelHandle\.from_module\(module, first_layer="):
        load_model(f"hf:{tmp_path}")


def test_folder_errors(tmp_path):
    with pytest.raises(NTEError, match="is not a local folder"):
        load_model(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(NTEError, match="has no config.json"):
        load_model(f"hf:{tmp_path}")


def test_missing_processor_is_an_error_not_a_guess(tmp_path):
    save_tiny(tmp_path, FAMILIES["vit"], processor=False)
    with pytest.raises(NTEError, match=r"no preprocessor_config.json.*AutoImageProcessor.*save_pretrained"):
        load_model(f"hf:{tmp_path}")


def test_pickle_weights_are_refused(tmp_path):
    model = save_tiny(tmp_path, FAMILIES["vit"])
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(NTEError, match=r"no safetensors weights, only pickle files \(pytorch_model.bin\).*"
                                       r"save_pretrained"):
        load_model(f"hf:{tmp_path}")


def test_checkpoint_without_classifier_head_is_refused(tmp_path):
    family = FAMILIES["vit"]
    save_tiny(tmp_path, family)
    transformers.ViTModel(transformers.ViTConfig(**family.config, num_labels=10)).save_pretrained(tmp_path)
    with pytest.raises(NTEError, match=r"lacks classifier.bias, classifier.weight"):
        load_model(f"hf:{tmp_path}")


def test_input_size_the_model_rejects(tmp_path):
    family = FAMILIES["vit"]
    save_tiny(tmp_path, family)
    transformers.ViTImageProcessor(size={"height": 40, "width": 40}).save_pretrained(tmp_path)
    with pytest.raises(NTEError, match=r"rejects input size \(3, 40, 40\)"):
        load_model(f"hf:{tmp_path}")


def test_padding_before_the_first_conv_is_caught_at_load(tmp_path):
    # Swin pads a 30 x 30 input to 32 before its 4x4 patch conv: not the fixed convolution the handle would apply
    save_tiny(tmp_path, FAMILIES["swin"])
    transformers.ViTImageProcessor(size={"height": 30, "width": 30}).save_pretrained(tmp_path)
    with pytest.raises(NTEError, match=r"does not act as the expected fixed convolution inside the model"):
        load_model(f"hf:{tmp_path}")


@pytest.mark.parametrize("pad", [(0, 1, 0, 1), (1, 1, 1, 1), (2, 0, 1, 3)])
@pytest.mark.parametrize("conv", [(3, 2, "valid"), (7, 2, 3), (4, 4, 0)])
def test_zero_pad_then_conv_is_one_exact_convolution(pad, conv):
    # models/handle.py: any nn.Sequential(ZeroPad2d, Conv2d), at even and odd sizes, as HF's stems are rewired
    kernel, stride, padding = conv
    torch.manual_seed(0)
    stem = torch.nn.Sequential(torch.nn.ZeroPad2d(pad), torch.nn.Conv2d(3, 5, kernel, stride, padding))
    for size in [(3, 16, 16), (3, 17, 15)]:
        handle = ModelHandle.from_module(torch.nn.Sequential(stem, torch.nn.Flatten()), "0", input_size=size)
        x = torch.rand(2, *size)
        with torch.no_grad():
            want = stem(handle.normalize(x))
        torch.testing.assert_close(handle.first_layer_response(x), want, rtol=1e-5, atol=1e-5)
        left, right, top, bottom = pad
        p = 0 if padding == "valid" else padding
        assert handle.first.padding == (max(top, bottom) + p, max(left, right) + p)


def test_zero_pad_that_crops_is_an_error():
    stem = torch.nn.Sequential(torch.nn.ZeroPad2d((0, -1, 0, 0)), torch.nn.Conv2d(3, 5, 3))
    with pytest.raises(NTEError, match=r"crops with ZeroPad2d\(0, -1, 0, 0\)"):
        ModelHandle.from_module(torch.nn.Sequential(stem), "0", input_size=(3, 16, 16))


def test_processor_config_only_folder(tmp_path):
    """A folder whose image processor sits inside processor_config.json (as AutoProcessor.save_pretrained writes it
    in transformers 5) loads with that processor's mean/std and size."""
    import json

    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=3)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    processor = ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.6, 0.7], size={"height": 32,
                                                                                              "width": 32})
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": processor.to_dict()}))
    handle = load_model(f"hf:{tmp_path}")
    assert handle.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert handle.std.flatten().tolist() == pytest.approx([0.5, 0.6, 0.7]) and handle.input_size == (3, 32, 32)
