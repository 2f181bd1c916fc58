"""Subspace reconstruction attacks (method, surrogate, oracle knowledge) on digits NTEs for zoo models."""

import pytest
import torch
from torch import nn

from nte_eval.attacks import AttackContext, build_attack
from nte_eval.data.images import load_digits
from nte_eval.encoders import GaussianEncoder, NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.geometry.conv import PixelConv
from nte_eval.geometry.subspace import natural_view
from nte_eval.metrics import psnr
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model

MODELS = ("vit_null", "vit_null_s1", "resnet_nullstem", "mlp_linear")


@pytest.fixture(scope="module")
def zoo():
    return {name: load_model(f"zoo:{name}") for name in MODELS}


@pytest.fixture(scope="module")
def test_set():
    return load_digits("test", limit=200)


@pytest.fixture(scope="module")
def public():
    return load_digits("train", limit=700)


def context(enc, ntes, public, zoo=None, surrogates=None):
    return AttackContext(public=public, ntes=ntes, encoder=enc.public_settings(), surrogates=surrogates or {},
                         designated=enc.handle if zoo is None else zoo)


def accuracy(handle, x, labels):
    return float((handle.logits(x).argmax(1) == labels).float().mean())


@pytest.fixture(scope="module")
def vit_0db(zoo, test_set):
    enc = NTEEncoder(zoo["vit_null"], psnr=0.0)
    return enc, enc.encode(test_set.images, key=1).images


@pytest.mark.parametrize("name", ["vit_null", "mlp_linear", "resnet_nullstem"])
def test_oracle_projection_ignores_exact_null_space_noise(zoo, test_set, public, name):
    x = test_set.images[:24]
    enc = NTEEncoder(zoo[name], psnr=0.0)
    nte = enc.encode(x, key=3).images
    attack = build_attack("oracle_projection").fit(context(enc, nte, public))
    assert psnr(nte, x).max() < 1  # the noise is huge ...
    tol = 2e-3 if name == "resnet_nullstem" else 1e-4  # the encoder's border correction is iterative (CGLS)
    assert (attack(nte) - attack(x)).abs().max() < tol  # ... and lies entirely in what the projection removes


def test_oracle_fill_restores_unauthorized_models(zoo, test_set, public, vit_0db):
    enc, nte = vit_0db
    clean_acc = accuracy(zoo["vit_null_s1"], test_set.images, test_set.labels)
    assert accuracy(zoo["vit_null_s1"], nte, test_set.labels) < 0.3
    filled = build_attack("oracle_fill").fit(context(enc, nte, public))(nte)
    assert accuracy(zoo["vit_null_s1"], filled, test_set.labels) >= clean_acc - 0.03
    assert psnr(filled, test_set.images).mean() > 40


def test_oracle_fill_is_exact_at_a_zero_padded_border(zoo, test_set, public):
    x, labels = test_set.images[:100], test_set.labels[:100]
    enc = NTEEncoder(zoo["resnet_nullstem"], psnr=0.0)
    nte = enc.encode(x, key=2).images
    circular = NTEEncoder(zoo["resnet_nullstem"], psnr=0.0, border="check")
    filled = build_attack("oracle_fill").fit(context(enc, nte, public))(nte)
    assert psnr(filled, x).mean() > 40  # the fill knows the border-corrected subspace ...
    naive = build_attack("oracle_fill").fit(context(circular, nte, public))(nte)
    assert psnr(naive, x).mean() < 25  # ... while the circular one leaks the border correction
    assert accuracy(zoo["vit_null"], filled, labels) >= accuracy(zoo["vit_null"], x, labels) - 0.03


def test_blind_subspace_finds_the_true_subspace(zoo, public, test_set):
    enc = NTEEncoder(zoo["vit_null"], psnr=20.0).fit()
    nte = enc.encode(test_set.images, key=5).images
    attack = build_attack("blind_subspace").fit(context(enc, nte, public))
    est = attack.subspace.hidden[0, 0].double()
    assert est.shape[-1] == 16  # rank from the eigenvalue gap: the 16-dim null space of the 48-dim patch
    cosines = torch.linalg.svdvals(enc.subspace.basis64.T @ est)
    assert cosines.min() > 0.95  # every principal angle small


def test_blind_fill_beats_projection_and_restores(zoo, public, test_set, vit_0db):
    enc, nte = vit_0db
    ctx = context(enc, nte, public)
    projected = build_attack("blind_subspace").fit(ctx)(nte)
    filled = build_attack("blind_fill").fit(ctx)(nte)
    assert psnr(filled, test_set.images).mean() > psnr(projected, test_set.images).mean() + 15
    clean_acc = accuracy(zoo["vit_null_s1"], test_set.images, test_set.labels)
    assert accuracy(zoo["vit_null_s1"], filled, test_set.labels) >= clean_acc - 0.03


def test_blind_fill_in_the_operator_view_fits_the_layer(zoo, public, test_set):
    enc = NTEEncoder(zoo["resnet_nullstem"], psnr=0.0)
    nte = enc.encode(test_set.images, key=4).images
    labels = test_set.labels
    filled = build_attack("blind_fill").fit(context(enc, nte, public))(nte)
    assert accuracy(zoo["vit_null"], nte, labels) < 0.3
    assert accuracy(zoo["vit_null"], filled, labels) >= accuracy(zoo["vit_null"], test_set.images, labels) - 0.05


