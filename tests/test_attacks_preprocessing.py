"""Knowledge-'none' attacks: each does what its name says on real digits or a known synthetic case."""

import sys

import pytest
import torch

from nte_eval.attacks import ATTACKS, Attack, AttackContext, build_attack
from nte_eval.attacks.chain import Chain
from nte_eval.attacks.denoisers import estimate_noise_sigma
from nte_eval.data.images import load_digits
from nte_eval.errors import NTEError

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
NONE_ATTACKS = ["identity", "jpeg", "resize", "crop_resize", "occlusion", "illumination", "gaussian_blur", "median",
                "bit_depth", "grayscale", "gaussian_noise", "chain", "tv_chambolle", "nl_means", "wavelet",
                "bilateral"]
DENOISERS = ["tv_chambolle", "nl_means", "wavelet", "bilateral"]


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits("test", limit=24).images


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def checkerboard(size: int = 32) -> torch.Tensor:
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2).float().expand(2, 3, size, size).clone()


@pytest.mark.parametrize("name", NONE_ATTACKS)
def test_registered_deterministic_and_shape_preserving(name, digits):
    cls = ATTACKS.get(name)
    assert cls.knowledge == "none" and cls.describe()["description"]
    if cls.strength is not None:
        assert cls.strength[0] in cls._fields and cls.strength[1] in (-1, 1)
    x = noisy(digits[:4], 0.05)
    a = build_attack(name).fit(AttackContext(knowledge="none"))
    y = a(x)
    assert y.shape == x.shape and torch.equal(y, build_attack(name)(x))


@pytest.mark.parametrize("spec", [{"type": "jpeg", "quality": 0}, {"type": "jpeg", "scale": "stretch"},
                                  {"type": "resize", "factor": 0.5}, {"type": "resize", "interpolation": "lanczos"},
                                  {"type": "crop_resize", "keep": 0.0}, {"type": "occlusion", "fraction": 1.5},
                                  {"type": "illumination", "shift": -0.1}, {"type": "gaussian_blur", "sigma": 0.0},
                                  {"type": "median", "size": 4}, {"type": "bit_depth", "bits": 0},
                                  {"type": "gaussian_noise", "sigma": -1.0}, {"type": "tv_chambolle", "weight": 0.0},
                                  {"type": "nl_means", "h": -0.1}, {"type": "wavelet", "wavelet": "nope"},
                                  {"type": "bilateral", "sigma_color": 0.0}])
def test_out_of_range_params_raise(spec):
    with pytest.raises(NTEError, match=next(k for k in spec if k != "type")):
        build_attack(spec)


# --- preprocessing ---------------------------------------------------------------------------------------------

def test_jpeg_on_8bit_grid_and_error_grows_as_quality_drops(digits):
    errors = []
    for q in (95, 50, 10):
        y = build_attack({"type": "jpeg", "quality": q})(digits)
        assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4) and y.min() >= 0 and y.max() <= 1
        errors.append(mse(y, digits))
    assert 0 < errors[0] < errors[1] < errors[2]


def test_jpeg_minmax_keeps_out_of_range_values_clip_does_not(digits):
    x = digits * 3 - 1  # unboxed: each image spans about [-1, 2]
    y = build_attack({"type": "jpeg", "quality": 95, "scale": "minmax"})(x)
    lo = x.amin((1, 2, 3), keepdim=True)
    span = x.amax((1, 2, 3), keepdim=True) - lo
    u = (y - lo) / span * 255  # on the 8-bit grid of each image's own range
    assert torch.allclose(u, u.round(), atol=1e-3)
    assert y.min() < -0.5 and y.max() > 1.5
    assert mse(y, x) < 9 * mse(build_attack({"type": "jpeg", "quality": 95})(digits), digits) * 1.5
    clipped = build_attack({"type": "jpeg", "quality": 95, "scale": "clip"})(x)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_jpeg_grey_images():
    x = load_digits("test", limit=3).images[:, :1]
    y = build_attack({"type": "jpeg", "quality": 30})(x)
    assert 0 < mse(y, x) < 0.01


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "area"])
def test_resize_keeps_constant_and_destroys_pixel_checkerboard(mode):
    const = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(build_attack({"type": "resize", "interpolation": mode})(const), const, atol=1e-6)
    board = checkerboard()
    y = build_attack({"type": "resize", "factor": 2.0, "interpolation": mode})(board)
    assert float(y.std()) < 0.05 * float(board.std())  # the Nyquist pattern is gone
    assert y.shape == board.shape


