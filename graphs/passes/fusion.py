"""The shape every fusion has: pattern (structure around an anchor op) / check (why not) / rewrite.

A pattern returns a typed Match (a dataclass per fusion). Every check ends the same way: the values the
pattern computes must be read only inside it (`Context.read_outside`), or they could not disappear with it.
The helpers the fusions share (`other_input`, `single_reader`) live here; domains and opsets in graphs/nodes.py.

`apply_fusion` visits every graph, Loop bodies included, so a fusion applies in every unrolled layer and in
the body alike. A rewrite adds a fused node that takes over the name of the pattern's last output and marks the
old producer replaced; what the old nodes computed dies and is removed. Weights a fusion derives (a concatenated
QKV matrix) are built once per distinct source weights and stored in the outermost graph that holds the
sources, so every layer and the Loop body read the one copy.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..constants import Constants
from ..infer import inferred_values
from ..names import Names
from ..nodes import ONNX_DOMAINS, opset_of
from ..order import toposort
from ..walk import Scope, consumers, producers, scopes, use_counts
from .dead_code import remove_dead



def other_input(node: onnx.NodeProto, name: str) -> str | None:
    """For a binary node reading `name`, the other operand."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


@dataclass
class Match:
    """What a pattern found around its anchor; each fusion's subclass names the nodes and values it needs."""

    last: str  # the pattern's last output: the fused node takes this name over


@dataclass
class FusionReport:
    """How many candidates a fusion rewrote, and how many each reason stopped."""
    fused: int = 0
    refused: Counter = field(default_factory=Counter)  # reason -> how many candidates it stopped

    def as_dict(self) -> dict:
        """The report as the optimizer's JSON counts."""
        return {"fused": self.fused, "refused": dict(self.refused)}


class Context:
    """What a fusion sees of one graph while it runs: producers, readers, constants, fresh names."""

    def __init__(self, model: onnx.ModelProto, scope: Scope, shared: dict, names: Names, pending: dict):
        self.model, self.scope, self.graph = model, scope, scope.graph
        self.producers = producers(scope.graph)
        self.readers = consumers(scope.graph)
        self.uses = use_counts(model.graph)
        self.outputs = {value.name for value in scope.graph.output}
        self.constants = Constants(scope)
        self.names = names
        self._shared = shared
        self._pending = pending
        self.replaced: set[str] = set()
        self.added: list[onnx.NodeProto] = []

    def producer(self, name: str, op_type: str | None = None) -> onnx.NodeProto | None:
        """The node writing `name` (of `op_type`, an ONNX op, when given), else None."""
        node = self.producers.get(name)
        if node is None or (op_type is not None and (node.op_type != op_type or node.domain not in ONNX_DOMAINS)):
            return None
        return node

    def readers_of(self, name: str) -> list[onnx.NodeProto]:
        """The nodes of this graph reading `name`."""
        return self.readers.get(name, [])

    def single_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when it is an `op_type` and `name` is no graph output."""
        readers = self.readers_of(name)
        if len(readers) == 1 and readers[0].op_type == op_type and self.uses[name] == 1 and name not in self.outputs:
            return readers[0]
        return None

    def read_outside(self, names, nodes: list[onnx.NodeProto]) -> str | None:
        """The first of `names` read by anything but `nodes` anywhere in the model, or a graph output: a value the
        pattern computes that cannot disappear with it. None when every one is read only inside the pattern."""
        for name in names:
            inside = sum(list(node.input).count(name) for node in nodes)
            if name in self.outputs or self.uses[name] != inside:
                return name
        return None

    def replace(self, node: onnx.NodeProto, *taken_over: str) -> None:
        """Add the fused node; it produces the `taken_over` names, so the old producers of those go."""
        self.replaced.update(taken_over)
        self.added.append(node)

    def shared_initializer(self, key: tuple, base_name: str, sources: list[str],
                           build: Callable[[], np.ndarray]) -> str:
        """One initializer per key, stored with the outermost graph holding `sources`, reused by every layer."""
        if key not in self._shared:
            home = self.home_of(sources)
            name = self.names.fresh(base_name)
            home.add_initializer(numpy_helper.from_array(np.ascontiguousarray(build()), name))
            self._shared[key] = name
        return self._shared[key]

    def shared_nodes(self, key: tuple, sources: list[str],
                     build: Callable[[Callable[[str], str]], list[onnx.NodeProto]]) -> str:
        """Nodes computed once per key in the outermost graph defining `sources`; returns their last output."""
        if key not in self._shared:
            home = self.defining_scope(sources)
            nodes = build(self.names.fresh)
            self._pending.setdefault(id(home), (home, []))[1].extend(nodes)
            self._shared[key] = nodes[-1].output[0]
        return self._shared[key]

    def home_of(self, initializers: list[str]) -> Scope:
        """The innermost graph holding all these initializers: where weights derived from them go."""
        owners = [owner for owner in (self.scope.owner_of(name) for name in initializers) if owner is not None]
        return max(owners, key=lambda owner: owner.depth) if owners else self.scope

    def defining_scope(self, names: list[str]) -> Scope:
        """The innermost graph among those that define (input, node output, initializer) any of `names`."""
        deepest = None
        for name in names:
            for scope in self.scope.chain:
                graph = scope.graph
                if (scope.owner_of(name) is scope or any(value.name == name for value in graph.input)
                        or any(name in node.output for node in graph.node)):
                    if deepest is None or scope.depth > deepest.depth:
                        deepest = scope
                    break
        return deepest or self.scope

    def opset(self, domain: str = "") -> int:
        """The model's opset version for `domain`."""
        return opset_of(self.model, domain)


