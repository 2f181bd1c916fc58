"""Upper bounds and estimates of the Lipschitz constant of g, the network after its first linear operator.

A designated model is f = g ∘ A, with A the module at ``handle.first.path`` (its output includes its bias) and g the
map from A's output tensor (flattened, l2) to the logits (l2). Three sources, each a ``LipschitzBound``:

- ``product_bound``: the module traced with torch.fx (the first layer and timm's untraceable modules kept whole) and
  walked from A's node: L(node) = Σ_i c_i · L(input_i), c_i the op's Lipschitz constant w.r.t. input i (residual
  sums add, concatenations add in quadrature). Exact spectral norms of Linear layers and of small zero-padded
  convolutions (dense), an upper bound for large ones (the circular convolution on a large enough zero canvas: exact
  for that circular operator, within 0-10% of the zero-padded norm on the maps tested), eval-mode BatchNorm folded into
  the conv/linear before it, activation slopes (GELU: 1.1289, not 1), pooling by window coverage or exact norms.
  Certified when every op on the path has a rule; refused for attention, LayerNorm/GroupNorm, products of two
  input-dependent tensors and ops without a rule.
- ``lipsdp_bound``: LipSDP-Neuron (Fazlyab et al., NeurIPS 2019, Theorem 2, diagonal multipliers T ≥ 0) for g a
  chain of affine maps (merged into dense matrices) and elementwise slope-restricted activations, solved with cvxpy.
  A multiplier T is only a candidate: the bound is the smallest ρ for which the LipSDP matrix is negative
  semidefinite at that T, recomputed in float64 (Schur complement) with a relative margin for rounding. Candidates
  are the solver's T and the T that turns the product bound into a LipSDP certificate; the result is never above
  the product bound (where the float64 check's rounding margin would put it above, the product bound is reported).
- ``local_estimate``: the largest spectral norm of g's Jacobian at A(x) and at random points around it, by power
  iteration. An estimate (a lower bound on the local constant), never certified.

Everything runs on float64 copies of the module; the handle's module is never modified.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.attention import SDPBackend, sdpa_kernel

from nte_eval.errors import NTEError
from nte_eval.geometry.conv import polyphase_operator
from nte_eval.models.handle import ModelHandle

SOURCES = ("product", "lipsdp", "local")
# GELU'(x) = Φ(x) + x φ(x) has its extremes where GELU''(x) = φ(x) (2 - x²) = 0, i.e. at x = ±√2.
GELU_SLOPES = (0.5 * (1 - math.erf(1.0)) - math.exp(-1.0) / math.sqrt(math.pi),
               0.5 * (1 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi))
DENSE_LIMIT = 1 << 19  # convolutions whose matrix has at most this many entries get their exact dense norm
CLARABEL_MAX_DIM = 48  # LipSDP matrices up to this side go to CLARABEL, larger ones to SCS
ATTENTION = "attention multiplies two functions of the input; no global Lipschitz bound"
NORMALISATION = "LayerNorm/GroupNorm divides by the input's standard deviation: no global Lipschitz bound"


@dataclass(frozen=True)
class LipschitzBound:
    """An upper bound (certified), an estimate, or a refusal for the Lipschitz constant of g."""

    source: str  # "product" | "lipsdp" | "local"
    status: str  # "certified" | "estimate" | "refused"
    value: float | None  # None when refused
    detail: str  # one line: the reason for a refusal, or how the value was obtained
    seconds: float


class _Refusal(Exception):
    """No sound bound for this network (the message names the node and the reason)."""


# ------------------------------------------------------------------------------------------------ activation slopes


@cache
def _numeric_slopes(name: str) -> tuple[float, float]:
    """[min, max] of an activation's derivative on a fine grid (autograd), widened by 1e-6 for the grid's error."""
    fn = {"gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "mish": F.mish}[name]
    x = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(fn(x).sum(), x)
    return float(d.min()) - 1e-6, float(d.max()) + 1e-6


def activation_slopes(name: str, param: Any = None) -> tuple[float, float]:
    """[α, β] with α ≤ φ'(x) ≤ β everywhere for an elementwise activation (``param``: slope, alpha or GELU mode)."""
    if name in ("relu", "relu6", "hardtanh", "tanh", "softplus"):
        return 0.0, 1.0
    if name == "leaky_relu":
        a = 0.01 if param is None else float(param)
        return min(a, 1.0), max(a, 1.0)
    if name == "elu":
        a = 1.0 if param is None else float(param)
        return min(0.0, a), max(1.0, a)
    if name == "gelu":
        return GELU_SLOPES if param in (None, "none") else _numeric_slopes("gelu_tanh")
    if name in ("silu", "mish"):
        return _numeric_slopes(name)
    return {"sigmoid": (0.0, 0.25), "hardswish": (-0.5, 1.5), "hardsigmoid": (0.0, 1.0 / 6.0)}[name]


