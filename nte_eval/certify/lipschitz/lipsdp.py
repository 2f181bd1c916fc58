"""LipSDP-Neuron (Fazlyab et al., NeurIPS 2019, Theorem 2, diagonal multipliers T ≥ 0) for g a chain of affine maps
(merged into dense matrices) and elementwise slope-restricted activations, solved with cvxpy.

A multiplier T is only a candidate: the bound is the smallest ρ for which the LipSDP matrix is negative semidefinite
at that T, recomputed in float64 (Schur complement) with a relative margin for rounding. Candidates are the solver's T
and the T that turns the product bound into a LipSDP certificate; the result is never above the product bound (where
the float64 check's rounding margin would put it above, the product bound is reported).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.fx as fx

from nte_eval.certify.lipschitz.graph import Graph, replay, shape_of, trace
from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.product import walk
from nte_eval.certify.lipschitz.result import LipschitzBound, Refusal, refused
from nte_eval.certify.lipschitz.rules import graph_rules
from nte_eval.models.handle import ModelHandle

CLARABEL_MAX_DIM = 48  # LipSDP matrices up to this side go to CLARABEL, larger ones to SCS


def _segment_matrix(nodes: list[fx.Node], graph: Graph, in_shape: tuple[int, ...]) -> np.ndarray:
    """The linear part of a composition of affine nodes, as a dense (out, in) matrix (Jacobian, float64)."""
    n_in = math.prod(in_shape)
    if not nodes:
        return np.eye(n_in)

    def run(z: torch.Tensor) -> torch.Tensor:
        y = z.reshape(in_shape)
        for n in nodes:
            y = replay(n, graph, y)
        return y.reshape(-1)

    return torch.func.jacrev(run)(torch.zeros(n_in, dtype=torch.float64, device=graph.device)).detach().cpu().numpy()


class _Ops(NamedTuple):
    """Matrix building blocks, for numpy arrays or cvxpy expressions linear in the multipliers v."""

    quad: Callable  # (W, v) -> Wᵀ diag(v) W
    cols: Callable  # (W, v) -> Wᵀ diag(v)
    diag: Callable
    bmat: Callable


NUMPY_OPS = _Ops(lambda w, v: (w.T * v) @ w, lambda w, v: w.T * v, np.diag, np.block)


def _cvxpy_ops() -> _Ops:
    """cvxpy versions of the blocks as sparse maps of v (a dense Wᵀ diag(v) W would cost n⁴ coefficients)."""
    import cvxpy as cp
    import scipy.sparse as sp

    def quad(w: np.ndarray, v: Any) -> Any:
        n = w.shape[1]
        rows, cols, vals = [], [], []
        for k, row in enumerate(w):  # column k of the map: vec(w_k w_kᵀ), over the non-zeros of row k
            nz = np.flatnonzero(row)
            rows.append((nz[:, None] * n + nz[None, :]).ravel())
            cols.append(np.full(nz.size * nz.size, k))
            vals.append(np.outer(row[nz], row[nz]).ravel())
        g = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, len(w)))
        return cp.reshape(g @ v, (n, n), order="C")

    def scaled_columns(w: np.ndarray, v: Any) -> Any:
        m, n = w.shape
        h = sp.csc_matrix((w.T.ravel(), (np.arange(n * m), np.tile(np.arange(m), n))), shape=(n * m, m))
        return cp.reshape(h @ v, (n, m), order="C")

    return _Ops(quad, scaled_columns, cp.diag, cp.bmat)


def _lipsdp_matrix(ws: list[np.ndarray], slopes: list[tuple[float, float]], ts: list[Any], ops: _Ops) -> Any:
    """The LipSDP-Neuron matrix at ρ = 0 over (x_0, ..., x_l) (Fazlyab et al. 2019, Theorem 2).

    Hidden layer k has pre-activation W_{k-1} x_{k-1}, slopes [α_k, β_k] and multipliers t_k; the output is W_l x_l.
    """
    dims = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    blocks: list[list[Any]] = [[None] * len(dims) for _ in dims]

    def add(i: int, j: int, term: Any) -> None:
        blocks[i][j] = term if blocks[i][j] is None else blocks[i][j] + term

    for k in range(1, len(dims)):
        (a, b), t, w = slopes[k - 1], ts[k - 1], ws[k - 1]
        add(k - 1, k - 1, ops.quad(w, -2.0 * a * b * t))
        add(k, k, ops.diag(-2.0 * t))
        add(k - 1, k, ops.cols(w, (a + b) * t))
        add(k, k - 1, ops.cols(w, (a + b) * t).T)
    add(len(dims) - 1, len(dims) - 1, ws[-1].T @ ws[-1])
    return ops.bmat([[np.zeros((dims[i], dims[j])) if blk is None else blk for j, blk in enumerate(row)]
                     for i, row in enumerate(blocks)])


def _verified_rho(ws: list[np.ndarray], slopes: list[tuple[float, float]], ts: list[np.ndarray]) -> float | None:
    """Smallest ρ with M(T) - ρ E_00 ⪯ 0, recomputed in float64 (Schur complement on the input block), widened
    for rounding; None when the rest of M(T) is not negative definite."""
    m = _lipsdp_matrix(ws, slopes, ts, NUMPY_OPS)
    n0 = ws[0].shape[1]
    p, r, s = m[:n0, :n0], m[n0:, :n0], m[n0:, n0:]
    ev, vec = np.linalg.eigh(-(s + s.T) / 2)
    if ev.min() <= 1e-12 * max(ev.max(), 1e-300):
        return None
    y = (vec.T @ r) / np.sqrt(ev)[:, None]
    k = p + y.T @ y
    rho = max(float(np.linalg.eigvalsh((k + k.T) / 2).max()), 0.0)
    return rho * (1.0 + 1e-10 + 100 * np.finfo(float).eps * ev.max() / ev.min())


def _solve_lipsdp(ws: list[np.ndarray], slopes: list[tuple[float, float]]) -> tuple[list[np.ndarray] | None, str]:
    """The solver's multipliers T (clipped to ≥ 0) and the solver used, or (None, why).

    CLARABEL (interior point, accurate) for LMIs up to ``CLARABEL_MAX_DIM``: its PSD-cone steps factor a dense
    matrix of side n(n+1)/2, minutes beyond that size. Larger LMIs go to SCS (first order); either way the
    certificate is re-verified in float64, so solver accuracy only affects tightness.
    """
    import cvxpy as cp

    ts = [cp.Variable(w.shape[0], nonneg=True) for w in ws[:-1]]
    rho = cp.Variable()
    m = _lipsdp_matrix(ws, slopes, ts, _cvxpy_ops())
    e = np.zeros(m.shape)
    e[:ws[0].shape[1], :ws[0].shape[1]] = np.eye(ws[0].shape[1])
    problem = cp.Problem(cp.Minimize(rho), [(m + m.T) / 2 - rho * e << 0])
    solvers = ["CLARABEL", "SCS"] if m.shape[0] <= CLARABEL_MAX_DIM else ["SCS"]
    failures = []
    for solver in solvers:
        try:
            problem.solve(solver=solver)
        except (cp.SolverError, ValueError) as err:
            failures.append(f"{solver}: {str(err).splitlines()[0]}")
            continue
        if all(t.value is not None for t in ts):
            return [np.maximum(t.value, 0.0) for t in ts], solver
        failures.append(f"{solver}: {problem.status}")
    return None, "; ".join(failures)


def _product_multipliers(slopes: list[tuple[float, float]]) -> list[float] | None:
    """Per-layer multipliers t_k (times I) that make ρ = Π β_k² feasible for unit-norm W's (the product bound as a
    LipSDP certificate): t_k = c_k / (1 - α_k/β_k), c_l = 1, c_{k-1} = β_k² c_k. None unless |α_k| ≤ β_k, α_k < β_k."""
    if not all(abs(a) <= b and a < b for a, b in slopes):
        return None
    c, out = 1.0, []
    for a, b in reversed(slopes):
        out.append(c / (1.0 - a / b))
        c *= b * b
    return out[::-1]


def _lipsdp_rho(ws: list[np.ndarray], slopes: list[tuple[float, float]]) -> tuple[float | None, str]:
    """The smallest verified ρ (L = √ρ) over the solver's multipliers and the product multipliers (the product
    bound written as a LipSDP certificate), and how it was found; (None, why) when neither verifies."""
    product = _product_multipliers(slopes)
    rho_product = None if product is None else _verified_rho(
        ws, slopes, [np.full(w.shape[0], t) for w, t in zip(ws[:-1], product, strict=True)])
    found, solver = _solve_lipsdp(ws, slopes)
    rho_solver = None if found is None else _verified_rho(ws, slopes, found)
    options = [(r, how) for r, how in ((rho_solver, f"multipliers from {solver}"),
                                       (rho_product, f"the product multipliers (tighter than {solver}'s)"))
               if r is not None]
    return min(options) if options else (None, f"solver returned no verifiable certificate ({solver})")


def lipsdp_bound(model: ModelHandle | Float64Network, max_neurons: int = 2000) -> LipschitzBound:
    """(2) Certified LipSDP-Neuron bound for g a chain of affine maps and slope-restricted activations.
    ``model``: a handle, or the certification's float64 copy of it (no new copy then)."""
    start = time.perf_counter()
    try:
        graph = trace(Float64Network.of(model))
        segments: list[list[fx.Node]] = [[]]
        acts: list[tuple[fx.Node, tuple[float, float]]] = []
        rules = graph_rules(graph, lipsdp=True)
        for node, rule in rules:
            if rule.kind == "activation":
                acts.append((node, rule.slopes))
                segments.append([])
            else:
                segments[-1].append(node)
        n0 = math.prod(shape_of(graph.first))
        hidden = sum(math.prod(shape_of(n)) for n, _ in acts)
        if hidden > max_neurons or n0 > max_neurons:
            raise Refusal(f"g has {hidden} hidden neurons and a {n0}-dimensional input; LipSDP here is limited to "
                          f"max_neurons={max_neurons} for each")
    except Refusal as e:
        return refused("lipsdp", str(e), start)
    inputs = [graph.first] + [n for n, _ in acts]
    ws = [_segment_matrix(seg, graph, shape_of(src)) for seg, src in zip(segments, inputs, strict=True)]
    if not acts:
        value = float(np.linalg.norm(ws[0], 2))
        return LipschitzBound("lipsdp", "certified", value, "g is affine: exact σ_max of its matrix (no activation)",
                              time.perf_counter() - start)
    norms = [float(np.linalg.norm(w, 2)) or 1.0 for w in ws]
    unit = [w / s for w, s in zip(ws, norms, strict=True)]  # same certificate up to a rescaling of ρ and T
    rho, how = _lipsdp_rho(unit, [s for _, s in acts])
    if rho is None:
        return refused("lipsdp", how, start)
    value = math.sqrt(rho) * math.prod(norms)
    detail = (f"LipSDP-Neuron over {len(acts)} activation layers ({hidden} neurons, input {n0}); {how}; "
              "certificate checked in float64 (Schur complement)")
    product = walk(graph, rules)  # a chain LipSDP accepts also has every product rule
    if product < value:  # only the float64 check's rounding margin can do this
        value = product
        detail += f"; reported as the product bound, {product:.10g}, which it exceeded by that margin (both certified)"
    return LipschitzBound("lipsdp", "certified", value, detail, time.perf_counter() - start)
