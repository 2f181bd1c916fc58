"""Label-free data (an imagefolder without class folders, `data.labels: none`, the bundled real photos): every model
is scored by agreement with its own clean prediction everywhere accuracy is used, and the tables and report say so;
a zoo model runs at another size through `input_size`."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from nte_eval.cli import main
from nte_eval.data.images import load_digits
from nte_eval.data.photos import PHOTO_FILES, TEST_FACES, load_real_photos
from nte_eval.errors import NTEError
from nte_eval.models.load import load_model

SUITE = {"name": "label-free", "seed": 2, "public": {"source": "digits", "split": "train"},
         "designated": "zoo:vit_null", "models": ["zoo:resnet_stem"], "encoders": [{"type": "nte", "psnr": 0}],
         "attacks": ["identity", {"type": "jpeg", "quality": 90}, "oracle_fill"],
         "certify": {"fidelity": True, "degradation": True, "lipschitz": ["local"], "psnr": [0], "samples": 30,
                     "degradation_psnr": 0}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 40 digits as a flat folder of PNGs (no labels) and as the labelled source with labels: none."""
    tmp = tmp_path_factory.mktemp("label-free")
    digits = load_digits("test", 40, 32)
    for i, img in enumerate(digits.images):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp / f"{i:03d}.png")
    out = {}
    for name, data in (("folder", {"source": "imagefolder", "root": str(tmp), "size": 32, "transform": "resize"}),
                       ("none", {"source": "digits", "split": "test", "limit": 40, "labels": "none"})):
        path = tmp.parent / f"{tmp.name}-{name}.yaml"
        path.write_text(yaml.safe_dump({**SUITE, "data": data}))
        assert main(["run", str(path), "--out", str(tmp.parent / f"{tmp.name}-{name}-out"), "--quiet",
                     "--threads", "1"]) == 0
        out[name] = tmp.parent / f"{tmp.name}-{name}-out"
    return out


@pytest.mark.parametrize("kind", ["folder", "none"])
def test_every_model_is_scored_against_its_own_clean_prediction(runs, kind):
    out = runs[kind]
    results = pd.read_csv(out / "results.csv", dtype={"encoder_params": str, "attack_params": str})
    by = results.set_index(["attack", "model", "metric"]).value
    cells = results[results.attack != "certify"][["attack", "model"]].drop_duplicates().itertuples(index=False)
    for attack, model in cells:
        assert by[(attack, model, "clean_accuracy")] == 1.0  # its own clean prediction, by definition
        assert by[(attack, model, "accuracy")] == by[(attack, model, "agreement")]
    assert by[("identity", "zoo:resnet_stem", "accuracy")] < 0.9  # the NTEs do move it: the scores are not trivial
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["label_free"] is True and manifest["data"]["chance"] is None
    worst = pd.read_csv(out / "worst_case.csv")
    assert (worst[worst.summary == "clean"].value == 1.0).all()
    summary = (out / "summary.md").read_text()
    captions = [line for line in summary.splitlines() if line.startswith(("Designated models", "(Label-free"))]
    assert captions and all(line.startswith("(Label-free data: every accuracy is a model's agreement") for line in
                            captions)
    assert "chance: each model's own (label-free: the share of its most frequent clean prediction)" in summary
    chance = results[(results.attack == "identity") & (results.metric == "chance")].set_index("model").value
    assert 0 < chance["zoo:resnet_stem"] < 1  # its own most frequent clean prediction's share
    certificates = pd.read_csv(out / "certificates.csv")
    assert certificates.clean_correct.all()  # the designated model's own clean prediction is its label
    angles = pd.read_csv(out / "angles.csv")
    assert (angles.dropna(subset=["accuracy_drop"]).accuracy_drop.abs() > 0).any()  # against own predictions


def test_both_label_free_forms_agree(runs):
    """A flat folder of the digits and the digits with labels: none are one evaluation."""
    a, b = (pd.read_csv(runs[k] / "results.csv") for k in ("folder", "none"))
    a, b = (f[f.attack != "certify"].sort_values(["attack", "model", "metric"]).reset_index(drop=True) for f in (a, b))
    share = a.metric.isin(["accuracy", "agreement", "clean_accuracy"])
    assert np.allclose(a.value[share], b.value[share], atol=0.051)  # PNG rounding may flip a borderline sample


def test_real_photos_ship_with_the_packages_and_split_faces_between_data_and_public():
    test, train = load_real_photos("test", 64), load_real_photos("train", 64)
    assert len(test) == len(PHOTO_FILES) + TEST_FACES and len(train) == 200 - TEST_FACES
    assert test.label_free and train.label_free and not set(test.names) & set(train.names)
    assert tuple(test.images.shape[1:]) == (3, 64, 64) and float(test.images.std()) > 0.1
    assert load_real_photos("all", 32, limit=25).names[-1] == "skimage/lfw_subset/004"


def test_a_zoo_model_runs_at_another_size_only_where_it_can():
    assert load_model({"zoo": "tex_resnet_stem", "input_size": [3, 64, 64]}).input_size == (3, 64, 64)
    with pytest.raises(NTEError, match="drop input_size"):
        load_model({"zoo": "tex_vit_null", "input_size": [3, 64, 64]})