ACTIVATION_MODULES: dict[type, tuple[str, str | None]] = {  # module type -> (name, attribute holding its parameter)
    nn.ReLU: ("relu", None), nn.ReLU6: ("relu6", None), nn.Hardtanh: ("hardtanh", None), nn.Tanh: ("tanh", None),
    nn.Softplus: ("softplus", None), nn.LeakyReLU: ("leaky_relu", "negative_slope"), nn.ELU: ("elu", "alpha"),
    nn.GELU: ("gelu", "approximate"), nn.SiLU: ("silu", None), nn.Mish: ("mish", None),
    nn.Sigmoid: ("sigmoid", None), nn.Hardswish: ("hardswish", None), nn.Hardsigmoid: ("hardsigmoid", None)}
ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardtanh: "hardtanh", torch.tanh: "tanh",
    F.tanh: "tanh", F.softplus: "softplus", F.leaky_relu: "leaky_relu", F.elu: "elu", F.gelu: "gelu",
    F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid"}
ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
ACTIVATION_PARAMS = {"leaky_relu": "negative_slope", "elu": "alpha", "gelu": "approximate"}  # second argument

# Functions and tensor methods by the name their rule goes by.
FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div", operator.neg: "neg",
    torch.neg: "neg", operator.getitem: "getitem", torch.flatten: "reshape", torch.reshape: "reshape",
    torch.permute: "reshape", torch.transpose: "reshape", torch.squeeze: "reshape", torch.unsqueeze: "reshape",
    torch.cat: "cat", torch.concat: "cat", torch.stack: "cat", torch.chunk: "split", torch.split: "split",
    torch.unbind: "split", torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "matmul", F.linear: "linear",
    F.conv2d: "conv2d", F.max_pool2d: "max_pool2d", F.adaptive_max_pool2d: "adaptive_max_pool2d",
    F.avg_pool2d: "avg_pool", F.adaptive_avg_pool2d: "avg_pool", torch.mean: "average", torch.sum: "average",
    torch.amax: "max", torch.max: "max", F.dropout: "dropout", F.layer_norm: "norm", F.group_norm: "norm",
    F.instance_norm: "norm",
    F.scaled_dot_product_attention: "attention"}
METHODS = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg", "view": "reshape", "reshape": "reshape",
    "flatten": "reshape", "unflatten": "reshape", "permute": "reshape", "transpose": "reshape", "t": "reshape",
    "contiguous": "reshape", "squeeze": "reshape", "unsqueeze": "reshape", "clone": "reshape", "float": "reshape",
    "double": "reshape", "to": "reshape", "type_as": "reshape", "chunk": "split", "split": "split",
    "unbind": "split", "expand": "expand", "expand_as": "expand", "repeat": "expand", "matmul": "matmul",
    "mean": "average", "sum": "average", "amax": "max", "max": "max"}
IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten, nn.Unflatten)
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)


# ---------------------------------------------------------------------------------------------- tracing the graph


class _Tracer(fx.Tracer):
    """torch.fx tracer keeping the first layer and timm's untraceable modules as leaves."""

    def __init__(self, first_path: str):
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if callable(f)))
        self.first_path, self.notrace = first_path, tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.first_path:
            return True
        if self.first_path.startswith(module_qualified_name + "."):
            return False  # trace into the modules that contain the first layer
        return isinstance(m, self.notrace) or super().is_leaf_module(m, module_qualified_name)


class _Recorder(ShapeProp):
    """ShapeProp that also keeps every value that is not a tensor computed from the input (parameters, constants,
    shapes), for replaying single nodes later."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}
        self.data: set[fx.Node] = set()

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if "tensor_meta" in n.meta and (n.op == "placeholder" or any(i in self.data for i in n.all_input_nodes)):
            self.data.add(n)
        else:
            self.values[n] = result
        return result


@dataclass
class _Graph:
    """g as a traced float64 graph: A's node, the nodes depending on A (topological order), recorded constants."""

    gm: fx.GraphModule
    first: fx.Node
    dependent: list[fx.Node]
    values: dict[fx.Node, Any]
    folded: dict[fx.Node, fx.Node]  # Conv2d/Linear node -> the BatchNorm node folded into it (and back)
    device: torch.device

    def is_dep(self, arg: Any) -> bool:
        return isinstance(arg, fx.Node) and arg in self._dep

    def __post_init__(self):
        self._dep = set(self.dependent)


