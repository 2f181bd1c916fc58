"""The product bound: per-op Lipschitz constants multiplied along g's graph, residual sums added, concatenations
added in quadrature. Certified when every op on the path from A to the logits has a rule."""

from __future__ import annotations

import math
import time

import torch.fx as fx

from nte_eval.certify.lipschitz.graph import Graph, trace
from nte_eval.certify.lipschitz.network import Float64Network
from nte_eval.certify.lipschitz.result import LipschitzBound, Refusal, refused
from nte_eval.certify.lipschitz.rules import Rule, graph_rules
from nte_eval.models.handle import ModelHandle


def walk(graph: Graph, rules: list[tuple[fx.Node, Rule]]) -> float:
    """The product bound: each node's constant from its inputs' along the graph, then the output's."""
    lip = {graph.first: 1.0}
    for node, rule in rules:
        terms = [gain * lip[src] for src, gain in rule.terms]
        lip[node] = sum(terms) if rule.combine == "sum" else math.sqrt(sum(t * t for t in terms))
    out = [lip[n] for n in list(graph.gm.graph.nodes)[-1].all_input_nodes if n in lip]
    return math.sqrt(sum(v * v for v in out))


def product_bound(model: ModelHandle | Float64Network) -> LipschitzBound:
    """(1) Certified: per-op Lipschitz constants combined along g's graph (products along paths, residuals summed).
    ``model``: a handle, or the certification's float64 copy of it (no new copy then)."""
    start = time.perf_counter()
    try:
        graph = trace(Float64Network.of(model))
        rules = graph_rules(graph)
    except Refusal as e:
        return refused("product", str(e), start)
    value = walk(graph, rules)
    if not math.isfinite(value):
        return refused("product", f"the product bound is not finite ({value})", start)
    layers = sum(r.kind != "affine" for _, r in rules)
    sums = sum(len(r.terms) > 1 and r.combine == "sum" for _, r in rules)
    folds = len(graph.folded) // 2
    detail = (f"product over {layers} layers (graph walk, {sums} residual sums added"
              + (f", {folds} BatchNorms folded" if folds else "") + ")")
    return LipschitzBound("product", "certified", value, detail, time.perf_counter() - start)
