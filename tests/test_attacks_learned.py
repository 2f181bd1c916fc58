"""learned_denoiser: a DnCNN the attacker trains on NTEs it makes for random surrogates (real digits, zoo models)."""

import pytest
import torch

from nte_eval.attacks import ATTACKS, AttackContext
from nte_eval.attacks.learned import LearnedDenoiser
from nte_eval.attacks.synthetic import probe, random_surrogate
from nte_eval.data.images import load_digits
from nte_eval.encoders import ENCODERS, NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.metrics import psnr
from nte_eval.models.load import load_model


@pytest.fixture(scope="module")
def public():
    return load_digits("train", limit=512)


@pytest.fixture(scope="module")
def test_digits():
    return load_digits("test", limit=96)


@pytest.fixture(scope="module")
def vit_null_case(public, test_digits):
    """A method-knowledge context for real vit_null NTEs at 10 dB (no designated model in it at all)."""
    encoder = NTEEncoder(load_model("zoo:vit_null"), psnr=10).fit()
    ntes = encoder.encode(test_digits.images, key=0).images
    return AttackContext(seed=0, public=public, ntes=ntes, encoder=encoder.public_settings()), ntes


def accuracy(handle, x, labels):
    return (handle.logits(x).argmax(1) == labels).float().mean().item()


def test_registered_as_method_knowledge():
    assert ATTACKS.get("learned_denoiser") is LearnedDenoiser
    assert LearnedDenoiser.knowledge == "method"


def test_denoiser_trained_on_surrogate_ntes_cleans_real_vit_null_ntes(vit_null_case, test_digits):
    context, ntes = vit_null_case
    clean = test_digits.images
    rec = LearnedDenoiser(steps=150, pairs=512, n_surrogates=8).fit(context)(ntes)
    before, after = psnr(ntes, clean).mean().item(), psnr(rec, clean).mean().item()
    assert abs(before - 10) < 0.1
    assert after > before + 6, (before, after)
    vit_wide = load_model("zoo:vit_wide")  # an unauthorized model: the NTEs fool it, the reconstructions do not
    assert accuracy(vit_wide, rec, test_digits.labels) > accuracy(vit_wide, ntes, test_digits.labels) + 0.3


def test_same_seed_gives_identical_weights_and_outputs(vit_null_case):
    context, ntes = vit_null_case
    rng = torch.random.get_rng_state()
    a, b, c = (LearnedDenoiser(steps=5, pairs=32, n_surrogates=2, seed=s).fit(context) for s in (0, 0, 1))
    assert torch.equal(rng, torch.random.get_rng_state())  # only explicit generators are used
    assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values(),
                                                    strict=True))
    assert torch.equal(a(ntes), b(ntes))
    assert not torch.equal(a(ntes), c(ntes))
    # Neither the designated model, nor surrogates, nor the released NTEs change what it learns.
    vit_null = load_model("zoo:vit_null")
    full = AttackContext(public=context.public, encoder=context.encoder, ntes=torch.zeros_like(ntes),
                         designated=vit_null, surrogates={"vit_null_s1": load_model("zoo:vit_null_s1")})
    assert torch.equal(LearnedDenoiser(steps=5, pairs=32, n_surrogates=2).fit(full)(ntes), a(ntes))


@pytest.mark.parametrize("zoo", ["vit_null", "resnet_stem", "mlp_linear"])
def test_surrogates_share_the_designated_geometry_not_its_weights(zoo, test_digits):
    designated = load_model(f"zoo:{zoo}")
    settings = NTEEncoder(designated).public_settings()
    gen = torch.Generator().manual_seed(0)
    surrogates = [random_surrogate(settings, gen, f"s{i}") for i in range(2)]
    for s in surrogates:
        geometry = s.first.geometry()
        geometry.pop("layer")
        assert geometry == settings["first_layer"]
        assert torch.equal(s.mean, designated.mean) and torch.equal(s.std, designated.std)
        assert s.logits(test_digits.images[:4]).shape == (4, 10)
        assert not torch.allclose(s.first.weight, designated.first.weight)
    assert not torch.equal(surrogates[0].first.weight, surrogates[1].first.weight)


