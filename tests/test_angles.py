"""Degradation geometry (``nte_eval.certify.angles``): dense references on tiny images, Monte Carlo on the zoo."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from nte_eval.certify.angles import model_spectrum, pair_geometry, predicted_energy, principal_angles
from nte_eval.encoders.nte import NTEEncoder
from nte_eval.errors import NTEError
from nte_eval.geometry.conv import PixelConv, polyphase_operator
from nte_eval.models.handle import ModelHandle
from nte_eval.models.zoo import ZOO, load_zoo_model

TAU = 0.01
SMALL = (3, 8, 8)
RECT = (3, 6, 18)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """scipy/numpy BLAS too: two OpenBLAS threads on a busy 2-core machine spin and run 10x slower."""
    with threadpool_limits(1):
        yield


def conv_handle(size, m, kernel, stride, padding=0, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(size[0], m, kernel, stride, padding), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, *size))
    std = tuple((0.2 + torch.rand(size[0])).tolist())
    return ModelHandle.from_module(net, "0", mean=(0.5,) * size[0], std=std, input_size=size)


def linear_handle(size, m, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(size), m), nn.ReLU(), nn.Linear(m, 2))
    return ModelHandle.from_module(net, "1", mean=(0.5,) * size[0], std=(0.3, 0.7, 1.1), input_size=size)


GEOMETRIES = {  # name -> (image size, builder): different strides, kernels, paddings and a Linear
    "patch4": (SMALL, lambda: conv_handle(SMALL, 8, 4, 4)),
    "stem": (SMALL, lambda: conv_handle(SMALL, 4, 3, 2, 1, seed=1)),
    "linear": (SMALL, lambda: linear_handle(SMALL, 50)),
    "patch2": (SMALL, lambda: conv_handle(SMALL, 5, 2, 2, seed=2)),
    "rect_patch2": (RECT, lambda: conv_handle(RECT, 5, 2, 2, seed=3)),
    "rect_patch32": (RECT, lambda: conv_handle(RECT, 7, (3, 2), (3, 2), seed=4)),
    "rect_overlap": (RECT, lambda: conv_handle(RECT, 6, (4, 5), (2, 3), (1, 1), seed=5)),
}
PAIRS = [(d, b, "auto") for d in GEOMETRIES for b in GEOMETRIES
         if d != b and GEOMETRIES[d][0] == GEOMETRIES[b][0]] + [("patch4", "stem", "operator"),
                                                                 ("patch4", "linear", "operator")]


def dense(fn, size):
    """The matrix (outputs x n) of a linear map on images of ``size``, from the n basis images (float64)."""
    n = math.prod(size)
    return fn(torch.eye(n, dtype=torch.float64).view(n, *size)).reshape(n, -1).T


def right_svd(a, n):
    """Singular values padded with zeros to n, and all n right singular vectors (columns)."""
    _, s, vh = torch.linalg.svd(a, full_matrices=True)
    return torch.cat([s, s.new_zeros(n - len(s))]), vh.T


def dense_geometry(encoder, other, tau):
    """pair_geometry's quantities from the dense circular operators (scipy for the angles)."""
    size = encoder.handle.input_size
    n = math.prod(size)
    sd, vd = right_svd(dense(PixelConv(encoder.handle).apply_circular, size), n)
    sb, vb = right_svd(dense(PixelConv(other).apply_circular, size), n)
    # S: the range of the encoder's circular projector (float32 inside), which is D's exact null space here
    project = encoder.subspace.project_circular if encoder.mode == "operator" else encoder.project
    p = dense(project, size)
    evals, evecs = torch.linalg.eigh((p + p.T) / 2)
    s = vd[:, sd <= 1e-9 * sd.max()]
    assert encoder.subspace.exact and s.shape[1] == int((evals > 0.5).sum())
    assert scipy.linalg.subspace_angles(s.numpy(), evecs[:, evals > 0.5].numpy()).max() < 1e-5
    r = vb[:, sb > tau]
    k = s.shape[1]
    abs_x = vd @ torch.diag(sd / sd.norm()) @ vd.T
    abs_y = vb @ torch.diag(sb / sb.norm()) @ vb.T
    spectral = float((sd / sd.norm() - sb / sb.norm()).square().sum())  # both sorted descending
    sum_cos2 = float((s.T @ r).square().sum())
    energy = float((dense(PixelConv(other).apply_circular, size) @ s).square().sum()) / k
    sigma_r = float(sb[sb > tau].min())
    return {"k": k, "r": r.shape[1], "angles": np.sort(scipy.linalg.subspace_angles(s.numpy(), r.numpy())),
            "sum_cos2": sum_cos2, "sigma_r": sigma_r, "energy_circular": energy,
            "lower_bound": sigma_r**2 * sum_cos2 / k,
            "misalignment": float((abs_x - abs_y).square().sum()) - spectral}