def test_resize_factor_one_is_identity_and_odd_shapes_work(digits):
    assert torch.allclose(build_attack({"type": "resize", "factor": 1.0})(digits), digits, atol=1e-6)
    x = torch.rand(2, 3, 30, 21)
    assert build_attack({"type": "resize", "factor": 3.0})(x).shape == x.shape


def test_crop_resize_upsamples_the_central_region():
    x = torch.zeros(2, 3, 32, 32)
    x[..., 8:24, 8:24] = 0.7  # the central half is constant: keeping exactly it gives a constant image
    y = build_attack({"type": "crop_resize", "keep": 0.5})(x)
    assert torch.allclose(y, torch.full_like(x, 0.7), atol=1e-6)
    z = torch.rand(2, 3, 32, 32)
    assert torch.allclose(build_attack({"type": "crop_resize", "keep": 1.0})(z), z, atol=1e-6)


def test_occlusion_blanks_exactly_one_rectangle_and_is_seeded(digits):
    y = build_attack({"type": "occlusion", "fraction": 0.25, "value": -1.0, "seed": 3})(digits)
    blank = y == -1.0
    assert torch.equal(blank, blank[:, :1].expand_as(blank))  # same square in every channel
    m = blank[:, 0]
    assert (m.flatten(1).sum(1) == 8 * 8).all()
    assert (m.any(2).sum(1) == 8).all() and (m.any(1).sum(1) == 8).all()  # 8 rows x 8 columns: a square
    assert torch.equal(y[~blank], digits[~blank])
    tops = m.any(2).float().argmax(1)
    assert len(set(tops.tolist())) > 1  # the position varies per image
    again = build_attack({"type": "occlusion", "fraction": 0.25, "value": -1.0, "seed": 3})(digits)
    other = build_attack({"type": "occlusion", "fraction": 0.25, "value": -1.0, "seed": 4})(digits)
    assert torch.equal(y, again) and not torch.equal(y, other)


def test_illumination_shifts_each_image_by_one_constant(digits):
    t = 0.3
    y = build_attack({"type": "illumination", "shift": t, "seed": 5})(digits)
    d = (y - digits).flatten(1)
    assert float((d - d[:, :1]).abs().max()) < 1e-6
    s = d[:, 0]
    assert float(s.abs().max()) <= t and float(s.std()) > t / 4  # U(-t, t): varied, bounded
    assert (s > 0).any() and (s < 0).any()
    c = build_attack({"type": "illumination", "shift": t, "seed": 5, "clip": True})(digits)
    assert c.min() >= 0 and c.max() <= 1 and torch.equal(c, y.clamp(0, 1))
    assert not torch.equal(y, build_attack({"type": "illumination", "shift": t, "seed": 6})(digits))


def test_gaussian_blur_lowers_white_noise_variance():
    w = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ratios = [float(build_attack({"type": "gaussian_blur", "sigma": s})(w).var() / w.var()) for s in (0.5, 1.0, 2.0)]
    assert ratios[0] < 0.5 and ratios[2] < ratios[1] < ratios[0]
    assert abs(ratios[1] * 4 * torch.pi - 1) < 0.15  # theory: 1 / (4 pi sigma^2) for a 2-D Gaussian
    const = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(build_attack({"type": "gaussian_blur", "sigma": 3.0})(const), const, atol=1e-6)