def _where(node: fx.Node) -> str:
    """The node's name and the module it belongs to, for messages."""
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target})"
    stack = node.meta.get("nn_module_stack")
    inner = list(stack.values())[-1] if stack else None
    if isinstance(inner, tuple) and len(inner) == 2:
        kind = getattr(inner[1], "__name__", str(inner[1]))
        return f"node {node.name!r} (in module {inner[0]}, {kind})"
    return f"node {node.name!r}"


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _trace(handle: ModelHandle) -> _Graph:
    """Trace a float64 copy of the module, record shapes with a real input, and find the nodes depending on A."""
    module = copy.deepcopy(handle.module).double().eval().requires_grad_(False)
    try:
        graph = _Tracer(handle.first.path).trace(module)
    except Exception as e:  # tracing runs arbitrary model code; any failure means no graph to walk
        raise _Refusal(f"torch.fx could not trace the model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    gm = fx.GraphModule(module, graph)
    _check_in_place(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    nodes = list(gm.graph.nodes)
    firsts = [n for n in nodes if n.op == "call_module" and n.target == handle.first.path]
    if len(firsts) != 1:
        raise _Refusal(f"the first layer {handle.first.path!r} is called {len(firsts)} times in the traced graph; "
                       "g must start at a single call")
    recorder = _Recorder(gm)
    x = torch.zeros(1, *handle.input_size, dtype=torch.float64, device=handle.device)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before raising
            recorder.propagate(x)
    except Exception as e:
        cause = e.__cause__ or e
        raise _Refusal(f"the traced graph fails on a {tuple(x.shape)} input ({type(cause).__name__}: "
                       f"{str(cause).splitlines()[0]})") from None
    first = firsts[0]
    dependent, dep, raw = [first], {first}, set()
    for n in nodes:
        if n is first or n.op == "output" or n not in recorder.data:
            continue
        if n.op == "placeholder":
            raw.add(n)
        elif any(i in dep for i in n.all_input_nodes):
            if any(i in raw for i in n.all_input_nodes):
                raise _Refusal(f"{_where(n)} combines the first layer's output with the raw input: g is not a "
                               "function of A(x) alone")
            meta = n.meta["tensor_meta"]
            if isinstance(meta, TensorMetadata) and not meta.dtype.is_floating_point:
                raise _Refusal(f"{_where(n)} ({_describe(n, gm)}) is integer-valued (e.g. argmax indices): not "
                               "Lipschitz")
            dependent.append(n)
            dep.add(n)
        elif any(i in raw for i in n.all_input_nodes):
            raw.add(n)
    output = nodes[-1]
    if any(i in raw for i in output.all_input_nodes):
        raise _Refusal("the output depends on the raw input other than through the first layer")
    if not any(i in dep for i in output.all_input_nodes):
        raise _Refusal("the output does not depend on the first layer")
    return _Graph(gm, first, dependent, recorder.values, _foldable(gm, dependent, first), x.device)


IN_PLACE_FUNCTIONS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


def _in_place(node: fx.Node, gm: fx.GraphModule) -> bool:
    """The node writes into its first argument: Tensor.xxx_ methods, ``inplace=True`` calls and modules, ``+=``."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    return node.op == "call_function" and (node.target in IN_PLACE_FUNCTIONS or node.kwargs.get("inplace") is True)


def _check_in_place(gm: fx.GraphModule) -> None:
    """The graph walk follows values, not memory: an in-place op is sound only when nothing else reads the value
    it overwrites (``x = relu_(x)``); otherwise (``y.mul_(2)`` then using y) refuse."""
    for node in gm.graph.nodes:
        if _in_place(node, gm) and node.args and isinstance(node.args[0], fx.Node) and len(node.args[0].users) > 1:
            raise _Refusal(f"{_where(node)} ({_describe(node, gm)}) modifies a tensor in place that other ops also "
                           "read; the graph walk cannot follow it")


def _foldable(gm: fx.GraphModule, dependent: list[fx.Node], first: fx.Node) -> dict[fx.Node, fx.Node]:
    """Eval-mode BatchNorm nodes whose input is a Conv2d/Linear used only by them (never A), both ways."""
    folded = {}
    for n in dependent:
        if n.op != "call_module" or not _is_batchnorm(gm.get_submodule(n.target)):
            continue
        src = n.args[0]
        if (isinstance(src, fx.Node) and src is not first and src.op == "call_module" and len(src.users) == 1
                and _plain(gm.get_submodule(src.target), (nn.Conv2d, nn.Linear))
                and (isinstance(gm.get_submodule(src.target), nn.Conv2d) or len(_shape(src)) == 2)):
            folded[src], folded[n] = n, src
    return folded


def _plain(m: nn.Module, types: tuple[type, ...]) -> bool:
    """``m`` is one of ``types`` and runs that type's own forward (not a subclass that changes it)."""
    return any(isinstance(m, t) and type(m).forward is t.forward for t in types)


def _is_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm as torch runs it, or timm's BatchNormAct2d (a BatchNorm followed by its ``act``)."""
    from timm.layers import BatchNormAct2d

    bn = nn.modules.batchnorm._BatchNorm
    return isinstance(m, bn) and type(m).forward in (bn.forward, BatchNormAct2d.forward)


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _value(graph: _Graph, arg: Any) -> Any:
    return fx.node.map_arg(arg, lambda n: graph.values[n])


def _replay(node: fx.Node, graph: _Graph, x: Any) -> Any:
    """Evaluate ``node`` with its input from A's side replaced by ``x`` and every other input as recorded."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: x if graph.is_dep(n) else graph.values[n])
    if node.op == "call_module":
        return graph.gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


# ------------------------------------------------------------------------------------------------- per-op rules


@dataclass(frozen=True)
class _Rule:
    """How a node's Lipschitz constant follows from its inputs' ones: L = Σ or √Σ² of gain · L(input)."""

    terms: tuple[tuple[fx.Node, float], ...]  # (input node, gain), one per argument position depending on A
    kind: str  # "linear" (weighted layer), "affine" (reshape, constant shift/scale), "activation", "nonlinear"
    combine: str = "sum"  # "sum" (residual additions) or "rss" (concatenation)
    slopes: tuple[float, float] | None = None  # for elementwise activations


def _dep_positions(node: fx.Node, graph: _Graph) -> list[fx.Node]:
    """The argument nodes depending on A, once per position (x + x counts twice)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if graph.is_dep(n) else None)
    return found


def _unary(node: fx.Node, graph: _Graph, gain: float, kind: str, slopes: tuple[float, float] | None = None) -> _Rule:
    """A rule for an op with one input depending on A (its first argument)."""
    deps = _dep_positions(node, graph)
    if len(deps) != 1 or node.args[0] is not deps[0]:
        raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}): no Lipschitz rule with the first layer's "
                       "output in this argument position")
    if not math.isfinite(gain):
        raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}): its Lipschitz constant is not finite")
    return _Rule(((deps[0], gain),), kind, slopes=slopes)


