"""Method-level attacks against their oracles on natural images: the bundled textures (crops of scikit-image's
photos) and the zoo models trained on them, per-patch and tiled NTEs at 30, 20, 10 and 0 dB."""

import json

import pytest
import torch

from nte_eval.attacks import AttackContext, build_attack
from nte_eval.attacks.subspace.fill import max_angle
from nte_eval.data.sources import load_pixels
from nte_eval.data.textures import TEXTURE_PHOTOS, load_textures
from nte_eval.encoders import NTEEncoder
from nte_eval.models.load import load_model
from nte_eval.models.zoo import weights_dir

UNAUTHORIZED = ("zoo:tex_resnet_stem", "zoo:tex_convnext_patchify")
SETTINGS = [(noise, db) for noise in ("per_patch", "tiled") for db in (30.0, 20.0, 10.0, 0.0)]
ATTACKS = ("identity", "tile_average", "blind_fill", "blind_subspace", "oracle_fill", "oracle_projection")
CLEAN_COST = 0.02  # an attack meant to remove noise may cost a model at most 2 points on clean images
NEAR_ORACLE = 0.05  # a blind attack within 5 points of its oracle ...
CLOSE_DEG = 10.0  # ... wherever its subspace estimate is within 10 degrees of the true one


@pytest.fixture(scope="module")
def table():
    """Per setting: each attack's accuracy per unauthorized model on the attacked NTEs and on the attacked clean
    images, and the blind estimate's largest principal angle to the designated model's true subspace."""
    test, public = load_pixels("textures", "test", limit=200), load_pixels("textures", "train")
    designated = load_model("zoo:tex_vit_null")
    models = {m: load_model(m) for m in UNAUTHORIZED}

    def accuracy(x):
        return {m: float((h.logits(x).argmax(1) == test.labels).float().mean()) for m, h in models.items()}

    rows = {"clean": accuracy(test.images)}
    for noise, db in SETTINGS:
        enc = NTEEncoder(designated, psnr=db, noise=noise)
        nte = enc.encode(test.images, key=7).images
        ctx = AttackContext(public=public, ntes=nte, encoder=enc.public_settings(), designated=designated)
        fitted = {a: build_attack(a).fit(ctx) for a in ATTACKS}
        rows[noise, db] = {a: {"nte": accuracy(f(nte)), "clean": accuracy(f(test.images))} for a, f in fitted.items()}
        rows[noise, db]["angle"] = max_angle(fitted["blind_fill"].subspace, fitted["oracle_fill"].subspace)
    return rows


def test_textures_are_a_deterministic_ten_class_natural_image_set():
    train, test = load_textures("train"), load_textures("test")
    assert train.images.shape == (1600, 3, 32, 32) and test.images.shape == (400, 3, 32, 32)
    assert test.class_names == [c for c, _ in TEXTURE_PHOTOS] and torch.bincount(test.labels).tolist() == [40] * 10
    assert torch.equal(load_textures("test", limit=30).images, test.images[:30])  # same crops every time
    assert 0 <= float(test.images.min()) and float(test.images.max()) <= 1
    # natural statistics: neighbouring pixels correlate strongly, unlike noise
    x = test.images
    corr = torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1]
    assert corr > 0.8


def test_the_texture_zoo_models_classify_the_test_crops():
    records = json.loads((weights_dir() / "zoo.json").read_text())["models"]
    test = load_textures("test")
    for name in ("tex_vit_null", "tex_resnet_stem", "tex_convnext_patchify"):
        acc = float((load_model(f"zoo:{name}").logits(test.images).argmax(1) == test.labels).float().mean())
        assert acc == pytest.approx(records[name]["test_accuracy"], abs=1e-3) and records[name]["data"] == "textures"
        assert acc > 0.75  # chance is 0.1


def test_denoising_attacks_keep_clean_content(table):
    for setting in SETTINGS:
        for attack in ("tile_average", "blind_fill"):
            for model, acc in table[setting][attack]["clean"].items():
                assert acc >= table["clean"][model] - CLEAN_COST, (setting, attack, model)


