"""The bundled zoo: shipped weights load, reach their accuracy, and have the advertised first-layer geometry."""

import dataclasses

import pytest
import torch

from nte_eval.data.images import load_digits
from nte_eval.data.sources import load_pixels
from nte_eval.errors import NTEError
from nte_eval.models.load import load_model
from nte_eval.models.zoo import ZOO, ZOO_DATA, ZOO_MEAN, ZOO_STD, load_zoo_model, read_zoo_json, weights_dir, zoo_table
from nte_eval.models.zoo.train import augment, train_one, train_zoo


@pytest.fixture(scope="module")
def test_splits():
    """Each bundled data set's test split, by the zoo's data names."""
    return {d: load_pixels(d, "test") for d in ZOO_DATA}


@pytest.fixture(scope="module")
def table():
    return {r["name"]: r for r in zoo_table()}


def test_zoo_order_and_normalisation():
    assert list(ZOO) == ["vit_null", "vit_null_s1", "vit_wide", "resnet_stem", "resnet_nullstem",
                         "convnext_patchify", "mlp_linear", "tex_vit_null", "tex_resnet_stem", "tex_convnext_patchify"]
    assert {e.data for e in ZOO.values()} == set(ZOO_DATA) and load_zoo_model("tex_vit_null").class_names[1] == "cat"
    assert ZOO["vit_null"].build is ZOO["vit_null_s1"].build and ZOO["vit_null"].seed != ZOO["vit_null_s1"].seed
    handle = load_zoo_model("mlp_linear")
    assert handle.mean.flatten().tolist() == list(ZOO_MEAN) and handle.std.flatten().tolist() == list(ZOO_STD)
    assert handle.input_size == (3, 32, 32) and handle.class_names == [str(i) for i in range(10)]
    assert handle.spec == "zoo:mlp_linear"


@pytest.mark.parametrize("name", list(ZOO))
def test_shipped_weights_reach_their_recorded_accuracy(name, test_splits):
    handle, test_split = load_model(f"zoo:{name}"), test_splits[ZOO[name].data]
    acc = float((handle.logits(test_split.images).argmax(1) == test_split.labels).float().mean())
    assert acc >= (0.95 if ZOO[name].data == "digits" else 0.8)  # the textures are harder: natural crops
    assert abs(acc - read_zoo_json()[name]["test_accuracy"]) < 1e-3  # the shipped weights are the recorded ones
    assert (weights_dir() / f"{name}.safetensors").stat().st_size < 2_000_000


def test_loading_is_deterministic_and_leaves_the_global_rng_alone(test_splits):
    x = test_splits["digits"].images[:32]
    torch.manual_seed(123)
    a = load_zoo_model("vit_null")
    after_load = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    b = load_zoo_model("vit_null")
    assert torch.equal(after_load, expected)
    assert all(torch.equal(p, q) for p, q in zip(a.module.state_dict().values(), b.module.state_dict().values(),
                                                  strict=True))
    assert torch.equal(a.logits(x), b.logits(x))
    assert not torch.equal(a.logits(x), load_zoo_model("vit_null_s1").logits(x))


def test_zoo_geometries(table):
    vit = table["vit_null"]
    assert vit["kernel"] == vit["stride"] == [4, 4] and vit["padding"] == [0, 0]
    assert vit["patch_dim"] == 48 > vit["out_channels"] == 32
    assert vit["exact_null_dim"] == 16 == table["vit_null_s1"]["exact_null_dim"]
    assert vit["null_dim_scope"] == "per patch"
    wide = table["vit_wide"]
    assert wide["patch_dim"] <= wide["out_channels"] and wide["exact_null_dim"] == 0
    stem = table["resnet_stem"]
    assert (stem["kernel"], stem["stride"], stem["padding"], stem["out_channels"]) == ([7, 7], [2, 2], [3, 3], 64)
    assert stem["exact_null_dim"] == 0 and stem["null_dim_scope"] == "per Fourier block"
    null = table["resnet_nullstem"]
    (k, _), (s, _), (p, _) = null["kernel"], null["stride"], null["padding"]
    assert s < k and 2 * p < k and 32 % s == 0  # overlapping, and the Fourier polyphase analysis applies
    assert null["in_channels"] * s * s > null["out_channels"] and null["null_dim_scope"] == "per Fourier block"
    assert null["exact_null_dim"] == null["in_channels"] * s * s - null["out_channels"]
    cnx = table["convnext_patchify"]
    assert cnx["kernel"] == cnx["stride"] == [4, 4] and cnx["out_channels"] >= cnx["patch_dim"]
    assert cnx["exact_null_dim"] == 0
    mlp = table["mlp_linear"]
    assert mlp["kind"] == "linear" and mlp["layer"] == "1.fc1"
    assert mlp["patch_dim"] == 3072 and mlp["exact_null_dim"] == 3072 - mlp["out_channels"]


def test_table_reports_the_training_record(table):
    records = read_zoo_json()
    assert all(r["trained"] and r["test_accuracy"] >= (0.95 if ZOO[n].data == "digits" else 0.8)
               for n, r in table.items())
    assert all(r["train_seconds"] == records[n]["train_seconds"] > 0 for n, r in table.items())
    assert sum(r["train_seconds"] for r in records.values()) <= 480  # the whole zoo trains in 8 minutes


def test_unknown_zoo_name_suggests_a_close_one():
    with pytest.raises(NTEError, match="Did you mean 'vit_null'"):
        load_model("zoo:vit_nul")
    with pytest.raises(NTEError, match="resnet_stem"):
        load_zoo_model("resnet_stm")


def test_missing_weights_say_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("NTE_EVAL_ZOO_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
    with pytest.raises(NTEError, match="nte-eval zoo train"):
        load_model("zoo:vit_null")
    assert read_zoo_json() == {}


def test_augmentation_stays_in_pixel_range_and_is_seeded():
    x = load_digits("train", limit=16).images
    a = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(1)))


def test_short_training_is_bit_identical():
    data = load_digits("train", limit=96)
    entry = dataclasses.replace(ZOO["mlp_linear"], epochs=1)
    first, second = (train_one(entry, data, progress=False).state_dict() for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_weights(tmp_path):
    """Training is deterministic: the same CPU type and torch version give the same bytes as the shipped file."""
    record = read_zoo_json()["vit_null"]
    if record.get("torch") != torch.__version__:
        pytest.skip(f"bit-identity needs torch {record.get('torch')}, the version the weights were trained with")
    (new,) = train_zoo(["vit_null"], out=tmp_path, progress=False)
    assert new["test_accuracy"] == record["test_accuracy"]
    assert (tmp_path / "vit_null.safetensors").read_bytes() == (weights_dir() / "vit_null.safetensors").read_bytes()