def _activation(node: fx.Node, graph: _Graph, name: str, param: Any) -> _Rule:
    lo, hi = activation_slopes(name, param)
    return _unary(node, graph, max(abs(lo), abs(hi)), "activation", (lo, hi))


def _arg(node: fx.Node, graph: _Graph, index: int, name: str, default: Any) -> Any:
    """A function call's argument by position or keyword, resolved to its recorded value."""
    raw = node.args[index] if len(node.args) > index else node.kwargs.get(name, default)
    return _value(graph, raw)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _spectral(w: torch.Tensor) -> float:
    """Exact σ_max of a matrix (float64)."""
    return float(torch.linalg.matrix_norm(w.detach().to(torch.float64), ord=2))


def _bn_scale(bn: nn.Module, node: fx.Node) -> torch.Tensor:
    """γ / sqrt(var + eps) of an eval-mode BatchNorm (the linear part of what it applies)."""
    if bn.training or bn.running_var is None:
        raise _Refusal(f"{_where(node)} ({type(bn).__name__}) normalises with batch statistics: no per-sample bound")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return scale * bn.weight.detach().double() if bn.weight is not None else scale


def _weight_with_bn(node: fx.Node, graph: _Graph, weight: torch.Tensor) -> torch.Tensor:
    """The layer's weight with a folded BatchNorm's per-output scale applied."""
    if node not in graph.folded:
        return weight.detach().double()
    bn = graph.folded[node]
    scale = _bn_scale(graph.gm.get_submodule(bn.target), bn)
    return weight.detach().double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))