def test_blind_fill_matches_its_oracle_on_per_patch_ntes(table):
    for setting in SETTINGS[:4]:
        row = table[setting]
        for model, acc in row["blind_fill"]["nte"].items():
            assert acc >= row["oracle_fill"]["nte"][model] - NEAR_ORACLE, (setting, model)
        assert row["oracle_fill"]["nte"][model] >= table["clean"][model] - 0.01  # the oracle restores


def test_blind_subspace_matches_its_oracle_where_the_estimate_is_close(table):
    close = [s for s in SETTINGS[:4] if table[s]["angle"] <= CLOSE_DEG]
    assert set(SETTINGS[2:4]) <= set(close)  # per-patch noise at 10 dB and below: the estimate is within 10 degrees
    for setting in close:
        row = table[setting]
        for model, acc in row["blind_subspace"]["nte"].items():
            assert acc >= row["oracle_projection"]["nte"][model] - NEAR_ORACLE, (setting, model)


def test_tile_average_undoes_tiled_noise_on_natural_images(table):
    for setting in SETTINGS[6:]:  # tiled, 10 and 0 dB: no attack leaves the unauthorized models near chance
        row = table[setting]
        for model, acc in row["tile_average"]["nte"].items():
            assert row["identity"]["nte"][model] < 0.6 and acc >= row["identity"]["nte"][model] + 0.2


@pytest.mark.xfail(strict=True, reason="a limit of 200 released images (issue 15): on tiled NTEs the blind estimate "
                   "rests on one noise vector per image, and its error along the images' own colour directions leaves "
                   "a residual the fill cannot remove: blind_fill stays 8-10 points below oracle_fill at 0 dB although "
                   "the estimate is within 10 degrees; with a larger corpus it is not (the next test)")
def test_blind_attacks_match_their_oracles_on_tiled_ntes_where_the_estimate_is_close(table):
    close = [s for s in SETTINGS[4:] if table[s]["angle"] <= CLOSE_DEG]
    assert close
    for setting in close:
        row = table[setting]
        for model in UNAUTHORIZED:
            assert row["blind_fill"]["nte"][model] >= row["oracle_fill"]["nte"][model] - NEAR_ORACLE
            assert row["blind_subspace"]["nte"][model] >= row["oracle_projection"]["nte"][model] - NEAR_ORACLE


def test_tiled_blind_attacks_reach_their_oracles_with_a_larger_corpus():
    """The gap above is the corpus's size, not the estimator: with 1,200 released tiled NTEs at 0 dB (the 400 test
    crops and 800 train crops; the other 800 train crops public) the estimate comes within 4 degrees and both blind
    attacks within 5 points of their oracles on the test crops (with the 400 test crops alone: 7.3 degrees and 9-10
    points; `python benchmarks/attacks_vs_oracles.py --psnr 0 --corpus-extra 800` prints both)."""
    test, train = load_pixels("textures", "test"), load_pixels("textures", "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    extra, public = train.subset(order[:800]), train.subset(sorted(order[800:]))
    designated = load_model("zoo:tex_vit_null")
    enc = NTEEncoder(designated, psnr=0.0, noise="tiled")
    nte = enc.encode(test.images, key=7).images
    corpus = torch.cat([nte, enc.encode(extra.images, key=7, index=list(range(400, 1200))).images])
    ctx = AttackContext(public=public, ntes=corpus, encoder=enc.public_settings(), designated=designated)
    attacks = {name: build_attack(name).fit(ctx) for name in ATTACKS[2:]}
    assert max_angle(attacks["blind_fill"].subspace, attacks["oracle_fill"].subspace) <= 4.0
    for model in UNAUTHORIZED:
        handle = load_model(model)
        acc = {name: float((handle.logits(a(nte)).argmax(1) == test.labels).float().mean())
               for name, a in attacks.items()}
        assert acc["blind_fill"] >= acc["oracle_fill"] - NEAR_ORACLE, (model, acc)
        assert acc["blind_subspace"] >= acc["oracle_projection"] - NEAR_ORACLE, (model, acc)
