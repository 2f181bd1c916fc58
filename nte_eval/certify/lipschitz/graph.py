"""g as a torch.fx graph: tracing the float64 module from the first layer A, the nodes depending on A, the BatchNorms
that fold into the layer before them, and replaying one node on a new input from A's side."""

from __future__ import annotations

import contextlib
import io
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.result import Refusal


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
class Graph:
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


def where(node: fx.Node) -> str:
    """The node's name and the module it belongs to, for messages."""
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target})"
    stack = node.meta.get("nn_module_stack")
    inner = list(stack.values())[-1] if stack else None
    if isinstance(inner, tuple) and len(inner) == 2:
        kind = getattr(inner[1], "__name__", str(inner[1]))
        return f"node {node.name!r} (in module {inner[0]}, {kind})"
    return f"node {node.name!r}"


def describe(node: fx.Node, gm: fx.GraphModule) -> str:
    """What the node runs (module class, tensor method or function name), for messages."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def trace(net: Float64Network) -> Graph:
    """Trace the float64 module, record shapes with a real input, and find the nodes depending on A (the graph
    shares the module's parameters: no copy)."""
    handle, module = net.handle, net.module
    try:
        graph = _Tracer(handle.first.path).trace(module)
    except Exception as e:  # tracing runs arbitrary model code; any failure means no graph to walk
        raise Refusal(f"torch.fx could not trace the model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    gm = fx.GraphModule(module, graph)
    _check_in_place(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    nodes = list(gm.graph.nodes)
    firsts = [n for n in nodes if n.op == "call_module" and n.target == handle.first.path]
    if len(firsts) != 1:
        raise Refusal(f"the first layer {handle.first.path!r} is called {len(firsts)} times in the traced graph; "
                      "g must start at a single call")
    recorder = _Recorder(gm)
    x = torch.zeros(1, *handle.input_size, dtype=torch.float64, device=handle.device)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before raising
            recorder.propagate(x)
    except Exception as e:
        cause = e.__cause__ or e
        raise Refusal(f"the traced graph fails on a {tuple(x.shape)} input ({type(cause).__name__}: "
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
                raise Refusal(f"{where(n)} combines the first layer's output with the raw input: g is not a "
                              "function of A(x) alone")
            meta = n.meta["tensor_meta"]
            if isinstance(meta, TensorMetadata) and not meta.dtype.is_floating_point:
                raise Refusal(f"{where(n)} ({describe(n, gm)}) is integer-valued (e.g. argmax indices): not "
                              "Lipschitz")
            dependent.append(n)
            dep.add(n)
        elif any(i in raw for i in n.all_input_nodes):
            raw.add(n)
    output = nodes[-1]
    if any(i in raw for i in output.all_input_nodes):
        raise Refusal("the output depends on the raw input other than through the first layer")
    if not any(i in dep for i in output.all_input_nodes):
        raise Refusal("the output does not depend on the first layer")
    return Graph(gm, first, dependent, recorder.values, _foldable(gm, dependent, first), x.device)


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
            raise Refusal(f"{where(node)} ({describe(node, gm)}) modifies a tensor in place that other ops also "
                          "read; the graph walk cannot follow it")


def _foldable(gm: fx.GraphModule, dependent: list[fx.Node], first: fx.Node) -> dict[fx.Node, fx.Node]:
    """Eval-mode BatchNorm nodes whose input is a Conv2d/Linear used only by them (never A), both ways."""
    folded = {}
    for n in dependent:
        if n.op != "call_module" or not is_batchnorm(gm.get_submodule(n.target)):
            continue
        src = n.args[0]
        if (isinstance(src, fx.Node) and src is not first and src.op == "call_module" and len(src.users) == 1
                and plain(gm.get_submodule(src.target), (nn.Conv2d, nn.Linear))
                and (isinstance(gm.get_submodule(src.target), nn.Conv2d) or len(shape_of(src)) == 2)):
            folded[src], folded[n] = n, src
    return folded


def plain(m: nn.Module, types: tuple[type, ...]) -> bool:
    """``m`` is one of ``types`` and runs that type's own forward (not a subclass that changes it)."""
    return any(isinstance(m, t) and type(m).forward is t.forward for t in types)


def is_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm as torch runs it, or timm's BatchNormAct2d (a BatchNorm followed by its ``act``)."""
    from timm.layers import BatchNormAct2d

    bn = nn.modules.batchnorm._BatchNorm
    return isinstance(m, bn) and type(m).forward in (bn.forward, BatchNormAct2d.forward)


def shape_of(node: fx.Node) -> tuple[int, ...]:
    """The node's output shape, as recorded when tracing."""
    return tuple(node.meta["tensor_meta"].shape)


def recorded_value(graph: Graph, arg: Any) -> Any:
    """``arg`` with every node in it replaced by its recorded value (for constants, parameters and shapes)."""
    return fx.node.map_arg(arg, lambda n: graph.values[n])


def replay(node: fx.Node, graph: Graph, x: Any) -> Any:
    """Evaluate ``node`` with its input from A's side replaced by ``x`` and every other input as recorded."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: x if graph.is_dep(n) else graph.values[n])
    if node.op == "call_module":
        return graph.gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)
