"""Per-op Lipschitz rules: how each node of g's graph turns its inputs' constants into its own (a gain per input,
summed or added in quadrature), or why no sound rule exists (attention, normalisation, unknown ops)."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata

from nte_eval.certify.lipschitz.activations import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    ACTIVATION_PARAMS,
    activation_slopes,
)
from nte_eval.certify.lipschitz.graph import Graph, describe, is_batchnorm, plain, recorded_value, shape_of, where
from nte_eval.certify.lipschitz.norms import (
    adaptive_max_gain,
    avg_pool_gain,
    broadcast_gain,
    conv_operator_norm,
    max_pool_gain,
    nonnegative_gain,
    pair,
    spectral,
)
from nte_eval.certify.lipschitz.result import Refusal

ATTENTION = "attention multiplies two functions of the input; no global Lipschitz bound"
NORMALISATION = "LayerNorm/GroupNorm divides by the input's standard deviation: no global Lipschitz bound"

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
PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class Rule:
    """How a node's Lipschitz constant follows from its inputs' ones: L = Σ or √Σ² of gain · L(input)."""

    terms: tuple[tuple[fx.Node, float], ...]  # (input node, gain), one per argument position depending on A
    kind: str  # "linear" (weighted layer), "affine" (reshape, constant shift/scale), "activation", "nonlinear"
    combine: str = "sum"  # "sum" (residual additions) or "rss" (concatenation)
    slopes: tuple[float, float] | None = None  # for elementwise activations


def dep_positions(node: fx.Node, graph: Graph) -> list[fx.Node]:
    """The argument nodes depending on A, once per position (x + x counts twice)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if graph.is_dep(n) else None)
    return found


def _unary(node: fx.Node, graph: Graph, gain: float, kind: str, slopes: tuple[float, float] | None = None) -> Rule:
    """A rule for an op with one input depending on A (its first argument)."""
    deps = dep_positions(node, graph)
    if len(deps) != 1 or node.args[0] is not deps[0]:
        raise Refusal(f"{where(node)} ({describe(node, graph.gm)}): no Lipschitz rule with the first layer's "
                      "output in this argument position")
    if not math.isfinite(gain):
        raise Refusal(f"{where(node)} ({describe(node, graph.gm)}): its Lipschitz constant is not finite")
    return Rule(((deps[0], gain),), kind, slopes=slopes)


def _activation(node: fx.Node, graph: Graph, name: str, param: Any) -> Rule:
    lo, hi = activation_slopes(name, param)
    return _unary(node, graph, max(abs(lo), abs(hi)), "activation", (lo, hi))


def _arg(node: fx.Node, graph: Graph, index: int, name: str, default: Any) -> Any:
    """A function call's argument by position or keyword, resolved to its recorded value."""
    raw = node.args[index] if len(node.args) > index else node.kwargs.get(name, default)
    return recorded_value(graph, raw)


def _bn_scale(bn: nn.Module, node: fx.Node) -> torch.Tensor:
    """γ / sqrt(var + eps) of an eval-mode BatchNorm (the linear part of what it applies)."""
    if bn.training or bn.running_var is None:
        raise Refusal(f"{where(node)} ({type(bn).__name__}) normalises with batch statistics: no per-sample bound")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return scale * bn.weight.detach().double() if bn.weight is not None else scale


def _weight_with_bn(node: fx.Node, graph: Graph, weight: torch.Tensor) -> torch.Tensor:
    """The layer's weight with a folded BatchNorm's per-output scale applied."""
    if node not in graph.folded:
        return weight.detach().double()
    bn = graph.folded[node]
    scale = _bn_scale(graph.gm.get_submodule(bn.target), bn)
    return weight.detach().double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))


def _conv_rule(node: fx.Node, graph: Graph, weight: torch.Tensor, stride: Any, padding: Any, dilation: Any,
               groups: int) -> Rule:
    w = _weight_with_bn(node, graph, weight)
    (h, wd), (dh, dw) = shape_of(node.args[0])[-2:], pair(dilation)
    if isinstance(padding, str):  # 'same' pads (k - 1) d in all; padding that on both sides gives a superset of outputs
        padding = (0, 0) if padding == "valid" else (dh * (w.shape[2] - 1), dw * (w.shape[3] - 1))
    gain = conv_operator_norm(w, (h, wd), pair(stride), pair(padding), (dh, dw), groups)
    return _unary(node, graph, gain, "linear")