def test_median_removes_salt_and_pepper(digits):
    g = torch.Generator().manual_seed(2)
    hit = torch.rand(digits.shape, generator=g) < 0.05
    salt = torch.rand(digits.shape, generator=g) < 0.5
    x = torch.where(hit, salt.float(), digits)
    y = build_attack({"type": "median", "size": 3})(x)
    assert mse(y, digits) < 0.2 * mse(x, digits)
    assert mse(y, digits) < mse(build_attack({"type": "gaussian_blur", "sigma": 0.8})(x), digits)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_bit_depth_gives_two_to_the_bits_levels(bits):
    ramp = torch.linspace(0, 1, 1024).view(1, 1, 32, 32).expand(1, 3, 32, 32)
    y = build_attack({"type": "bit_depth", "bits": bits})(ramp)
    assert len(torch.unique(y)) == 2 ** bits
    assert float((y - ramp).abs().max()) <= 0.5 / (2 ** bits - 1) + 1e-6
    z = build_attack({"type": "bit_depth", "bits": bits, "scale": "minmax"})(ramp * 4 - 2)
    assert len(torch.unique(z)) == 2 ** bits and float(z.min()) == -2 and float(z.max()) == 2


def test_grayscale_equal_channels_with_luminance_weights(digits):
    y = build_attack("grayscale")(digits)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    lum = LUMA[0] * digits[:, 0] + LUMA[1] * digits[:, 1] + LUMA[2] * digits[:, 2]
    assert torch.allclose(y[:, 0], lum, atol=1e-6)
    for c in range(3):
        pure = torch.zeros(1, 3, 4, 4)
        pure[:, c] = 1
        assert torch.allclose(build_attack("grayscale")(pure), torch.full_like(pure, LUMA[c]))
    with pytest.raises(NTEError, match="3 channels"):
        build_attack("grayscale")(torch.rand(1, 4, 8, 8))


def test_gaussian_noise_has_the_requested_std(digits):
    for sigma in (0.02, 0.2):
        d = build_attack({"type": "gaussian_noise", "sigma": sigma, "seed": 9})(digits) - digits
        assert abs(float(d.std()) / sigma - 1) < 0.03 and abs(float(d.mean())) < sigma * 0.03


# --- chain -----------------------------------------------------------------------------------------------------

def test_chain_equals_manual_composition_and_records_settings(digits):
    chain = build_attack({"type": "chain", "steps": ["resize", {"type": "jpeg", "quality": 50}, "median"]})
    manual = build_attack("median")(build_attack({"type": "jpeg", "quality": 50})(build_attack("resize")(digits)))
    assert torch.equal(chain(digits), manual)
    steps = chain.params()["steps"]
    assert [s["type"] for s in steps] == ["resize", "jpeg", "median"]
    assert steps[1] == {"type": "jpeg", "quality": 50, "scale": "clip"} and steps[0]["factor"] == 2.0
    assert build_attack({"type": "chain", "steps": steps}).params() == chain.params()  # the record rebuilds it


@pytest.mark.parametrize("steps, match", [([], "empty"), (["chain"], "cannot contain a chain"),
                                          ([{"type": "chain", "steps": ["jpeg"]}], "cannot contain a chain"),
                                          (["jepg"], "Did you mean 'jpeg'"),
                                          ([{"type": "jpeg", "qualty": 5}], "qualty"),
                                          (["resize", {"type": "jpeg", "quality": 500}], "step 1"),
                                          ([{"quality": 5}], "type")])
def test_chain_errors(steps, match):
    with pytest.raises(NTEError, match=match):
        build_attack({"type": "chain", "steps": steps})


@pytest.fixture
def method_attack():
    """A throwaway knowledge-'method' attack, registered for one test only."""

    class KnowsMethod(Attack, register=False):
        """Test only: reads the NTE corpus in fit."""

        name = "test_knows_method"
        knowledge = "method"

        def fit(self, context):
            super().fit(context)
            self.mean = self.context.ntes.mean()
            return self

        def run(self, x):
            return x - self.mean

    with ATTACKS.scope(KnowsMethod):
        yield KnowsMethod