SHAPE_ARITHMETIC = {"Shape", "Gather", "Slice", "Unsqueeze", "Squeeze", "Concat", "Cast", "Mul", "Div", "Add",
                    "Sub", "Identity", "Reshape", "Range"}


def absorb_shape_reads(ctx: Context, nodes: list[onnx.NodeProto], last: str) -> str | None:
    """Add to `nodes` the Shape(...) chains that read pattern intermediates only to build the target shapes
    of the pattern's own Reshapes (they die with the pattern); None when that holds, else the reason."""
    members = {node.output[0] for node in nodes}
    produced = {name for node in nodes for name in node.output if name} - {last}
    frontier = [reader for name in produced for reader in ctx.readers_of(name)
                if reader.output[0] not in members and reader.op_type == "Shape"]
    chain: dict[str, onnx.NodeProto] = {}
    while frontier:
        node = frontier.pop()
        if node.output[0] in members or node.output[0] in chain:
            continue
        if node.op_type not in SHAPE_ARITHMETIC or node.domain not in ONNX_DOMAINS:
            return f"a shape computed from the pattern feeds {node.op_type}, outside the pattern"
        chain[node.output[0]] = node
        for name in node.output:
            if name in ctx.outputs:
                return f"a shape computed from the pattern is a graph output ({name!r})"
            frontier.extend(ctx.readers_of(name))
    nodes.extend(chain.values())
    return None


class Fusion:
    """Subclasses set `anchor` (op_type) and implement pattern / check / rewrite."""

    name = "fusion"
    anchor: str | tuple[str, ...] = ""
    anchor_domains = ONNX_DOMAINS

    def prepare(self, model: onnx.ModelProto) -> None:
        """Called once before the graphs are visited (for checks that need the whole model)."""

    def pattern(self, ctx: Context, node: onnx.NodeProto) -> Match | None:
        """The matched nodes and values around `node`, or None when the structure is not there at all."""
        raise NotImplementedError

    def check(self, ctx: Context, match: Match) -> str | None:
        """None to fuse; otherwise the reason this match is left alone."""
        return None

    def rewrite(self, ctx: Context, match: Match) -> None:
        """Add the fused node (taking `match.last`'s name) and mark the replaced outputs."""
        raise NotImplementedError


def apply_fusion(model: onnx.ModelProto, fusion: Fusion, shared: dict | None = None) -> FusionReport:
    """Run one fusion over every graph in place; dead pattern nodes are removed afterwards."""
    report = FusionReport()
    known = inferred_values(model)  # recorded for the fused outputs: inference cannot see through custom ops
    fusion.prepare(model)
    names = Names(model)
    shared = {} if shared is None else shared
    pending: dict[int, tuple[Scope, list[onnx.NodeProto]]] = {}
    visited: list[tuple[Scope, Context]] = []
    anchors = (fusion.anchor,) if isinstance(fusion.anchor, str) else fusion.anchor
    for scope in scopes(model):
        ctx = Context(model, scope, shared, names, pending)
        for node in list(scope.graph.node):
            if node.op_type not in anchors or node.domain not in fusion.anchor_domains:
                continue
            match = fusion.pattern(ctx, node)
            if match is None:
                continue
            reason = fusion.check(ctx, match)
            if reason:
                report.refused[reason] += 1
                continue
            fusion.rewrite(ctx, match)
            report.fused += 1
        if ctx.added:
            kept = [node for node in scope.graph.node if not ctx.replaced.intersection(node.output)]
            del scope.graph.node[:]
            scope.graph.node.extend(kept + ctx.added)
            typed = {value.name for value in (*scope.graph.value_info, *scope.graph.output)}
            scope.graph.value_info.extend(known[name] for node in ctx.added for name in node.output
                                          if name in known and name not in typed)
        visited.append((scope, ctx))
    # Nodes for enclosing graphs are placed last, innermost graphs first: ordering an outer graph copies the
    # bodies it holds, so no body may be touched after its outer graph is.
    for scope, _ in reversed(visited):
        if id(scope) in pending:
            scope.graph.node.extend(pending[id(scope)][1])
    if report.fused:
        remove_dead(model)
        for scope in reversed(list(scopes(model))):
            toposort(scope.graph)
    return report