@pytest.mark.parametrize(("zoo", "encoder", "params"), [
    ("vit_null", "nte", {"psnr": -10.0}),                    # unboxed NTEs far outside [0, 1]
    ("resnet_nullstem", "nte", {"psnr": 10.0}),              # operator view (overlapping stem)
    ("mlp_linear", "nte", {"psnr": 10.0}),                   # a Linear first layer
    ("vit_null", "nte", {"psnr": 30.0, "box": "project", "quantize": True}),
    ("vit_null", "gaussian", {"psnr": 10.0}),
    ("vit_null", "adversarial", {"psnr": 30.0, "steps": 2}),  # needs the surrogates' logits
])
def test_fits_for_every_encoder_type_and_view(zoo, encoder, params, public, test_digits):
    enc = ENCODERS.get(encoder)(load_model(f"zoo:{zoo}"), **params).fit()
    x = enc.encode(test_digits.images[:8], key=0).images
    attack = LearnedDenoiser(steps=2, pairs=8, n_surrogates=1).fit(AttackContext(public=public,
                                                                                encoder=enc.public_settings()))
    out = attack(x)
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.equal(out, x)


def test_needs_public_images_and_settings(vit_null_case, public):
    context, ntes = vit_null_case
    with pytest.raises(NTEError, match="public"):
        LearnedDenoiser(steps=1).fit(AttackContext(encoder=context.encoder))
    with pytest.raises(NTEError, match="encoder"):
        LearnedDenoiser(steps=1).fit(AttackContext(public=public))
    with pytest.raises(NTEError, match="public images are"):
        small = load_digits("train", limit=4, size=16)
        LearnedDenoiser(steps=1).fit(AttackContext(public=small, encoder=context.encoder))
    with pytest.raises(NTEError, match="knowledge='none' has no access"):
        LearnedDenoiser(steps=1).fit(context.restricted("none"))


def test_run_checks_fit_and_shape(vit_null_case):
    context, ntes = vit_null_case
    with pytest.raises(NTEError, match="fit"):
        LearnedDenoiser()(ntes)
    attack = LearnedDenoiser(steps=1, pairs=4, n_surrogates=1).fit(context)
    with pytest.raises(NTEError, match="trained for images"):
        attack(ntes[:, :, :16, :16])


def test_bad_params_are_rejected():
    with pytest.raises(NTEError, match="depth"):
        LearnedDenoiser(depth=1)
    with pytest.raises(NTEError, match="steps"):
        LearnedDenoiser(steps=0)


def test_clean_pairs_keep_clean_content(vit_null_case, test_digits):
    """Half the training pairs are clean images as their own targets: the denoiser then damages clean images less
    than one trained on NTEs only, and restores the NTEs no worse (short training: 150 steps)."""
    context, ntes = vit_null_case
    x, labels = test_digits.images, test_digits.labels
    vit_wide = load_model("zoo:vit_wide")
    mixed, ntes_only = (LearnedDenoiser(steps=150, pairs=512, n_surrogates=8, clean_share=share).fit(context)
                        for share in (0.5, 0.0))
    assert psnr(mixed(x), x).mean() > psnr(ntes_only(x), x).mean() + 1.5  # measured: 24.0 vs 21.8 dB
    assert accuracy(vit_wide, mixed(x), labels) >= accuracy(vit_wide, ntes_only(x), labels) + 0.1  # 85% vs 69%
    assert accuracy(vit_wide, mixed(ntes), labels) >= accuracy(vit_wide, ntes_only(ntes), labels)  # 79% vs 64%


def test_the_probe_is_public_images_encoded_for_a_random_surrogate():
    public = load_digits("train", limit=200).images
    encoder = NTEEncoder(load_model("zoo:vit_null"), psnr=10)
    a, b = probe(encoder, public, seed=3), probe(encoder, public, seed=3)
    assert torch.equal(a.ntes, b.ntes) and not torch.equal(a.ntes, probe(encoder, public, seed=4).ntes)
    assert len(a.clean) == 64 and any(torch.equal(a.clean[0], p) for p in public)
    assert abs(float(psnr(a.ntes, a.clean).mean()) - 10) < 0.05  # the encoder's PSNR, on the surrogate's subspace
    designated_noise = encoder.fit().encode(a.clean, key=0).images - a.clean
    surrogate_noise = a.ntes - a.clean  # another model's subspace: not the designated model's noise
    cos = torch.nn.functional.cosine_similarity(designated_noise.flatten(1), surrogate_noise.flatten(1)).abs()
    assert cos.max() < 0.5
    assert probe(encoder, load_digits("train", limit=8, size=16).images, seed=0) is None  # not the model's size