@pytest.mark.parametrize("d_name,b_name,mode", PAIRS)
def test_pair_geometry_matches_dense_circular_operators(d_name, b_name, mode):
    encoder = NTEEncoder(GEOMETRIES[d_name][1](), mode=mode, psnr=10)
    other = GEOMETRIES[b_name][1]()
    got = pair_geometry(encoder, other, TAU)
    want = dense_geometry(encoder, other, TAU)
    assert got["reason"] is None and (got["k"], got["r"]) == (want["k"], want["r"])
    assert np.abs(np.radians(got["angles_deg"]) - want["angles"]).max() < 1e-6
    for key in ("sum_cos2", "sigma_r", "energy_circular", "lower_bound", "misalignment"):
        assert got[key] == pytest.approx(want[key], rel=1e-8, abs=1e-12), key
    assert got["lower_bound"] <= got["energy_circular"] and got["misalignment"] >= -1e-12


def test_reblocked_spectrum_matches_expanded_kernel_blocks():
    """A stride-sB conv viewed at period s = t * sB: a stride-s conv with t_h t_w shifted copies of the kernel."""
    handle = GEOMETRIES["rect_overlap"][1]()
    f, period, grid = handle.first, (6, 6), (1, 3)
    (sh, sw), (th, tw) = f.stride, (period[0] // f.stride[0], period[1] // f.stride[1])
    w = handle.pixel_operator().view_as(f.weight)
    m, c, kh, kw = w.shape
    big = torch.zeros(m, th, tw, c, kh + (th - 1) * sh, kw + (tw - 1) * sw, dtype=torch.float64)
    for a in range(th):
        for b in range(tw):
            big[:, a, b, :, a * sh:a * sh + kh, b * sw:b * sw + kw] = w
    blocks = polyphase_operator(big.reshape(m * th * tw, c, *big.shape[-2:]), period, f.padding, grid)
    spec = model_spectrum(handle, period)
    gram = spec.v @ torch.diag_embed(spec.sigma.square().to(torch.complex128)) @ spec.v.mH
    assert torch.allclose(blocks.mH @ blocks, gram, atol=1e-10)
    eye = torch.eye(spec.v.shape[-1], dtype=torch.complex128)
    assert torch.allclose(spec.v.mH @ spec.v, eye.expand_as(spec.v), atol=1e-12)


def random_unitary(n, gen):
    z = torch.randn(n, n, dtype=torch.complex128, generator=gen)
    return torch.linalg.qr(z)[0]


@pytest.mark.parametrize("k,r,near", [(5, 8, False), (30, 35, False), (35, 10, False), (6, 6, True),
                                      (12, 4, True), (1, 39, False)])
def test_principal_angles_match_scipy(k, r, near):
    gen = torch.Generator().manual_seed(k * 100 + r)
    n = 40
    va = random_unitary(n, gen)
    vb = torch.linalg.qr(va + 1e-4 * torch.randn(n, n, dtype=torch.complex128, generator=gen))[0] if near \
        else random_unitary(n, gen)
    sel_a = torch.zeros(n, dtype=torch.bool)
    sel_a[torch.randperm(n, generator=gen)[:k]] = True
    sel_b = sel_a.clone() if near else torch.zeros(n, dtype=torch.bool)
    if not near:
        sel_b[torch.randperm(n, generator=gen)[:r]] = True
    elif r < k:
        sel_b[torch.nonzero(sel_b).flatten()[r:]] = False
    got = principal_angles(va, sel_a, vb, sel_b).numpy()
    want = np.sort(scipy.linalg.subspace_angles(va[:, sel_a].numpy(), vb[:, sel_b].numpy()))
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-7


def test_period_not_dividing_the_image_gives_reason():
    encoder = NTEEncoder(GEOMETRIES["patch4"][1](), psnr=10)
    got = pair_geometry(encoder, conv_handle(SMALL, 4, 3, 3), TAU)
    assert got["period"] == [12, 12] and "does not divide" in got["reason"] and got["k"] is None


def test_non_shift_invariant_noise_is_refused():
    stem = GEOMETRIES["stem"][1]()
    for encoder in (NTEEncoder(GEOMETRIES["patch4"][1](), noise="tiled"), NTEEncoder(stem, mode="patch")):
        with pytest.raises(NTEError, match="shift-invariant"):
            pair_geometry(encoder, stem)
        with pytest.raises(NTEError, match="shift-invariant"):
            predicted_energy(encoder, {"stem": stem})


# ---------------------------------------------------------------------------------------------------- zoo


@pytest.fixture(scope="module")
def zoo():
    return {name: load_zoo_model(name) for name in ZOO}


def test_predicted_energy_matches_monte_carlo_on_real_ntes(zoo):
    """Operator mode with border correction (resnet_nullstem) seen by an overlapping, padded stem (resnet_stem)."""
    encoder = NTEEncoder(zoo["resnet_nullstem"], psnr=10)
    pred = predicted_energy(encoder, {"stem": zoo["resnet_stem"]})
    op, ratios = PixelConv(zoo["resnet_stem"]), []
    gen = torch.Generator().manual_seed(0)
    for start in range(0, 2000, 250):
        x = torch.rand(250, 3, 32, 32, generator=gen)
        delta = (encoder.encode(x, key=7, index=list(range(start, start + 250)), record=False).images - x).double()
        ratios.append(op.apply(delta).flatten(1).square().sum(1) / delta.flatten(1).square().sum(1))
    ratios = torch.cat(ratios)
    se = float(ratios.std()) / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - pred["stem"]) < 4 * se
    assert 0.9 * encoder.subspace.dim < pred["k_eff"] <= encoder.subspace.dim * (1 + 1e-6)