def conv_operator_norm(weight: torch.Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1,
                       dense_limit: int = DENSE_LIMIT) -> float:
    """Certified upper bound on the l2 operator norm of a zero-padded Conv2d (no bias) on a C x H x W input.

    Exact (dense σ_max) when the matrix has at most ``dense_limit`` entries. Otherwise the exact norm of the circular
    convolution on a zero canvas N ≥ H + padding (a multiple of the stride with every output covered): the
    zero-padded outputs are a crop of the circular ones applied to the zero-extended input, so its norm bounds
    theirs; the circular norm is the largest σ_max over its Fourier polyphase blocks.
    """
    w = weight.detach().to("cpu", torch.float64)
    m, cg, kh, kw = w.shape
    (h, wd), (sh, sw), (ph, pw), (dh, dw) = input_hw, stride, padding, dilation
    kh, kw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # effective (dilated) kernel
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    n_in, n_out = cg * groups * h * wd, m * oh * ow
    if n_in * n_out <= dense_limit:
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, cg * groups, h, wd)
        return _spectral(F.conv2d(eye, w, None, stride, padding, dilation, groups).reshape(n_in, -1))
    if dilation != (1, 1):
        dilated = w.new_zeros(m, cg, kh, kw)
        dilated[:, :, ::dh, ::dw] = w
        w = dilated
    nh = -(-max(h + ph, oh * sh) // sh) * sh
    nw = -(-max(wd + pw, ow * sw) // sw) * sw
    blocks = polyphase_operator(w, (sh, sw), (ph, pw), (nh // sh, nw // sw))
    blocks = blocks.reshape(*blocks.shape[:2], groups, m // groups, cg * sh * sw)  # block-diagonal over groups
    return float(torch.linalg.matrix_norm(blocks, ord=2).max())


def _conv_rule(node: fx.Node, graph: _Graph, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any,
               groups: int) -> _Rule:
    w = _weight_with_bn(node, graph, weight)
    (h, wd), (dh, dw) = _shape(node.args[0])[-2:], _pair(dilation)
    if isinstance(padding, str):  # 'same' pads (k - 1) d in all; padding that on both sides gives a superset of outputs
        padding = (0, 0) if padding == "valid" else (dh * (w.shape[2] - 1), dw * (w.shape[3] - 1))
    gain = conv_operator_norm(w, (h, wd), _pair(stride), _pair(padding), (dh, dw), groups)
    return _unary(node, graph, gain, "linear")


def _coverage(size: int, windows: Iterable[range]) -> int:
    """The largest number of windows that contain one position in [0, size)."""
    count = [0] * size
    for win in windows:
        for i in win:
            if 0 <= i < size:
                count[i] += 1
    return max(count)


def _max_pool_gain(node: fx.Node, kernel: Any, stride: Any, padding: Any, dilation: Any) -> float:
    """√(windows covering one input element): a max over each window moves by at most the window's l∞ change."""
    (h, w), (oh, ow) = _shape(node.args[0])[-2:], _shape(node)[-2:]
    k, s, p, d = _pair(kernel), _pair(stride if stride else kernel), _pair(padding), _pair(dilation)
    cover = [_coverage(n, (range(o * s[i] - p[i], o * s[i] - p[i] + (k[i] - 1) * d[i] + 1, d[i]) for o in range(no)))
             for i, (n, no) in enumerate(((h, oh), (w, ow)))]
    return math.sqrt(cover[0] * cover[1])


def _adaptive_max_gain(node: fx.Node) -> float:
    (h, w), (oh, ow) = _shape(node.args[0])[-2:], _shape(node)[-2:]
    cover = [_coverage(n, (range(o * n // no, -(-(o + 1) * n // no)) for o in range(no)))
             for n, no in ((h, oh), (w, ow))]
    return math.sqrt(cover[0] * cover[1])


def _nonnegative_gain(node: fx.Node, graph: _Graph) -> float:
    """√(max row sum · max column sum) (Schur test) of a linear op with non-negative coefficients (averages, sums):
    row sums are its response to ones, column sums the gradient of its summed output. Exact for a mean or sum over
    disjoint groups."""
    x = torch.ones(_shape(node.args[0]), dtype=torch.float64, device=graph.device, requires_grad=True)
    y = _replay(node, graph, x)
    (col,) = torch.autograd.grad(y.sum(), x)
    return math.sqrt(float(y.detach().max()) * float(col.max()))


def _avg_pool_gain(node: fx.Node, graph: _Graph) -> float:
    """An average pooling acts on each channel alike: the exact norm of its one-channel matrix when that is small,
    else the Schur test."""
    shape = _shape(node.args[0])
    n = shape[-2] * shape[-1]
    if len(shape) != 4 or n * math.prod(_shape(node)[-2:]) > DENSE_LIMIT:
        return _nonnegative_gain(node, graph)
    eye = torch.eye(n, dtype=torch.float64, device=graph.device).reshape(n, 1, *shape[-2:])
    return _spectral(_replay(node, graph, eye).reshape(n, -1))


def _broadcast_gain(x_shape: tuple[int, ...], out_shape: tuple[int, ...], c: Any = 1.0) -> float:
    """Norm of x -> c * x broadcast to ``out_shape``: each element of x lands on several outputs."""
    c2 = torch.as_tensor(c, dtype=torch.float64).detach().cpu().abs().expand(out_shape) ** 2
    padded = (1,) * (len(out_shape) - len(x_shape)) + tuple(x_shape)
    dims = [i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a == 1 and b != 1]
    return float((c2.sum(dims) if dims else c2).max().sqrt())


def _elementwise(node: fx.Node, graph: _Graph, name: str) -> _Rule:
    """add/sub (inputs' L summed), mul/div by a constant (|c|), broadcasting counted."""
    a, b = (_value(graph, v) if not graph.is_dep(v) else v for v in (node.args + (None,))[:2])
    out = _shape(node)
    if name in ("add", "sub"):
        alpha = abs(float(node.kwargs.get("alpha", 1)))
        terms = [(v, _broadcast_gain(_shape(v), out) * (alpha if i == 1 else 1.0))
                 for i, v in enumerate((a, b)) if graph.is_dep(v)]
        return _Rule(tuple(terms), "affine")
    if graph.is_dep(a) and graph.is_dep(b):
        raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}) multiplies two functions of the input; no "
                       "global Lipschitz bound")
    if name == "mul":
        x, c = (a, b) if graph.is_dep(a) else (b, a)
        return _Rule(((x, _broadcast_gain(_shape(x), out, c)),), "affine")
    if not graph.is_dep(a) or "rounding_mode" in node.kwargs:
        raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}) divides by a function of the input; no global "
                       "Lipschitz bound")
    gain = _broadcast_gain(_shape(a), out, 1.0 / torch.as_tensor(b, dtype=torch.float64))
    return _unary(node, graph, gain, "affine")


def _matrix_gain(node: fx.Node, graph: _Graph, c: Any) -> float:
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() > 2:
        raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}): no Lipschitz rule for a batched constant "
                       "matrix")
    return float(c.norm()) if c.dim() == 1 else _spectral(c)


