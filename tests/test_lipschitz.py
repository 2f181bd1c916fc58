"""Lipschitz bounds of the network after the first layer: closed forms, convolution norms, BN folding, the zoo."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nte_eval.certify.lipschitz import (
    GELU_SLOPES,
    Float64Network,
    conv_operator_norm,
    lipschitz_bounds,
    lipsdp_bound,
    local_estimate,
    product_bound,
)
from nte_eval.data.images import load_digits
from nte_eval.errors import NTEError
from nte_eval.models.handle import ModelHandle
from nte_eval.models.zoo import load_zoo_model

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def handle_of(net: nn.Module, first: str, size: tuple[int, int, int]) -> ModelHandle:
    return ModelHandle.from_module(net, first, MEAN, STD, size)


def spectral(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.detach().double(), 2))


def power_norm(op, shape: tuple[int, ...], iters: int = 300) -> float:
    """‖op‖₂ from below by power iteration on opᵀop (autograd gives the adjoint)."""
    v = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(iters):
        v = (v / v.norm()).requires_grad_(True)
        (v,) = torch.autograd.grad(op(v).square().sum() / 2, v)
    return float(op(v / v.norm()).norm().detach())


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits("test", limit=8).images


@pytest.fixture(scope="module")
def zoo() -> dict[str, ModelHandle]:
    return {name: load_zoo_model(name) for name in ("resnet_nullstem", "resnet_stem", "vit_null",
                                                     "convnext_patchify", "mlp_linear")}


def test_two_linear_layers_closed_form():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.Linear(20, 5))
    h = handle_of(net, "1", (3, 4, 4))
    want = spectral(net[2].weight)
    for bound in (product_bound(h), lipsdp_bound(h)):
        assert bound.status == "certified", bound.detail
        assert bound.value == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [(3, 2, 1, 1, 1), (7, 2, 3, 1, 1), (3, 1, 2, 2, 2)])
def test_strided_padded_conv_bound_is_safe_and_tight(kernel, stride, padding, dilation, groups):
    torch.manual_seed(kernel)
    conv = nn.Conv2d(4, 6, kernel, stride, padding, dilation, groups, bias=False).double()
    geometry = ((16, 16), (stride, stride), (padding, padding), (dilation, dilation), groups)
    estimate = power_norm(conv, (1, 4, 16, 16))
    circular = conv_operator_norm(conv.weight, *geometry, dense_limit=0)
    exact = conv_operator_norm(conv.weight, *geometry, dense_limit=1 << 24)
    assert estimate <= exact * (1 + 1e-9) and exact <= circular * (1 + 1e-9)
    assert exact == pytest.approx(estimate, rel=1e-3)
    assert circular <= 1.1 * estimate


def test_zero_padding_modules_have_gain_one():
    """A TF-'same' block (ZeroPad2d, then an unpadded depthwise conv, as EfficientNet-Lite builds it) is bounded by
    the conv's own norm: the padding copies its input beside zeros."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(4, 4, 3, 2, groups=4), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    h = handle_of(net, "0", (3, 16, 16))
    bound = product_bound(h)
    assert bound.status == "certified", bound.detail
    est = local_estimate(h, load_digits("test", limit=2, size=16).images, radius=0.1)
    assert est.value <= bound.value * (1 + 1e-9)


def test_non_overlapping_conv_is_the_patch_norm():
    torch.manual_seed(1)
    w = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    want = spectral(w.reshape(5, -1))
    for limit in (0, 1 << 19):  # circular (Fourier blocks) and dense paths
        assert conv_operator_norm(w, (16, 16), (4, 4), (0, 0), dense_limit=limit) == pytest.approx(want, rel=1e-6)


def test_batchnorm_is_folded_into_its_conv():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False),
                        nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    bn = net[3]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.1, 3.0)
    bn.weight.data.normal_()
    h = handle_of(net, "0", (3, 8, 8))
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    folded = net[2].weight.detach().double() * scale[:, None, None, None]
    want = conv_operator_norm(folded, (8, 8), (2, 2), (1, 1)) * spectral(net[6].weight)
    bound = product_bound(h)
    assert bound.status == "certified" and "1 BatchNorms folded" in bound.detail
    assert bound.value == pytest.approx(want, rel=1e-9)
    unfolded = conv_operator_norm(net[2].weight, (8, 8), (2, 2), (1, 1)) * float(scale.abs().max())
    assert bound.value < unfolded * spectral(net[6].weight)


def test_pooling_and_residual_graph_bound_the_local_estimate():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            y = self.pool(F.gelu(self.stem(x)))
            y = y + 0.5 * torch.relu(self.conv(y))
            y = torch.cat([y.mean((2, 3)), F.adaptive_max_pool2d(y, 1).flatten(1)], dim=1)
            return self.head(y)

    torch.manual_seed(3)
    h = handle_of(Net(), "stem", (3, 8, 8))
    bound = product_bound(h)
    assert bound.status == "certified" and "1 residual sums" in bound.detail, bound.detail
    assert local_estimate(h, torch.rand(4, 3, 8, 8), radius=1.0).value <= bound.value
    assert lipsdp_bound(h).status == "refused"


