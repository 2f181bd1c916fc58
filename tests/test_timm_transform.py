"""Images from disk are prepared as timm prepares them for evaluation (its resolve_data_config and create_transform
for the designated model), overridable with data.transform; the old plain resize stays available."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from nte_eval.data.files import FileImages
from nte_eval.errors import NTEError
from nte_eval.evaluate.inputs import load_models, load_suite_data
from nte_eval.evaluate.suite import parse_suite


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Random photos of two aspect ratios (a crop has to choose), in two class folders."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        h, w = (300, 260) if i % 3 else (200, 410)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def _load(root, designated, **data):
    suite = parse_suite({"name": "t", "data": {"source": "imagefolder", "root": str(root), "workers": 0, **data},
                         "designated": designated, "encoders": [{"type": "nte", "psnr": 30}]})
    handles = load_models(suite, "cpu")
    return handles[designated], load_suite_data(suite, handles)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])  # crop_pct 0.95 and 0.9, two normalisations
def test_the_images_are_timms_evaluation_tensors(folder, arch):
    handle, data = _load(folder, f"timm:{arch}")
    assert isinstance(data.images, FileImages) and data.transform["crop_pct"] == handle.data_config["crop_pct"]
    timm_way = create_transform(**resolve_data_config({}, model=handle.module))
    expected = torch.stack([timm_way(Image.open(folder / name).convert("RGB")) for name in data.names])
    ours = data.images[:]
    assert ours.min() >= 0 and ours.max() <= 1  # pixel space; the handle normalises
    torch.testing.assert_close(handle.normalize(ours), expected, rtol=0, atol=1e-6)


def test_a_suite_overrides_the_transform_or_keeps_the_plain_resize(folder):
    handle, data = _load(folder, "timm:resnet18", transform={"crop_pct": 1.0, "interpolation": "bilinear"}, size=160)
    timm_way = create_transform(**resolve_data_config({"input_size": (3, 160, 160), "crop_pct": 1.0,
                                                       "interpolation": "bilinear"}, model=handle.module))
    expected = torch.stack([timm_way(Image.open(folder / name).convert("RGB")) for name in data.names])
    torch.testing.assert_close(handle.normalize(data.images[:]), expected, rtol=0, atol=1e-6)
    _, plain = _load(folder, "timm:resnet18", transform="resize", size=160)
    assert plain.transform == {"resize": 160} and not torch.equal(plain.images[:], data.images[:])
    _, zoo = _load(folder, "zoo:vit_null", size=32)  # 'auto' for a model timm did not build: the plain resize
    assert zoo.transform == {"resize": 32}


def test_an_unknown_transform_key_is_refused_with_the_allowed_ones():
    with pytest.raises(NTEError, match=r"data.transform: unknown key\(s\) \['crop'\].*interpolation, crop_pct"):
        parse_suite({"name": "t", "data": {"source": "imagefolder", "root": "x", "transform": {"crop": 1}},
                     "designated": "zoo:vit_null", "encoders": [{"type": "nte", "psnr": 30}]})