def test_chain_knowledge_is_the_highest_step_and_fit_fits_every_step(method_attack, digits):
    assert build_attack({"type": "chain", "steps": ["jpeg", "resize"]}).knowledge == "none"
    chain = build_attack({"type": "chain", "steps": ["resize", "test_knows_method"]})
    assert chain.knowledge == "method" and Chain.knowledge == "none"
    ctx = AttackContext(ntes=digits + 0.5, public=None, knowledge="oracle")
    chain.fit(ctx)
    assert torch.allclose(chain(digits), build_attack("resize")(digits) - (digits + 0.5).mean())
    assert chain.context.ntes is not None
    with pytest.raises(NTEError, match="no access"):
        _ = chain.attacks[0].context.ntes  # the 'none' step still sees nothing


# --- denoisers -------------------------------------------------------------------------------------------------

def test_estimate_noise_sigma_on_digits(digits):
    for sigma in (0.05, 0.15):
        est = estimate_noise_sigma(noisy(digits, sigma))
        assert est.shape == (len(digits),) and float((est / sigma - 1).abs().median()) < 0.2


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_lower_the_mse_of_noisy_digits(name, digits):
    x = digits[:8]
    n = noisy(x, 0.1)
    y = build_attack(name)(n)
    assert mse(y, x) < 0.5 * mse(n, x)


@pytest.mark.parametrize("name", DENOISERS)
def test_denoisers_keep_values_outside_unit_range(name, digits):
    x = digits[:4] * 3 - 1
    y = build_attack(name)(noisy(x, 0.1))
    assert y.min() < -0.5 and y.max() > 1.5  # not clipped to [0, 1]
    assert build_attack(name)(noisy(digits[:4, :1], 0.1)).shape == (4, 1, 32, 32)  # one channel works too


def test_bilateral_is_shift_equivariant_for_negative_values(digits):
    n = noisy(digits[:4], 0.1)
    a = build_attack("bilateral")
    assert torch.allclose(a(n - 2.0), a(n) - 2.0, atol=1e-4)


def test_denoiser_strength_parameter_smooths_more(digits):
    n = noisy(digits[:4], 0.1)
    rough = [float(build_attack({"type": "tv_chambolle", "weight": w})(n).diff(dim=-1).abs().mean())
             for w in (0.02, 0.1, 0.5)]
    assert rough[0] > rough[1] > rough[2]


def test_optional_packages_missing_give_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes `import bm3d` fail, as when it is not installed
    with pytest.raises(NTEError, match="pip install bm3d"):
        build_attack("bm3d")
    monkeypatch.setitem(sys.modules, "pywt", None)
    with pytest.raises(NTEError, match="pip install PyWavelets"):
        build_attack("wavelet")


def test_bm3d_lowers_the_mse_when_installed(digits):
    pytest.importorskip("bm3d")
    x = digits[:2]
    n = noisy(x, 0.1)
    assert mse(build_attack("bm3d")(n), x) < 0.5 * mse(n, x)


@pytest.mark.parametrize("spec", [{"type": "occlusion", "fraction": 0.3}, {"type": "illumination", "shift": 0.2},
                                  {"type": "gaussian_noise", "sigma": 0.1}])
def test_random_attacks_draw_per_image_whatever_the_batch(digits, spec):
    """Each image's draw is keyed by the seed and the image itself: batches of 1, 7 or all give the same output, and
    a reordered batch the reordered output (results do not depend on --batch-size)."""
    attack = build_attack(spec)
    whole = attack(digits)
    assert all(torch.equal(torch.cat([attack(part) for part in digits.split(size)]), whole) for size in (1, 7))
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    assert torch.equal(attack(digits[order]), whole[order])
    assert not torch.equal(build_attack({**spec, "seed": 1})(digits), whole)
    change = (whole - digits).flatten(1)
    assert not torch.equal(change[0], change[1])  # two images, two draws