def _function_rule(node: fx.Node, graph: _Graph, name: str) -> _Rule:
    """Rules for functions and tensor methods, by the name in FUNCTIONS / METHODS."""
    what = f"{_where(node)} ({_describe(node, graph.gm)})"
    if name in ("reshape", "split"):
        return _unary(node, graph, 1.0, "affine")
    if name == "getitem":
        src = node.args[0]
        index = _value(graph, node.args[1])
        if isinstance(src.meta.get("tensor_meta"), TensorMetadata):
            parts = index if isinstance(index, tuple) else (index,)
            if not all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts):
                raise _Refusal(f"{what}: advanced indexing may repeat elements; no Lipschitz rule")
        return _unary(node, graph, 1.0, "affine")
    if name == "expand":
        return _unary(node, graph, math.sqrt(math.prod(_shape(node)) / math.prod(_shape(node.args[0]))), "affine")
    if name in ("add", "sub", "mul", "div"):
        return _elementwise(node, graph, name)
    if name == "neg":
        return _unary(node, graph, 1.0, "affine")
    if name == "cat":
        deps = _dep_positions(node, graph)
        return _Rule(tuple((d, 1.0) for d in deps), "affine", combine="rss")
    if name in ("matmul", "linear"):
        deps = _dep_positions(node, graph)
        if len(deps) > 1:
            raise _Refusal(f"{what}: {ATTENTION}")
        other = node.args[1] if node.args[0] is deps[0] else node.args[0]
        if name == "linear" and node.args[0] is not deps[0]:
            raise _Refusal(f"{what}: a linear map whose weight depends on the input; no global Lipschitz bound")
        return _Rule(((deps[0], _matrix_gain(node, graph, _value(graph, other))),), "linear")
    if name == "conv2d":
        if len(_dep_positions(node, graph)) > 1:
            raise _Refusal(f"{what}: a convolution whose kernel depends on the input; no global Lipschitz bound")
        return _conv_rule(node, graph, _arg(node, graph, 1, "weight", None), _arg(node, graph, 3, "stride", 1),
                          _arg(node, graph, 4, "padding", 0), _arg(node, graph, 5, "dilation", 1),
                          _arg(node, graph, 6, "groups", 1))
    if name == "max_pool2d":
        gain = _max_pool_gain(node, _arg(node, graph, 1, "kernel_size", None), _arg(node, graph, 2, "stride", None),
                              _arg(node, graph, 3, "padding", 0), _arg(node, graph, 4, "dilation", 1))
        return _unary(node, graph, gain, "nonlinear")
    if name == "adaptive_max_pool2d":
        return _unary(node, graph, _adaptive_max_gain(node), "nonlinear")
    if name == "average":
        return _unary(node, graph, _nonnegative_gain(node, graph), "linear")
    if name == "avg_pool":
        return _unary(node, graph, _avg_pool_gain(node, graph), "linear")
    if name == "max":  # a max over disjoint groups (a reduction) or an elementwise max: moves by at most the input
        other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        elementwise = isinstance(other, fx.Node) and "tensor_meta" in other.meta
        return _Rule(tuple((d, _broadcast_gain(_shape(d), _shape(node)) if elementwise else 1.0)
                           for d in _dep_positions(node, graph)), "nonlinear", combine="rss")
    if name == "dropout":
        if _arg(node, graph, 2, "training", True):
            raise _Refusal(f"{what}: dropout in training mode is random")
        return _unary(node, graph, 1.0, "affine")
    if name == "norm":
        raise _Refusal(f"{what}: {NORMALISATION}")
    raise _Refusal(f"{what}: {ATTENTION}")  # scaled_dot_product_attention


def _module_rule(node: fx.Node, graph: _Graph) -> _Rule:
    mod = graph.gm.get_submodule(node.target)
    what = f"{_where(node)} ({type(mod).__name__})"
    if type(mod) in ACTIVATION_MODULES:
        name, attr = ACTIVATION_MODULES[type(mod)]
        return _activation(node, graph, name, getattr(mod, attr) if attr else None)
    if isinstance(mod, IDENTITY_MODULES) and type(mod).forward in {t.forward for t in IDENTITY_MODULES}:
        return _unary(node, graph, 1.0, "affine")
    if _plain(mod, (nn.Linear,)):
        return _unary(node, graph, _spectral(_weight_with_bn(node, graph, mod.weight)), "linear")
    if _plain(mod, (nn.Conv2d,)):
        if mod.padding_mode != "zeros":
            raise _Refusal(f"{what}: no Lipschitz rule for padding_mode={mod.padding_mode!r}")
        return _conv_rule(node, graph, mod.weight, mod.stride, mod.padding, mod.dilation, mod.groups)
    if _is_batchnorm(mod):
        gain = 1.0 if node in graph.folded else float(_bn_scale(mod, node).abs().max())
        if not hasattr(mod, "act"):
            return _unary(node, graph, gain, "affine" if node in graph.folded else "linear")
        act = type(mod.act)  # timm's BatchNormAct2d: the BatchNorm, its (eval-mode) dropout, then its activation
        if act not in ACTIVATION_MODULES and act is not nn.Identity or not isinstance(mod.drop, IDENTITY_MODULES):
            raise _Refusal(f"{what}: no Lipschitz rule for its {act.__name__} / {type(mod.drop).__name__}")
        if act is not nn.Identity:
            name, attr = ACTIVATION_MODULES[act]
            gain *= max(abs(v) for v in activation_slopes(name, getattr(mod.act, attr) if attr else None))
        return _unary(node, graph, gain, "nonlinear")
    if _plain(mod, (nn.MaxPool2d,)):
        return _unary(node, graph, _max_pool_gain(node, mod.kernel_size, mod.stride, mod.padding, mod.dilation),
                      "nonlinear")
    if _plain(mod, (nn.AdaptiveMaxPool2d,)):
        return _unary(node, graph, _adaptive_max_gain(node), "nonlinear")
    if _plain(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _unary(node, graph, _avg_pool_gain(node, graph), "linear")
    if isinstance(mod, NORM_MODULES):
        raise _Refusal(f"{what}: {NORMALISATION}")
    if isinstance(mod, nn.MultiheadAttention):
        raise _Refusal(f"{what}: {ATTENTION}")
    raise _Refusal(f"{what}: no Lipschitz rule for {type(mod).__name__}")


def _rule(node: fx.Node, graph: _Graph) -> _Rule:
    """The Lipschitz rule of one node depending on A, or _Refusal."""
    if node.op == "call_module":
        return _module_rule(node, graph)
    if node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS:
        name = ACTIVATION_FUNCTIONS[node.target]
        key = ACTIVATION_PARAMS.get(name)
        return _activation(node, graph, name, _arg(node, graph, 1, key, None) if key else None)
    if node.op == "call_method" and node.target in ACTIVATION_METHODS:
        return _activation(node, graph, ACTIVATION_METHODS[node.target], None)
    name = FUNCTIONS.get(node.target) if node.op == "call_function" else METHODS.get(node.target)
    if name is None:
        raise _Refusal(f"{_where(node)}: no Lipschitz rule for {_describe(node, graph.gm)}")
    return _function_rule(node, graph, name)


def _rules(graph: _Graph, lipsdp: bool = False) -> list[tuple[fx.Node, _Rule]]:
    """Each node's rule in graph order. With ``lipsdp``, _Refusal at the first node that leaves what LipSDP-Neuron
    handles: a single path of affine maps and elementwise slope-restricted activations."""
    out, dep = [], graph.dependent
    for previous, node in zip(dep, dep[1:] + [list(graph.gm.graph.nodes)[-1]], strict=True):
        if lipsdp and set(_dep_positions(node, graph)) != {previous}:
            raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}) is on a residual or parallel branch; "
                           "LipSDP-Neuron needs a feed-forward chain")
        if node.op == "output":
            break
        try:
            rule = _rule(node, graph)
        except _Refusal:
            raise
        except Exception as e:  # a rule met arguments it does not handle (e.g. keywords): no bound, not a crash
            raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}): no Lipschitz rule for this call "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if sorted(n.name for n, _ in rule.terms) != sorted(n.name for n in _dep_positions(node, graph)):
            raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}): its rule does not account for every "
                           "argument that depends on the first layer (e.g. a keyword argument)")
        if lipsdp and rule.kind == "nonlinear":
            raise _Refusal(f"{_where(node)} ({_describe(node, graph.gm)}) is neither affine nor an elementwise "
                           "slope-restricted activation")
        out.append((node, rule))
    return out


