"""The closed-form border correction (geometry/border.py) against the least-squares optimum CGLS converges to."""

import pytest
import torch
from torch import nn

from nte_eval.encoders import NTEEncoder
from nte_eval.geometry.border import BorderSolver
from nte_eval.geometry.conv import PixelConv, cgls
from nte_eval.geometry.subspace import OperatorSubspace, Select
from nte_eval.models.handle import ModelHandle
from nte_eval.models.load import load_model


def stem(m, k, s, p, size, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, m, k, s, p), nn.Flatten())  # k, s, p: an int or a (height, width) pair
    std = tuple((0.2 + torch.rand(3)).tolist())
    return ModelHandle.from_module(net, "0", mean=(0.5,) * 3, std=std, input_size=(3, size, size))


def norm(t):
    return t.flatten(1).norm(dim=1)


@pytest.mark.parametrize("m,k,s,p,size", [
    (64, 7, 2, 3, 64),  # a ResNet-50 stem: strips and corners
    (16, 3, 2, 1, 64),  # a bottom padding the stride never reads: three edges
    (24, 5, 1, 2, 72),
    (8, 4, 4, 1, 64),  # kernel - padding < stride: the last rows are read by no output
    (8, (5, 3), (2, 1), (2, 1), 64),  # a rectangular kernel and stride
])
def test_closed_form_correction_reaches_the_least_squares_optimum(m, k, s, p, size):
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    h = stem(m, k, s, p, size)
    assert BorderSolver.applies(pair(k), pair(s), pair(p), (3, size, size))
    sub = OperatorSubspace(h, Select("tau", 1e-2))
    d = sub.sample(torch.randn(3, *sub.coefficient_shape, generator=torch.Generator().manual_seed(1)),
                   "check").double()
    op = PixelConv(h)
    target = op.apply_circular(d)
    wrap = op.apply(d) - target
    optimum = cgls(op, wrap, 3000, 1e-13, ntol=1e-12, window=10**6)  # float64, run to convergence
    best = norm(op.apply(d - optimum) - target)
    assert (best < 0.99 * norm(wrap)).all()  # the correction matters ...
    x = sub.correct_border(d)
    assert sub._border is not None
    # ... and reaches the optimal response (to 1e-5, or exactly where the border can be matched exactly), or at
    # least the response of the whole-image CGLS it replaces (300 steps and its stopping rules: the tolerance the
    # correction had), where the correction decays slowly away from the border (the rectangular kernel here)
    today = norm(op.apply(d - cgls(op, wrap, 300, 1e-6)) - target)
    got = norm(op.apply(x) - target)
    assert (torch.isclose(got, best, rtol=1e-5, atol=1e-9 * float(norm(wrap).max())) | (got <= today)).all()
    if isinstance(k, int) and (m, k) != (8, 4):
        assert torch.allclose(got, best, rtol=1e-5)  # the square stems: the optimum itself
    # the corners' coupling: not exactly the minimum-norm correction, but one as small to 1%
    assert (norm(d - x) <= 1.01 * norm(optimum)).all()
    assert torch.allclose(sub.correct_border(d.float()).double(), x, atol=1e-5)  # float32 agrees


def test_exact_null_space_stays_exact_with_strips():
    """A layer with an exact null space: the corrected noise is invisible to the zero-padded layer."""
    h = stem(4, 6, 4, 1, 64)
    sub = OperatorSubspace(h, Select("tau", 1e-6))
    assert sub.exact and BorderSolver.applies((6, 6), (4, 4), (1, 1), (3, 64, 64))
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    op = PixelConv(h)
    circular = sub.project_circular(x)
    assert (norm(op.apply(circular)) / norm(circular) > 1e-3).all()  # the wrap-around matters ...
    d = sub.project(x)
    assert sub._border is not None
    # ... and the closed form removes it, down to the circular layer's own float32 response to the projection
    assert (norm(op.apply(d)) < 1e-6 * norm(d)).all()
    assert (norm(op.apply(d)) < 1.01 * norm(op.apply_circular(circular))).all()


def test_geometries_without_a_closed_form_fall_back_to_cgls():
    h = stem(8, 3, 1, 1, 40)  # too small for strips
    assert not BorderSolver.applies((3, 3), (1, 1), (1, 1), (3, 40, 40))
    sub = OperatorSubspace(h, Select("tau", 1e-2))
    d = sub.sample(torch.randn(2, *sub.coefficient_shape), "check")
    op = PixelConv(h)
    x = sub.correct_border(d)
    assert sub._border is None
    assert (norm(op.apply(x) - op.apply_circular(d)) < norm(op.apply(d) - op.apply_circular(d))).all()


def test_the_whole_image_border_solve_of_a_small_image_is_the_exact_least_squares_correction():
    """``whole_border`` (the degradation study's thousands of noise columns) gives CGLS's correction, more exactly;
    it is left to CGLS where the layer has more outputs than pixels (resnet_stem: 64 outputs per 12 inputs per
    block) and to the closed form."""
    handle = load_model("zoo:resnet_nullstem")
    sub = NTEEncoder(handle, psnr=10.0).fit().subspace
    d = sub.sample(torch.randn(16, *sub.coefficient_shape, generator=torch.Generator().manual_seed(0)), "check")
    d = d.double()
    dense, iterative = d.clone(), sub.correct_border(d)
    sub.whole_border().refine_(dense, d)
    op = PixelConv(handle)
    residual = {k: float((op.apply(v) - op.apply_circular(d)).norm()) for k, v in (("dense", dense),
                                                                                    ("cgls", iterative))}
    assert residual["dense"] <= residual["cgls"] and residual["dense"] < 1e-9 * float(d.norm())
    assert float((dense - iterative).norm()) < 1e-5 * float((d - iterative).norm())
    assert NTEEncoder(load_model("zoo:resnet_stem"), psnr=10.0, mode="operator").fit().subspace.whole_border() is None