def test_predicted_energy_is_circular_energy_when_nothing_pads(zoo):
    encoder = NTEEncoder(zoo["vit_null"], psnr=10)
    others = {name: zoo[name] for name in ("vit_null_s1", "convnext_patchify", "mlp_linear")}
    pred = predicted_energy(encoder, others)
    assert pred["k_eff"] == pytest.approx(1024, rel=1e-12)
    for name, handle in others.items():
        assert pred[name] == pytest.approx(pair_geometry(encoder, handle)["energy_circular"], rel=1e-6)


@pytest.mark.parametrize("d_name", ["vit_null", "resnet_nullstem"])
def test_zoo_bounds_and_misalignment(zoo, d_name):
    encoder = NTEEncoder(zoo[d_name], psnr=10)
    for handle in zoo.values():
        got = pair_geometry(encoder, handle)
        assert got["lower_bound"] <= got["energy_circular"] * (1 + 1e-12) + 1e-12
        assert got["misalignment"] >= -1e-12 and got["abs_distance"] >= got["spectral_distance"] - 1e-12
    h = zoo[d_name]
    scaled = ModelHandle(h.module, h.first.path, tuple(h.mean.flatten().tolist()),
                         tuple((h.std.flatten() / 3).tolist()), h.input_size)
    for same in (h, scaled):
        got = pair_geometry(encoder, same)
        assert abs(got["misalignment"]) < 1e-10 and got["energy_circular"] < 1e-12 * got["energy_isotropic"]
        assert got["angle_min"] == pytest.approx(90)