# ------------------------------------------------------------------------------------------------- the sources


def _refused(source: str, reason: str, start: float) -> LipschitzBound:
    return LipschitzBound(source, "refused", None, reason, time.perf_counter() - start)


def _walk(graph: _Graph, rules: list[tuple[fx.Node, _Rule]]) -> float:
    """The product bound: each node's constant from its inputs' along the graph, then the output's."""
    lip = {graph.first: 1.0}
    for node, rule in rules:
        terms = [gain * lip[src] for src, gain in rule.terms]
        lip[node] = sum(terms) if rule.combine == "sum" else math.sqrt(sum(t * t for t in terms))
    out = [lip[n] for n in list(graph.gm.graph.nodes)[-1].all_input_nodes if n in lip]
    return math.sqrt(sum(v * v for v in out))


def product_bound(handle: ModelHandle) -> LipschitzBound:
    """(1) Certified: per-op Lipschitz constants combined along g's graph (products along paths, residuals summed)."""
    start = time.perf_counter()
    try:
        graph = _trace(handle)
        rules = _rules(graph)
    except _Refusal as e:
        return _refused("product", str(e), start)
    value = _walk(graph, rules)
    if not math.isfinite(value):
        return _refused("product", f"the product bound is not finite ({value})", start)
    layers = sum(r.kind != "affine" for _, r in rules)
    sums = sum(len(r.terms) > 1 and r.combine == "sum" for _, r in rules)
    folds = len(graph.folded) // 2
    detail = (f"product over {layers} layers (graph walk, {sums} residual sums added"
              + (f", {folds} BatchNorms folded" if folds else "") + ")")
    return LipschitzBound("product", "certified", value, detail, time.perf_counter() - start)


def _segment_matrix(nodes: list[fx.Node], graph: _Graph, in_shape: tuple[int, ...]) -> np.ndarray:
    """The linear part of a composition of affine nodes, as a dense (out, in) matrix (Jacobian, float64)."""
    n_in = math.prod(in_shape)
    if not nodes:
        return np.eye(n_in)

    def run(z: torch.Tensor) -> torch.Tensor:
        y = z.reshape(in_shape)
        for n in nodes:
            y = _replay(n, graph, y)
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


