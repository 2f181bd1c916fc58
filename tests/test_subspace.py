"""Subspace math on small dense cases: patch SVD, Fourier polyphase blocks vs the explicit convolution matrix."""

import pytest
import torch
from torch import nn

from nte_eval.errors import NTEError
from nte_eval.geometry.conv import PixelConv
from nte_eval.geometry.subspace import OperatorSubspace, PatchSubspace, Select, null_dimension, select_mask
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model


def conv_handle(cin, m, k, s, p, size, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(cin, m, k, s, p), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, cin, size, size))
    std = tuple((0.2 + torch.rand(cin)).tolist())
    return ModelHandle.from_module(net, "0", mean=(0.5,) * cin, std=std, input_size=(cin, size, size))


def dense(op_fn, shape):
    n = int(torch.tensor(shape).prod())
    eye = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return op_fn(eye).reshape(n, -1).T


def test_patch_subspace_is_null_space_of_pixel_kernel():
    h = conv_handle(3, 20, 4, 4, 0, 16)
    sub = PatchSubspace(h, Select("tau", 1e-2))
    w = h.pixel_operator()
    assert sub.dim == 48 - 20 and sub.exact and sub.null_dim == 28
    assert (w @ sub.basis64).abs().max() < 1e-10
    assert torch.allclose(sub.basis64.T @ sub.basis64, torch.eye(sub.dim, dtype=torch.float64), atol=1e-10)


def test_pixel_operator_includes_normalisation():
    h = conv_handle(3, 5, 2, 2, 0, 4)
    x = torch.rand(2, 3, 4, 4)
    patches = torch.nn.functional.unfold(x - h.mean, 2, stride=2).transpose(1, 2).double()
    mean_resp = h.first_layer_response(h.mean.expand(1, 3, 4, 4))
    lin = (patches @ h.pixel_operator().T).transpose(1, 2).reshape(2, 5, 2, 2)
    assert torch.allclose(lin.float(), h.first_layer_response(x) - mean_resp, atol=1e-5)


