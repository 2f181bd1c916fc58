"""The NTE encoder and baselines on small random models: PSNR targeting, keys, boxes, storable images; declared
parameters: validated with the suite, and every one of them in the results' cell key."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import nte_eval.evaluate.items as items
import nte_eval.runner as runner
from nte_eval.cli import main
from nte_eval.data.images import load_digits
from nte_eval.encoders import AdversarialEncoder, GaussianEncoder, NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.evaluate.suite import parse_suite
from nte_eval.metrics import psnr as measured_psnr
from nte_eval.models.handle import ModelHandle


def make_handle(first: nn.Module, size=32, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(first, nn.GELU(), nn.Flatten(), nn.LazyLinear(10))
    net(torch.zeros(1, 3, size, size))
    return ModelHandle.from_module(net, "0", mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), input_size=(3, size, size))


@pytest.fixture(scope="module")
def patchify():
    return make_handle(nn.Conv2d(3, 32, 4, 4))  # d = 48 > m = 32: exact null space per patch


@pytest.fixture(scope="module")
def overlapping():
    return make_handle(nn.Conv2d(3, 16, 6, 4, 1))  # overlapping stem with an image-space null space


@pytest.fixture(scope="module")
def images():
    return load_digits("test", limit=12).images


@pytest.mark.parametrize("psnr", [40.0, 20.0, 0.0, -10.0])
def test_unboxed_psnr_hits_target_and_stays_in_null_space(patchify, images, psnr):
    res = NTEEncoder(patchify, psnr=psnr).encode(images, key="k")
    assert (res.psnr - psnr).abs().max() < 0.1
    assert (measured_psnr(res.images, images) - psnr).abs().max() < 0.1  # measured on the images themselves
    assert res.first_layer_ratio.max() < 1e-4
    assert res.info["exact"] and res.info["dim_per_patch"] == 16


def test_same_key_and_index_give_bit_identical_noise(patchify, images):
    enc = NTEEncoder(patchify, psnr=10)
    full = enc.encode(images, key=3).images
    part = enc.encode(images[5:9], key=3, index=[5, 6, 7, 8]).images
    assert torch.equal(full[5:9], part)
    assert not torch.equal(full, enc.encode(images, key=4).images)


def test_tiled_noise_repeats_one_patch_vector(patchify, images):
    res = NTEEncoder(patchify, psnr=10, noise="tiled").encode(images, key=1)
    delta = res.images - images
    patches = delta.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, 8, 8, 4, 4)
    assert torch.allclose(patches, patches[:, :, :1, :1].expand_as(patches), atol=1e-6)
    per_patch = NTEEncoder(patchify, psnr=10).encode(images, key=1).images - images
    p2 = per_patch.unfold(2, 4, 4).unfold(3, 4, 4)
    assert not torch.allclose(p2, p2[:, :, :1, :1].expand_as(p2), atol=1e-3)


@pytest.mark.parametrize("psnr", [30.0, 10.0])
def test_project_box_is_an_image_in_the_subspace(patchify, images, psnr):
    res = NTEEncoder(patchify, psnr=psnr, box="project").encode(images, key=0)
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert res.first_layer_ratio.max() < 1e-4
    assert res.psnr.mean() < psnr + 3  # the box may cost noise energy, but the scale loop pushes toward the target
    clip = NTEEncoder(patchify, psnr=psnr, box="clip").encode(images, key=0)
    assert clip.first_layer_ratio.mean() > 10 * res.first_layer_ratio.mean()  # clipping leaves the subspace


def test_quantized_nte_is_storable_and_png_round_trips(patchify, images, tmp_path):
    res = NTEEncoder(patchify, psnr=25, box="project", quantize=True).encode(images, key=0)
    assert res.storable
    assert torch.equal(torch.round(res.images * 255) / 255, res.images)
    arr = (res.images[0] * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(tmp_path / "a.png")
    back = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).permute(2, 0, 1).float() / 255
    assert torch.equal(back, res.images[0])
    assert res.first_layer_ratio.max() < 0.05  # only 8-bit rounding leaves the subspace


def test_operator_mode_beats_folding_on_an_overlapping_stem(overlapping, images):
    op = NTEEncoder(overlapping, mode="auto", psnr=10).encode(images, key=0)
    fold = NTEEncoder(overlapping, mode="patch", psnr=10).encode(images, key=0)
    assert op.info["mode"] == "operator" and op.info["exact"]
    assert (op.psnr - 10).abs().max() < 0.1
    assert op.first_layer_ratio.max() < 1e-4
    assert fold.first_layer_ratio.mean() > 0.05  # folding overlapping patches leaves the null space


def test_operator_project_box(overlapping, images):
    res = NTEEncoder(overlapping, psnr=25, box="project", project_iters=30).encode(images[:4], key=0)
    assert res.images.min() >= 0 and res.images.max() <= 1 and res.first_layer_ratio.max() < 1e-4


def test_linear_first_layer_uses_the_whole_image():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 40), nn.ReLU(), nn.Linear(40, 10))
    h = ModelHandle.from_module(net, "1", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 8, 8))
    x = torch.rand(3, 3, 8, 8)
    res = NTEEncoder(h, psnr=5).encode(x, key=0)
    assert res.info["dim_per_patch"] == 192 - 40 and res.first_layer_ratio.max() < 1e-4


def test_gaussian_baseline_matches_psnr_and_is_not_in_the_subspace(patchify, images):
    res = GaussianEncoder(patchify, psnr=20).encode(images, key=0)
    assert (res.psnr - 20).abs().max() < 0.1 and res.first_layer_ratio.mean() > 0.01


def test_adversarial_baseline_uses_the_psnr_budget(patchify, images):
    res = AdversarialEncoder(patchify, psnr=20, steps=10).encode(images, key=0)
    assert res.psnr.min() >= 20 - 0.05  # PGD-L2 stays inside the L2 ball of the target PSNR
    clean = patchify.logits(images).argmax(1)
    adv = patchify.logits(res.images).argmax(1)
    assert (adv != clean).float().mean() >= 0.5


@pytest.mark.parametrize("kwargs,match", [
    ({"psnr": float("nan")}, "finite"), ({"psnr": 500}, "psnr: .* less than or equal to 100"),
    ({"box": "none", "quantize": True}, "quantize"), ({"mode": "operator", "noise": "tiled"}, "tiled"),
    ({"noise": "tiled"}, "tiled"), ({"box": "project", "mode": "patch"}, "exact subspace projector"),
    ({"mode": "fourier"}, "mode"), ({"box": "boxed"}, "box"), ({"select": "tau=-1"}, "select"),
    ({"project_iters": 2.5}, "project_iters"), ({"psnr": True}, "psnr"), ({"sigma": 1}, "unknown parameter"),
])
def test_bad_settings(overlapping, kwargs, match):
    with pytest.raises(NTEError, match=match):
        NTEEncoder(overlapping, **kwargs)


def test_bad_images(patchify, images):
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NTEError, match="NaN"):
        NTEEncoder(patchify).encode(bad, key=0)
    with pytest.raises(NTEError, match="expects input"):
        NTEEncoder(patchify).encode(images[:, :1], key=0)
    assert json.dumps(NTEEncoder(patchify).params())  # public settings are serialisable and hold no key


def test_params_record_every_declared_parameter_normalised(patchify, overlapping):
    enc = NTEEncoder(patchify, psnr=30, select="tau=1e-2")
    assert enc.params() == {"mode": "auto", "select": "tau=0.01", "psnr": 30.0, "noise": "per_patch", "box": "none",
                            "quantize": False, "border": "correct", "project_iters": 100}
    assert enc.mode == "patch" and str(enc.select) == "tau=0.01"  # in use: the resolved view, the parsed selection
    assert NTEEncoder(overlapping, **enc.params()).mode == "operator"  # 'auto' is recorded, not the view it chose
    assert AdversarialEncoder(patchify).params() == {"psnr": 30.0, "box": "clip", "quantize": False, "steps": 20}
    assert GaussianEncoder(patchify, psnr=0).params()["psnr"] == 0.0


def test_every_setting_of_a_sweep_is_its_own_cell(tmp_path):
    """project_iters was missing from the cell key: the second setting of this sweep was skipped as done."""
    suite = parse_suite({"name": "iters", "data": {"source": "digits", "split": "test", "limit": 16},
                         "designated": "zoo:vit_null",
                         "encoders": [{"type": "nte", "psnr": 20, "box": "project", "quantize": True,
                                       "project_iters": [5, 100]}]})
    results = runner.run_suite(suite, tmp_path, progress=False, log=lambda _: None)
    achieved = results[results.metric == "psnr"].set_index("encoder_params").value
    assert sorted(json.loads(k)["project_iters"] for k in achieved.index) == [5, 100]
    assert achieved.nunique() == 2  # two encodings, two results


BAD_ENCODERS = [({"psnr": 200}, "encoders[0].psnr: Input should be less than or equal to 100; allowed: float >= -40, "
                                "<= 100"),
                ({"select": "k=-1"}, "encoders[0].select: select 'k=-1': k must be a finite non-negative number and "
                                     "a positive integer"),
                ({"mode": "sideways"}, "encoders[0].mode: got 'sideways'; allowed: 'auto', 'patch' or 'operator'")]


@pytest.mark.parametrize("bad,message", BAD_ENCODERS)
def test_bad_encoder_parameters_fail_suite_validation(bad, message):
    with pytest.raises(NTEError) as err:
        parse_suite({"name": "bad", "designated": "zoo:vit_null", "encoders": [{"type": "nte", "psnr": 30, **bad}]})
    assert message in str(err.value)


@pytest.mark.parametrize("bad,message", BAD_ENCODERS)
def test_bad_encoder_parameters_stop_the_cli_before_any_model_loads(bad, message, tmp_path, capsys, monkeypatch):
    def load_models(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid suite")

    monkeypatch.setattr(items, "load_models", load_models)
    suite = {"name": "bad", "data": {"source": "digits", "split": "test", "limit": 16}, "designated": "zoo:vit_null",
             "encoders": [{"type": "nte", "psnr": [30, 20], **bad}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