def _elementwise(node: fx.Node, graph: Graph, name: str) -> Rule:
    """add/sub (inputs' L summed), mul/div by a constant (|c|), broadcasting counted."""
    a, b = (recorded_value(graph, v) if not graph.is_dep(v) else v for v in (node.args + (None,))[:2])
    out = shape_of(node)
    if name in ("add", "sub"):
        alpha = abs(float(node.kwargs.get("alpha", 1)))
        terms = [(v, broadcast_gain(shape_of(v), out) * (alpha if i == 1 else 1.0))
                 for i, v in enumerate((a, b)) if graph.is_dep(v)]
        return Rule(tuple(terms), "affine")
    if graph.is_dep(a) and graph.is_dep(b):
        raise Refusal(f"{where(node)} ({describe(node, graph.gm)}) multiplies two functions of the input; no "
                      "global Lipschitz bound")
    if name == "mul":
        x, c = (a, b) if graph.is_dep(a) else (b, a)
        return Rule(((x, broadcast_gain(shape_of(x), out, c)),), "affine")
    if not graph.is_dep(a) or "rounding_mode" in node.kwargs:
        raise Refusal(f"{where(node)} ({describe(node, graph.gm)}) divides by a function of the input; no global "
                      "Lipschitz bound")
    gain = broadcast_gain(shape_of(a), out, 1.0 / torch.as_tensor(b, dtype=torch.float64))
    return _unary(node, graph, gain, "affine")


def _matrix_gain(node: fx.Node, graph: Graph, c: Any) -> float:
    c = torch.as_tensor(c, dtype=torch.float64)
    if c.dim() > 2:
        raise Refusal(f"{where(node)} ({describe(node, graph.gm)}): no Lipschitz rule for a batched constant "
                      "matrix")
    return float(c.norm()) if c.dim() == 1 else spectral(c)


def _function_rule(node: fx.Node, graph: Graph, name: str) -> Rule:
    """Rules for functions and tensor methods, by the name in FUNCTIONS / METHODS."""
    what = f"{where(node)} ({describe(node, graph.gm)})"
    if name in ("reshape", "split"):
        return _unary(node, graph, 1.0, "affine")
    if name == "getitem":
        src = node.args[0]
        index = recorded_value(graph, node.args[1])
        if isinstance(src.meta.get("tensor_meta"), TensorMetadata):
            parts = index if isinstance(index, tuple) else (index,)
            if not all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts):
                raise Refusal(f"{what}: advanced indexing may repeat elements; no Lipschitz rule")
        return _unary(node, graph, 1.0, "affine")
    if name == "expand":
        return _unary(node, graph, math.sqrt(math.prod(shape_of(node)) / math.prod(shape_of(node.args[0]))), "affine")
    if name in ("add", "sub", "mul", "div"):
        return _elementwise(node, graph, name)
    if name == "neg":
        return _unary(node, graph, 1.0, "affine")
    if name == "cat":
        deps = dep_positions(node, graph)
        return Rule(tuple((d, 1.0) for d in deps), "affine", combine="rss")
    if name in ("matmul", "linear"):
        deps = dep_positions(node, graph)
        if len(deps) > 1:
            raise Refusal(f"{what}: {ATTENTION}")
        other = node.args[1] if node.args[0] is deps[0] else node.args[0]
        if name == "linear" and node.args[0] is not deps[0]:
            raise Refusal(f"{what}: a linear map whose weight depends on the input; no global Lipschitz bound")
        return Rule(((deps[0], _matrix_gain(node, graph, recorded_value(graph, other))),), "linear")
    if name == "conv2d":
        if len(dep_positions(node, graph)) > 1:
            raise Refusal(f"{what}: a convolution whose kernel depends on the input; no global Lipschitz bound")
        return _conv_rule(node, graph, _arg(node, graph, 1, "weight", None), _arg(node, graph, 3, "stride", 1),
                          _arg(node, graph, 4, "padding", 0), _arg(node, graph, 5, "dilation", 1),
                          _arg(node, graph, 6, "groups", 1))
    if name == "max_pool2d":
        gain = max_pool_gain(node, _arg(node, graph, 1, "kernel_size", None), _arg(node, graph, 2, "stride", None),
                             _arg(node, graph, 3, "padding", 0), _arg(node, graph, 4, "dilation", 1))
        return _unary(node, graph, gain, "nonlinear")
    if name == "adaptive_max_pool2d":
        return _unary(node, graph, adaptive_max_gain(node), "nonlinear")
    if name == "average":
        return _unary(node, graph, nonnegative_gain(node, graph), "linear")
    if name == "avg_pool":
        return _unary(node, graph, avg_pool_gain(node, graph), "linear")
    if name == "max":  # a max over disjoint groups (a reduction) or an elementwise max: moves by at most the input
        other = node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        elementwise = isinstance(other, fx.Node) and "tensor_meta" in other.meta
        return Rule(tuple((d, broadcast_gain(shape_of(d), shape_of(node)) if elementwise else 1.0)
                          for d in dep_positions(node, graph)), "nonlinear", combine="rss")
    if name == "dropout":
        if _arg(node, graph, 2, "training", True):
            raise Refusal(f"{what}: dropout in training mode is random")
        return _unary(node, graph, 1.0, "affine")
    if name == "norm":
        raise Refusal(f"{what}: {NORMALISATION}")
    raise Refusal(f"{what}: {ATTENTION}")  # scaled_dot_product_attention