@pytest.mark.parametrize("cin,m,k,s,p,size", [(3, 4, 6, 4, 1, 8), (3, 8, 7, 2, 3, 8), (2, 3, 3, 2, 1, 6)])
def test_fourier_blocks_match_explicit_circular_convolution(cin, m, k, s, p, size):
    h = conv_handle(cin, m, k, s, p, size)
    op = PixelConv(h)
    circ = dense(lambda e: op.apply_circular(e.float()).double(), (cin, size, size))
    sub = OperatorSubspace(h, Select("k", 1))
    gh, gw = sub.grid
    full = [sub.sigma[i, j] if j <= gw // 2 else sub.sigma[(-i) % gh, gw - j] for i in range(gh) for j in range(gw)]
    full = torch.cat(full).sort(descending=True).values
    dense_sv = torch.linalg.svdvals(circ)
    assert torch.allclose(full[: len(dense_sv)], dense_sv, rtol=1e-4, atol=1e-4)
    assert full[len(dense_sv):].abs().max() < 1e-4 if len(full) > len(dense_sv) else True


@pytest.mark.parametrize("cin,m,k,s,p,size", [(3, 4, 6, 4, 1, 8), (3, 8, 7, 2, 3, 8)])
def test_operator_projection_is_exact_null_space_of_zero_padded_conv(cin, m, k, s, p, size):
    h = conv_handle(cin, m, k, s, p, size)
    op = PixelConv(h)
    zero = dense(lambda e: op.apply(e.float()).double(), (cin, size, size))
    nullity = zero.shape[1] - int(torch.linalg.matrix_rank(zero))
    sub = OperatorSubspace(h, Select("tau", 1e-6))
    assert sub.exact and sub.dim == nullity
    x = torch.randn(4, cin, size, size)
    d = sub.project(x)
    circular_only = sub.project_circular(x)
    resp = lambda v: (zero.float() @ v.reshape(4, -1).T).norm() / v.norm()  # noqa: E731
    assert resp(circular_only) > 1e-3  # the wrap-around at the border really matters ...
    assert resp(d) < 1e-5  # ... and the border correction removes it
    assert torch.allclose(sub.project_circular(circular_only), circular_only, atol=1e-4)  # a projector


def test_null_dimension_per_geometry():
    assert null_dimension(conv_handle(3, 20, 4, 4, 0, 16)) == 28  # per patch
    assert null_dimension(conv_handle(3, 16, 6, 4, 1, 16)) == 48 - 16  # per Fourier block
    assert null_dimension(conv_handle(3, 64, 7, 2, 3, 16)) == 0  # ResNet-like stem: 12 inputs < 64 outputs


def test_select_rules():
    sigma = torch.tensor([[3.0, 0.5, 0.001, 0.0], [2.0, 1.0, 0.9, 0.8]])
    assert select_mask(sigma, Select("tau", 0.01)).tolist() == [[False, False, True, True], [False, False, False, True]]
    assert select_mask(sigma, Select("k", 2)).sum(-1).tolist() == [2, 2]
    energy = select_mask(sigma, Select("energy", 0.05))
    kept = (sigma[energy] ** 2).sum() / (sigma**2).sum()
    assert kept <= 0.05 + 1e-9 and energy[0, 3] and energy[0, 2] and not energy[1].any()


@pytest.mark.parametrize("bad", ["tau", "t=1", "k=0", "k=1.5", "energy=2", "tau=nan", "tau=abc"])
def test_select_parse_errors(bad):
    with pytest.raises(NTEError):
        Select.parse(bad)


def test_operator_mode_geometry_errors():
    with pytest.raises(NTEError, match="divisible"):
        OperatorSubspace(conv_handle(3, 4, 6, 4, 1, 10), Select("k", 1))
    with pytest.raises(NTEError, match="padding"):
        OperatorSubspace(conv_handle(3, 4, 3, 1, 2, 8), Select("k", 1))


@pytest.mark.parametrize("name", ["resnet_stem", "resnet_nullstem", "vit_null"])
def test_pixel_conv_adjoint_is_the_transpose(name):
    """<A x, y> = <x, A^T y> for the zero-padded first layer (CGLS relies on it)."""
    op = PixelConv(load_model(f"zoo:{name}"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    y = torch.randn(op.apply(x).shape, generator=gen)
    lhs, rhs = (op.apply(x).double() * y).sum(), (x.double() * op.adjoint(y).double()).sum()
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


@pytest.mark.parametrize("size", [8, 12])
def test_operator_sample_is_isotropic_in_the_subspace(size):
    """Every direction of the subspace gets the same variance: the noise map N from coefficients to images has
    N Nᵀ = c · P (P the circular projector), on odd and even Fourier grids alike."""
    h = conv_handle(3, 4, 6, 4, 1, size)
    sub = OperatorSubspace(h, Select("tau", 1e-6))
    p = int(torch.tensor(sub.coefficient_shape).prod())
    noise_map = sub.sample(torch.eye(p).view(p, *sub.coefficient_shape), "check")
    n = noise_map.reshape(p, -1).double().T  # (pixels, coefficients)
    eig = torch.linalg.eigvalsh(n @ n.T)
    nonzero = eig[eig > 1e-6 * eig.max()]
    assert len(nonzero) == sub.dim
    assert torch.allclose(nonzero, nonzero.mean().expand_as(nonzero), rtol=1e-3)


def test_cgls_border_correction_of_a_zero_image_stays_finite():
    h = conv_handle(3, 4, 6, 4, 1, 8)
    sub = OperatorSubspace(h, Select("tau", 1e-6))
    x = torch.randn(3, 3, 8, 8)
    x[1] = 0
    d = sub.correct_border(sub.project_circular(x))
    assert torch.isfinite(d).all() and d[1].abs().max() == 0