def test_raw_input_outside_the_first_layer_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 4, 2, stride=2), nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            return self.head(self.stem(x).flatten(1)) + x.mean()

    bound = product_bound(handle_of(Skip(), "stem", (3, 8, 8)))
    assert bound.status == "refused" and "raw input" in bound.detail


@pytest.mark.parametrize("name", ["resnet_nullstem", "resnet_stem"])
def test_resnets_product_certified_above_local(zoo, digits, name):
    h = zoo[name]
    before = {k: v.clone() for k, v in h.module.state_dict().items()}
    bound = product_bound(h)
    assert bound.status == "certified" and math.isfinite(bound.value), bound.detail
    assert "residual sums" in bound.detail and "BatchNorms folded" in bound.detail
    local = local_estimate(h, digits, radius=0.5, points=2, iters=15)
    assert local.status == "estimate" and 0 < local.value <= bound.value
    assert lipsdp_bound(h).status == "refused"
    after = h.module.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_vit_and_convnext_are_refused(zoo):
    for name in ("vit_null", "convnext_patchify"):
        for bound in (product_bound(zoo[name]), lipsdp_bound(zoo[name])):
            assert bound.status == "refused" and bound.value is None
            assert "LayerNorm" in bound.detail or "attention" in bound.detail, bound.detail


def test_mlp_linear_product_lipsdp_local(zoo, digits):
    h = zoo["mlp_linear"]
    product, lipsdp = product_bound(h), lipsdp_bound(h)
    assert product.status == lipsdp.status == "certified"
    assert product.value == pytest.approx(GELU_SLOPES[1] * spectral(h.module[1].fc2.weight), rel=1e-12)
    assert lipsdp.value <= product.value * (1 + 1e-9)
    local = local_estimate(h, digits, radius=0.5)
    assert local.value <= lipsdp.value


def test_gelu_slope_bounds():
    x = torch.linspace(-10, 10, 200_001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(F.gelu(x).sum(), x)
    assert GELU_SLOPES[1] == pytest.approx(1.1289, abs=1e-4) and GELU_SLOPES[0] == pytest.approx(-0.1289, abs=1e-4)
    assert GELU_SLOPES[0] <= float(d.min()) and float(d.max()) <= GELU_SLOPES[1]
    assert float(d.max()) == pytest.approx(GELU_SLOPES[1], abs=1e-9)


@pytest.mark.parametrize("act,hidden,seed", [(nn.ReLU, (24, 16), 0), (nn.GELU, (16, 12), 1),
                                             (nn.ReLU, (12, 10, 8), 2), (nn.GELU, (10, 12, 8), 3)])
def test_random_mlps_lipsdp_between_local_and_product(act, hidden, seed):
    torch.manual_seed(seed)
    layers, width = [nn.Flatten()], 48
    for n in hidden:
        layers += [nn.Linear(width, n), act()]
        width = n
    h = handle_of(nn.Sequential(*layers, nn.Linear(width, 5)), "1", (3, 4, 4))
    product, lipsdp = product_bound(h), lipsdp_bound(h)
    assert product.status == lipsdp.status == "certified", lipsdp.detail
    assert lipsdp.value <= product.value * (1 + 1e-9)
    assert local_estimate(h, torch.rand(6, 3, 4, 4), radius=2.0).value <= lipsdp.value


def test_rest_of_network_reproduces_the_model(zoo, digits):
    h = zoo["resnet_stem"]
    g = Float64Network(h)
    a = g.first(digits[:2])
    assert torch.allclose(a, h.first_layer_response(digits[:2]).double(), atol=1e-4)
    assert torch.allclose(g(digits[:2], a), h.logits(digits[:2]).double(), atol=1e-4)
    assert not torch.allclose(g(digits[:2], a + 1.0), g(digits[:2], a))


def test_lipschitz_bounds_dispatch_and_unknown_source(zoo):
    found = lipschitz_bounds(zoo["mlp_linear"], ["product", "lipsdp"])
    assert list(found) == ["product", "lipsdp"] and all(b.source == s for s, b in found.items())
    with pytest.raises(NTEError, match="product, lipsdp, local"):
        lipschitz_bounds(zoo["mlp_linear"], ["prodct"])


class InPlaceScale(nn.Module):
    """Scales a value in place and then reads the original name: the traced graph must not lose the scaling."""

    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(48, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.first(x.flatten(1))
        y.mul_(100.0)
        return self.head(y)


class KeywordResidual(nn.Module):
    """A residual written with a keyword argument: both branches must be counted."""

    def __init__(self):
        super().__init__()
        self.first, self.branch, self.head = nn.Linear(48, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.first(x.flatten(1))
        return self.head(torch.add(y, other=10.0 * self.branch(y)))


@pytest.mark.parametrize("net", [InPlaceScale, KeywordResidual])
def test_bounds_never_miss_in_place_ops_or_keyword_arguments(net):
    """Found by review: an in-place op (dropped as dead code) and a keyword branch once gave 'certified' bounds far
    below the truth. Either the bound is refused or it is at least the local estimate."""
    torch.manual_seed(0)
    h = handle_of(net(), "first", (3, 4, 4))
    local = local_estimate(h, torch.rand(4, 3, 4, 4), radius=1.0).value
    for bound in (product_bound(h), lipsdp_bound(h)):
        assert bound.status == "refused" or bound.value >= local, (bound, local)
    assert product_bound(h).status == "refused"
