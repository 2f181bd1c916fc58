"""The closed-form border correction (geometry/border.py) against the least-squares optimum CGLS converges to."""

import pytest
import torch
from torch import nn

from nte_eval.geometry.border import BorderSolver
from nte_eval.geometry.conv import PixelConv, cgls
from nte_eval.geometry.subspace import OperatorSubspace, Select
from nte_eval.models.handle import ModelHandle


def stem(m, k, s, p, size, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, m, k, s, p), nn.Flatten())
    std = tuple((0.2 + torch.rand(3)).tolist())
    return ModelHandle.from_module(net, "0", mean=(0.5,) * 3, std=std, input_size=(3, size, size))


def norm(t):
    return t.flatten(1).norm(dim=1)


@pytest.mark.parametrize("m,k,s,p,size,strips", [
    (64, 7, 2, 3, 24, False),  # a ResNet-50 stem on a small image: one dense solve
    (64, 7, 2, 3, 64, True),  # the same stem, large enough for strips and corners
    (16, 3, 2, 1, 64, True),  # a bottom padding the stride never reads: three edges
    (24, 5, 1, 2, 72, True),
])
def test_closed_form_correction_reaches_the_least_squares_optimum(m, k, s, p, size, strips):
    h = stem(m, k, s, p, size)
    assert BorderSolver.applies((k, k), (s, s), (p, p), (3, size, size))
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
    assert bool(sub._border.edges) == strips
    assert torch.allclose(norm(op.apply(x) - target), best, rtol=1e-5)  # ... and reaches the optimal response
    # the correction itself: exact when dense; the corners' coupling leaves < 1% with strips
    assert (norm(d - x - optimum) / norm(optimum) < (1e-2 if strips else 1e-8)).all()
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
    assert sub._border.edges
    # ... and the closed form removes it, down to the circular layer's own float32 response to the projection
    assert (norm(op.apply(d)) < 1e-6 * norm(d)).all()
    assert (norm(op.apply(d)) < 1.01 * norm(op.apply_circular(circular))).all()


def test_geometries_without_a_closed_form_fall_back_to_cgls():
    h = stem(8, 3, 1, 1, 40)  # too large for one dense solve, too small for strips
    assert not BorderSolver.applies((3, 3), (1, 1), (1, 1), (3, 40, 40))
    sub = OperatorSubspace(h, Select("tau", 1e-2))
    d = sub.sample(torch.randn(2, *sub.coefficient_shape), "check")
    op = PixelConv(h)
    x = sub.correct_border(d)
    assert sub._border is None
    assert (norm(op.apply(x) - op.apply_circular(d)) < norm(op.apply(d) - op.apply_circular(d))).all()