def test_tile_average_undoes_tiled_noise_only(zoo, public, test_set):
    x = test_set.images
    for noise, undone in (("tiled", True), ("per_patch", False)):
        enc = NTEEncoder(zoo["vit_null"], psnr=0.0, noise=noise)
        nte = enc.encode(x, key=6).images
        out = build_attack("tile_average").fit(context(enc, nte, public))(nte)
        gain = float((psnr(out, x) - psnr(nte, x)).mean())
        assert (gain > 20) if undone else (abs(gain) < 1)


def test_highfreq_projection_barely_changes_clean_images(zoo, public, test_set, vit_0db):
    enc, nte = vit_0db
    x = test_set.images
    mild = build_attack("highfreq_projection").fit(context(enc, nte, public))
    strong = build_attack({"type": "highfreq_projection", "energy": 0.9}).fit(context(enc, nte, public))
    assert psnr(mild(x), x).mean() > 30
    assert psnr(strong(x), x).mean() < psnr(mild(x), x).mean() - 5


def test_surrogate_projection_with_the_designated_model_is_the_oracle(zoo, public, test_set, vit_0db):
    enc, nte = vit_0db
    own = build_attack("surrogate_projection").fit(context(enc, nte, public, surrogates={"self": zoo["vit_null"]}))
    oracle = build_attack("oracle_projection").fit(context(enc, nte, public))
    assert torch.equal(own(nte), oracle(nte))
    other = build_attack({"type": "surrogate_projection", "models": ["s1"]})
    other.fit(context(enc, nte, public, surrogates={"s1": zoo["vit_null_s1"]}))
    # another seed's subspace is not the designated one's: removing it leaves the noise
    assert accuracy(zoo["vit_null_s1"], other(nte), test_set.labels) < 0.5


@pytest.mark.parametrize("name,knowledge", [("blind_subspace", "method"), ("blind_fill", "method"),
                                            ("highfreq_projection", "method"), ("tile_average", "method"),
                                            ("surrogate_projection", "surrogate"), ("oracle_fill", "oracle")])
def test_attacks_see_only_their_knowledge(zoo, public, vit_0db, name, knowledge):
    enc, nte = vit_0db
    attack = build_attack(name).fit(context(enc, nte[:40], public, surrogates={"s1": zoo["vit_null_s1"]}))
    assert attack.knowledge == knowledge
    beyond = {"method": ("surrogates", "designated"), "surrogate": ("designated",), "oracle": ()}[knowledge]
    for field in beyond:
        with pytest.raises(NTEError, match="no access"):
            getattr(attack.context, field)
    with pytest.raises(NTEError, match="not available"):  # a field its knowledge allows but the run lacks
        build_attack(name).fit(AttackContext(ntes=nte, encoder=enc.public_settings()))  # no public images


def test_bad_parameters_and_shapes_raise(zoo, public, vit_0db):
    enc, nte = vit_0db
    with pytest.raises(NTEError, match="rank"):
        build_attack({"type": "blind_subspace", "rank": -1})
    with pytest.raises(NTEError, match="energy"):
        build_attack({"type": "highfreq_projection", "energy": 1.5})
    with pytest.raises(NTEError, match="no surrogate"):
        build_attack({"type": "surrogate_projection", "models": ["nope"]}).fit(
            context(enc, nte, public, surrogates={"s1": zoo["vit_null_s1"]}))
    attack = build_attack("blind_fill").fit(context(enc, nte[:40], public))
    with pytest.raises(NTEError, match="fitted for images"):
        attack(torch.rand(2, 3, 16, 16))


def test_baseline_encoders_and_large_images_still_run(zoo, public, test_set):
    x = test_set.images[:8]
    gauss = GaussianEncoder(zoo["vit_null"], psnr=20.0)
    noisy = gauss.encode(x, key=0).images
    for name in ("oracle_fill", "blind_subspace", "tile_average"):
        out = build_attack(name).fit(context(gauss, noisy, public))(noisy)
        assert out.shape == x.shape and torch.isfinite(out).all()
    torch.manual_seed(0)  # a stem on images too large for the dense border subspace: circular approximation
    net = nn.Sequential(nn.Conv2d(3, 16, 6, 4, 1), nn.Flatten(), nn.LazyLinear(10))
    net(torch.zeros(1, 3, 64, 64))
    handle = ModelHandle.from_module(net, "0", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 64, 64))
    big = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear")
    enc = NTEEncoder(handle, psnr=10.0)
    nte = enc.encode(big, key=0).images
    pub = torch.nn.functional.interpolate(public.images[:64], size=(64, 64), mode="bilinear")
    big_public = type(public)(pub, public.labels[:64], public.class_names, public.names[:64])
    for name in ("oracle_fill", "blind_fill"):
        out = build_attack(name).fit(context(enc, nte, big_public))(nte)
        assert psnr(out, big).mean() > psnr(nte, big).mean() + 5


def test_natural_view_is_patch_for_patchify_and_linear_layers_only(zoo):
    views = {name: natural_view(handle.first) for name, handle in zoo.items()}
    assert views == {"vit_null": "patch", "vit_null_s1": "patch", "resnet_nullstem": "operator", "mlp_linear": "patch"}


def test_dense_convolution_matches_apply_and_adjoint(zoo):
    """The dense matrix and Gram matrix behind the exact border subspaces are the operator itself (std included)."""
    op = PixelConv(zoo["resnet_nullstem"])
    x = torch.randn(2, *op.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, y = op.matrix(), op.apply(x)
    assert torch.allclose(x.flatten(1) @ a.T, y.flatten(1))
    assert torch.allclose(y.flatten(1) @ a, op.adjoint(y).flatten(1))
    assert torch.allclose(op.gram(), a.T @ a)