def lipsdp_bound(handle: ModelHandle, max_neurons: int = 2000) -> LipschitzBound:
    """(2) Certified LipSDP-Neuron bound for g a chain of affine maps and slope-restricted activations."""
    start = time.perf_counter()
    try:
        graph = _trace(handle)
        segments: list[list[fx.Node]] = [[]]
        acts: list[tuple[fx.Node, tuple[float, float]]] = []
        rules = _rules(graph, lipsdp=True)
        for node, rule in rules:
            if rule.kind == "activation":
                acts.append((node, rule.slopes))
                segments.append([])
            else:
                segments[-1].append(node)
        n0 = math.prod(_shape(graph.first))
        hidden = sum(math.prod(_shape(n)) for n, _ in acts)
        if hidden > max_neurons or n0 > max_neurons:
            raise _Refusal(f"g has {hidden} hidden neurons and a {n0}-dimensional input; LipSDP here is limited to "
                           f"max_neurons={max_neurons} for each")
    except _Refusal as e:
        return _refused("lipsdp", str(e), start)
    inputs = [graph.first] + [n for n, _ in acts]
    ws = [_segment_matrix(seg, graph, _shape(src)) for seg, src in zip(segments, inputs, strict=True)]
    if not acts:
        value = float(np.linalg.norm(ws[0], 2))
        return LipschitzBound("lipsdp", "certified", value, "g is affine: exact σ_max of its matrix (no activation)",
                              time.perf_counter() - start)
    norms = [float(np.linalg.norm(w, 2)) or 1.0 for w in ws]
    unit = [w / s for w, s in zip(ws, norms, strict=True)]  # same certificate up to a rescaling of ρ and T
    rho, how = _lipsdp_rho(unit, [s for _, s in acts])
    if rho is None:
        return _refused("lipsdp", how, start)
    value = math.sqrt(rho) * math.prod(norms)
    detail = (f"LipSDP-Neuron over {len(acts)} activation layers ({hidden} neurons, input {n0}); {how}; "
              "certificate checked in float64 (Schur complement)")
    product = _walk(graph, rules)  # a chain LipSDP accepts also has every product rule
    if product < value:  # only the float64 check's rounding margin can do this
        value = product
        detail += f"; reported as the product bound, {product:.10g}, which it exceeded by that margin (both certified)"
    return LipschitzBound("lipsdp", "certified", value, detail, time.perf_counter() - start)


class RestOfNetwork:
    """g on a float64 copy of the module: ``first(x)`` is A's output, ``self(x, h)`` the logits with A's output
    replaced by h (a forward hook on the first layer returns h; the model then runs normally on the real x, so
    anything that also reads x sees the real image)."""

    def __init__(self, handle: ModelHandle):
        self.handle = handle
        self.module = copy.deepcopy(handle.module).double().eval().requires_grad_(False)
        self.layer = self.module.get_submodule(handle.first.path)

    def _run(self, x: torch.Tensor, hook: Callable) -> torch.Tensor:
        removable = self.layer.register_forward_hook(hook)
        try:
            return self.module(self.handle.normalize(x.to(torch.float64)))
        finally:
            removable.remove()

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) as the module computes it (float64), in the shape the rest of the network receives."""
        seen = []
        with torch.no_grad():
            self._run(x, lambda _m, _i, out: seen.append(out.clone()))  # later in-place ops must not alter it
        return seen[0]

    def __call__(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self._run(x, lambda _m, _i, _out: h.clone())  # a copy: the next layer may work in place


def local_estimate(handle: ModelHandle, x: torch.Tensor, radius: float, points: int = 4, iters: int = 30,
                   seed: int = 0) -> LipschitzBound:
    """(3) Estimate: the largest ‖J_g‖₂ at h = A(x) and at ``points`` random h + radius·u (u uniform on the unit
    sphere of A's output space) per image, by power iteration on JᵀJ (jvp/vjp, float64)."""
    start = time.perf_counter()
    g = RestOfNetwork(handle)
    x = x.to(handle.device, torch.float64)
    h = g.first(x)
    b, k = h.shape[0], points + 1
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, points, h[0].numel(), generator=gen, dtype=torch.float64)
    u = (u / u.norm(dim=-1, keepdim=True)).reshape(b, points, *h.shape[1:]).to(h.device)
    hs = torch.cat([h[:, None], h[:, None] + radius * u], dim=1).flatten(0, 1)
    xs = x.repeat_interleave(k, dim=0)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return g(xs, z)

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.flatten(1).norm(dim=1).clamp_min(1e-300).reshape(-1, *([1] * (v.dim() - 1)))

    v = unit(torch.randn(hs.shape, generator=gen, dtype=torch.float64).to(h.device))
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-mode derivative
        _, pullback = torch.func.vjp(fn, hs)
        for _ in range(iters):
            v = unit(pullback(torch.func.jvp(fn, (hs,), (v,))[1])[0])
        sigma = torch.func.jvp(fn, (hs,), (v,))[1].flatten(1).norm(dim=1)  # ‖J v‖ with ‖v‖ = 1: at most ‖J‖
    detail = (f"max Jacobian spectral norm of g over {b} images x {k} points (A(x) and {points} at radius "
              f"{radius:g} in A's output space), {iters} power iterations, float64")
    return LipschitzBound("local", "estimate", float(sigma.max()), detail, time.perf_counter() - start)


def lipschitz_bounds(handle: ModelHandle, sources: list[str], x: torch.Tensor | None = None,
                     radius: float | None = None, seed: int = 0) -> dict[str, LipschitzBound]:
    """The requested sources, by name (``x`` and ``radius`` are needed for 'local' only)."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise NTEError(f"unknown Lipschitz source {unknown[0]!r}; allowed: {', '.join(SOURCES)}.")
    if "local" in sources and (x is None or radius is None):
        raise NTEError("the 'local' Lipschitz estimate needs images x and a radius.")
    out = {}
    for s in sources:
        if s == "product":
            out[s] = product_bound(handle)
        elif s == "lipsdp":
            out[s] = lipsdp_bound(handle)
        else:
            out[s] = local_estimate(handle, x, radius, seed=seed)
    return out