def _module_rule(node: fx.Node, graph: Graph) -> Rule:
    mod = graph.gm.get_submodule(node.target)
    what = f"{where(node)} ({type(mod).__name__})"
    if type(mod) in ACTIVATION_MODULES:
        name, attr = ACTIVATION_MODULES[type(mod)]
        return _activation(node, graph, name, getattr(mod, attr) if attr else None)
    if isinstance(mod, IDENTITY_MODULES) and type(mod).forward in {t.forward for t in IDENTITY_MODULES}:
        return _unary(node, graph, 1.0, "affine")
    if plain(mod, PAD_MODULES):  # constant padding copies the input beside constants: gain 1
        return _unary(node, graph, 1.0, "affine")
    if plain(mod, (nn.Linear,)):
        return _unary(node, graph, spectral(_weight_with_bn(node, graph, mod.weight)), "linear")
    if plain(mod, (nn.Conv2d,)):
        if mod.padding_mode != "zeros":
            raise Refusal(f"{what}: no Lipschitz rule for padding_mode={mod.padding_mode!r}")
        return _conv_rule(node, graph, mod.weight, mod.stride, mod.padding, mod.dilation, mod.groups)
    if is_batchnorm(mod):
        gain = 1.0 if node in graph.folded else float(_bn_scale(mod, node).abs().max())
        if not hasattr(mod, "act"):
            return _unary(node, graph, gain, "affine" if node in graph.folded else "linear")
        act = type(mod.act)  # timm's BatchNormAct2d: the BatchNorm, its (eval-mode) dropout, then its activation
        if act not in ACTIVATION_MODULES and act is not nn.Identity or not isinstance(mod.drop, IDENTITY_MODULES):
            raise Refusal(f"{what}: no Lipschitz rule for its {act.__name__} / {type(mod.drop).__name__}")
        if act is not nn.Identity:
            name, attr = ACTIVATION_MODULES[act]
            gain *= max(abs(v) for v in activation_slopes(name, getattr(mod.act, attr) if attr else None))
        return _unary(node, graph, gain, "nonlinear")
    if plain(mod, (nn.MaxPool2d,)):
        return _unary(node, graph, max_pool_gain(node, mod.kernel_size, mod.stride, mod.padding, mod.dilation),
                      "nonlinear")
    if plain(mod, (nn.AdaptiveMaxPool2d,)):
        return _unary(node, graph, adaptive_max_gain(node), "nonlinear")
    if plain(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _unary(node, graph, avg_pool_gain(node, graph), "linear")
    if isinstance(mod, NORM_MODULES):
        raise Refusal(f"{what}: {NORMALISATION}")
    if isinstance(mod, nn.MultiheadAttention):
        raise Refusal(f"{what}: {ATTENTION}")
    raise Refusal(f"{what}: no Lipschitz rule for {type(mod).__name__}")


def _rule(node: fx.Node, graph: Graph) -> Rule:
    """The Lipschitz rule of one node depending on A, or Refusal."""
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
        raise Refusal(f"{where(node)}: no Lipschitz rule for {describe(node, graph.gm)}")
    return _function_rule(node, graph, name)


def graph_rules(graph: Graph, lipsdp: bool = False) -> list[tuple[fx.Node, Rule]]:
    """Each node's rule in graph order. With ``lipsdp``, Refusal at the first node that leaves what LipSDP-Neuron
    handles: a single path of affine maps and elementwise slope-restricted activations."""
    out, dep = [], graph.dependent
    for previous, node in zip(dep, dep[1:] + [list(graph.gm.graph.nodes)[-1]], strict=True):
        if lipsdp and set(dep_positions(node, graph)) != {previous}:
            raise Refusal(f"{where(node)} ({describe(node, graph.gm)}) is on a residual or parallel branch; "
                          "LipSDP-Neuron needs a feed-forward chain")
        if node.op == "output":
            break
        try:
            rule = _rule(node, graph)
        except Refusal:
            raise
        except Exception as e:  # a rule met arguments it does not handle (e.g. keywords): no bound, not a crash
            raise Refusal(f"{where(node)} ({describe(node, graph.gm)}): no Lipschitz rule for this call "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if sorted(n.name for n, _ in rule.terms) != sorted(n.name for n in dep_positions(node, graph)):
            raise Refusal(f"{where(node)} ({describe(node, graph.gm)}): its rule does not account for every "
                          "argument that depends on the first layer (e.g. a keyword argument)")
        if lipsdp and rule.kind == "nonlinear":
            raise Refusal(f"{where(node)} ({describe(node, graph.gm)}) is neither affine nor an elementwise "
                          "slope-restricted activation")
        out.append((node, rule))
    return out
