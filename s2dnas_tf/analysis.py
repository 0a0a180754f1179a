"""Channel analysis of a Keras graph: units, unit groups and the classifier (docs/design.md §2–§3).

A *unit* is a set of tensors whose channel axes must be split the same way because a
channel-wise op or an elementwise merge joins them. Units come in three kinds:

- *free*: produced by a channel-mixing layer (Conv2D, Dense, ...). The architecture decides
  how its channels are partitioned among the stages.
- *derived*: produced by a Concatenate, a Flatten, or a depthwise/grouped conv that changes the
  channel count. Its per-stage channels follow from its inputs' and are never chosen. When an
  elementwise join (Add, Multiply, ...) ties a channel-mixing layer's output to a derived
  tensor (a squeeze-excite gate on a concatenation, NASNet's cells, Inception-ResNet's
  residuals), the unit stays derived and the mixing layer *follows* its layout: stage s's
  output channels of that layer are the channels stage s holds in the derived tensor
  (`follows`, `layout_sources`).
- *shared*: computed from the input image before any channel-mixing layer (the image itself,
  `Rescaling`, `Normalization`, padding): computed once and visible to every stage.

Unit groups are consecutive free units with the same spatial size (a ResNet's resolution
stages); the architecture picks one channel fraction per stage and unit group.

A free unit is a *gate* unit when it is the bottleneck of a squeeze-and-excite block: made
by a channel-mixing layer from a globally pooled feature map (through channel-wise layers)
and read by channel-mixing layers whose outputs rejoin that same feature map's unit (the
excitation, multiplied back onto it). A gate unit is not split: stage 1 computes all of
it from the pooled channels it holds, and every stage's excitation reads it whole
(docs/design.md §2, "Squeeze-and-excite").

An *identity block* is a residual block whose shortcut is the identity: an `Add` of a tensor x
and a branch f(x) computed from x alone (every layer of f reads x or f's own tensors, f has a
channel-mixing layer, none of f's tensors is read outside it, and f holds no squeeze-and-excite
gate). A stage may skip such a block (its features flow through the shortcut), which is the
space's optional depth decision (docs/design.md §3, "Depth").
"""

from __future__ import annotations

import dataclasses

import keras

from s2dnas_tf import conventions
from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rules as rules_lib


@dataclasses.dataclass
class Unit:
    """A free unit: the channels of one or more tensors that are split together.

    Attributes:
        index: Position among free units (topological order of first tensor).
        root: Union-find root key of its tensors.
        channels: Number of channels.
        quantum: The partition boundaries are multiples of this (grouped convs need whole
            groups).
        group: Index of its unit group.
        tensors: Keys of its tensors.
        gate: A squeeze-and-excite bottleneck (see the module docstring): all of it is
            stage 1's, whatever the architecture's fractions.
    """

    index: int
    root: int
    channels: int
    quantum: int
    group: int
    tensors: list[int]
    gate: bool = False


@dataclasses.dataclass
class UnitGroup:
    """Consecutive free units with the same spatial size.

    Attributes:
        index: Position (0-based) in the network, input side first.
        resolution: (H, W) of the group's feature maps, or None for vector units before any
            spatial one.
        units: Indices of its units.
    """

    index: int
    resolution: tuple | None
    units: list[int]

    @property
    def label(self) -> str:
        if self.resolution is None:
            return "vector"
        return "x".join(str(d) for d in self.resolution)


@dataclasses.dataclass(frozen=True)
class IdentityBlock:
    """A residual block `add(x, f(x))` whose shortcut is the identity (module docstring).

    Attributes:
        index: Position among the model's identity blocks (topological order of the Add).
        group: Unit group of the Add's output.
        add: Node index of the Add.
        shortcut: Tensor key of x.
        branch: Tensor keys computed inside f, f(x) included: what a stage skipping the
            block does not compute.
        nodes: Node indices of f's layers.
    """

    index: int
    group: int
    add: int
    shortcut: int
    branch: frozenset
    nodes: tuple


class Analysis:
    """The result of analysing a model: graph, units, unit groups, classifier.

    Build with `analyse(model)`.
    """

    def __init__(self, graph: graph_lib.Graph):
        self.graph = graph
        self._parent: dict[int, int] = {k: k for k in graph.tensors}
        self._free: set[int] = set()
        self._derived: set[int] = set()
        self._quantum: dict[int, int] = {}
        self._marked_free: list[int] = []  # keys, in marking order
        self._marked_derived: list[int] = []
        self._follower_keys: set[int] = set()
        self.shared: set[int] = set(graph.inputs)
        self.classifier: graph_lib.OpNode | None = None
        self.tail: list[graph_lib.OpNode] = []  # a trailing softmax, dropped by the rewriter
        self.rules: dict[int, rules_lib.LayerRule] = {}
        self.units: list[Unit] = []
        self.groups: list[UnitGroup] = []
        self._unit_of_root: dict[int, Unit] = {}
        self._group_of_tensor: dict[int, int] = {}
        self.identity_blocks: list[IdentityBlock] = []

    # --- union-find, used by the rules' `analyse` ---------------------------------------

    def find(self, key: int) -> int:
        root = key
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[key] != root:  # path compression
            self._parent[key], key = root, self._parent[key]
        return root

    def union(self, a: int, b: int, node: graph_lib.OpNode) -> None:
        """Declares that tensors `a` and `b` share their channel partition."""
        ta, tb = self.graph.tensors[a], self.graph.tensors[b]
        if ta.channels != tb.channels:
            raise ValueError(
                f"Layer {node.name!r} ({type(node.layer).__name__}) joins tensors with "
                f"{ta.channels} and {tb.channels} channels; s2dnas_tf needs the channel axes of "
                "elementwise-joined tensors to match (broadcasting one channel over many is "
                "not supported)."
            )
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self._parent[rb] = ra
        for marks in (self._free, self._derived):
            if rb in marks:
                marks.discard(rb)
                marks.add(ra)
        qa, qb = self._quantum.pop(ra, 1), self._quantum.pop(rb, 1)
        self._quantum[ra] = max(qa, qb)

    def mark_free(self, key: int) -> None:
        """`key` is a channel-mixing layer's output: a new unit the architecture splits
        (unless a join ties it to a derived tensor: then it follows that layout)."""
        self._free.add(self.find(key))
        self._marked_free.append(key)

    def mark_derived(self, key: int) -> None:
        """`key`'s per-stage channels follow from its producer's inputs (Concatenate, ...)."""
        self._derived.add(self.find(key))
        self._marked_derived.append(key)

    def require_quantum(self, key: int, quantum: int) -> None:
        root = self.find(key)
        self._quantum[root] = max(self._quantum.get(root, 1), quantum)

    # --- queries used by transform -------------------------------------------------------

    def is_shared(self, key: int) -> bool:
        return key in self.shared

    def unit_of(self, key: int) -> Unit | None:
        """The free unit a tensor belongs to, or None (shared or derived tensors)."""
        return self._unit_of_root.get(self.find(key))

    def follows(self, key: int) -> bool:
        """Whether `key` is a channel-mixing layer's output whose unit is derived: its
        per-stage channels are those of the unit's `layout_sources`, not an arch choice."""
        root = self.find(key)
        return key in self._follower_keys and root in self._derived

    def layout_sources(self, key: int) -> list[int]:
        """The derived tensors (Concatenate, spatial Flatten, channel-multiplying conv
        outputs) in `key`'s unit, in marking (topological) order: where a following
        layer's per-stage channels come from."""
        root = self.find(key)
        return [k for k in self._marked_derived if self.find(k) == root]

    def following_keys(self) -> list[int]:
        """Every channel-mixing output that follows a derived layout (see `follows`)."""
        return [k for k in self._marked_free if self.follows(k)]

    def group_of_tensor(self, key: int) -> int:
        return self._group_of_tensor[key]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    # --- the pass ------------------------------------------------------------------------

    def run(self) -> "Analysis":
        self._find_classifier()
        problems = []
        tail_ids = {id(n) for n in self.tail}
        for node in self.graph.nodes:
            if id(node) in tail_ids:
                continue
            try:
                rule = rules_lib.rule_for(node.layer)
                rule.check(node, self.graph)
            except rules_lib.UnsupportedLayerError as e:
                problems.append(str(e))
                continue
            self.rules[node.index] = rule
        if problems:
            raise ValueError(
                f"Model {self.graph.model_name!r} has layers s2dnas_tf cannot split:\n  - "
                + "\n  - ".join(problems)
                + "\nSupported layer classes: "
                + ", ".join(rules_lib.supported_layer_names())
                + ". Register a rule for a new layer type with "
                "s2dnas_tf.rules.register_rule (see WORKSPACE.md)."
            )
        for node in self.graph.nodes:
            if id(node) in tail_ids:
                continue
            rule = self.rules[node.index]
            in_shared = [k in self.shared for k in node.inputs]
            if node is self.classifier:
                continue
            if all(in_shared) and rule.kind != "mixing":
                self.shared.update(node.outputs)
                continue
            if any(in_shared) and rule.kind != "mixing":
                raise ValueError(
                    f"Layer {node.name!r} ({type(node.layer).__name__}) joins a tensor computed "
                    "from the input image alone with one computed by the network's layers; "
                    "s2dnas_tf cannot give each stage its own slice of such a join."
                )
            rule.analyse(node, self)
        self._follower_keys = set(self._marked_free)
        self._build_units()
        for unit in self.units:
            unit.gate = self._is_gate(unit)
        self.identity_blocks = self._find_identity_blocks()
        return self

    def blocks_of_group(self, group: int) -> list[IdentityBlock]:
        """The identity blocks whose Add is in unit group `group`, input side first."""
        return [b for b in self.identity_blocks if b.group == group]

    def _find_identity_blocks(self) -> list[IdentityBlock]:
        graph = self.graph
        readers: dict[int, set[int]] = {}
        for node in graph.nodes:
            for key in node.inputs:
                readers.setdefault(key, set()).add(node.index)
        blocks = []
        for node in graph.nodes:
            if type(node.layer) is not keras.layers.Add or len(set(node.inputs)) != 2:
                continue
            for x, y in (node.inputs, node.inputs[::-1]):
                found = self._identity_branch(node, x, y, readers)
                if found is not None:
                    nodes, keys = found
                    blocks.append(IdentityBlock(
                        len(blocks), self.group_of_tensor(node.outputs[0]), node.index, x,
                        frozenset(keys), tuple(sorted(nodes)),
                    ))
                    break
        return blocks

    def _identity_branch(self, add, x: int, y: int, readers) -> tuple | None:
        """(node indices, tensor keys) of the branch computing `y` from `x` alone, if
        `add(x, y)` is an identity block; else None."""
        graph = self.graph
        if x in self.shared or y in self.shared or self.unit_of(x) is None:
            return None
        start = graph.tensors[x].producer
        start = -1 if start is None else start
        tail = {n.index for n in self.tail} | {self.classifier.index}
        nodes: set[int] = set()
        stack = [graph.tensors[y].producer]
        while stack:
            p = stack.pop()
            if p is None or p <= start or p in tail:
                return None  # reaches back past x: f reads more than x
            if p in nodes:
                continue
            nodes.add(p)
            stack += [graph.tensors[k].producer for k in graph.nodes[p].inputs if k != x]
        if not any(x in graph.nodes[p].inputs for p in nodes):
            return None
        if not any(self.rules[p].kind == "mixing" for p in nodes):
            return None
        keys = {k for p in nodes for k in graph.nodes[p].outputs}
        for key in keys:
            allowed = {add.index} if key == y else nodes
            if not readers.get(key, set()) <= allowed:
                return None
            unit = self.unit_of(key)
            if unit is not None and unit.gate:
                return None
        return nodes, keys

    def _is_gate(self, unit: Unit) -> bool:
        """Whether `unit` is a squeeze-and-excite bottleneck: produced by a channel-mixing
        layer from a global pooling of a feature map X (through single-input channel-wise
        layers), and read by channel-mixing layers (at least one, the classifier never)
        whose outputs all join X's unit."""
        producer = self._producer(unit.tensors[0])
        if producer is None or self.rules[producer.index].kind != "mixing":
            return False
        node = self._producer(producer.inputs[0])
        while (node is not None and len(node.inputs) == 1
               and node.index in self.rules and self.rules[node.index].kind != "mixing"):
            if isinstance(node.layer, _GLOBAL_POOLING):
                break
            node = self._producer(node.inputs[0])
        if node is None or not isinstance(node.layer, _GLOBAL_POOLING):
            return False
        pooled_root = self.find(node.inputs[0])
        readers = [
            reader for key in unit.tensors for reader in self.graph.consumers(key)
            if reader.index in self.rules and self.rules[reader.index].kind == "mixing"
        ]
        if not readers or any(reader is self.classifier for reader in readers):
            return False
        return all(self.find(reader.outputs[0]) == pooled_root for reader in readers)

    def _find_classifier(self):
        """The classifier is the Dense / 1x1 Conv2D that the output comes from, possibly
        through a *tail* of layers on the class scores: a softmax or linear Activation,
        Softmax, Flatten, Reshape or Dropout (e.g. MobileNetV3's conv head). The tail's
        softmax is dropped (stages output logits); its other layers are applied per stage."""
        node = self._producer(self.graph.outputs[0])
        tail = []
        while node is not None and _is_tail_layer(node.layer) and len(node.inputs) == 1:
            tail.append(node)
            node = self._producer(node.inputs[0])
        self.tail = tail[::-1]
        if node is None or not rules_lib.is_classifier_layer(node.layer):
            got = "the input" if node is None else f"{node.name!r} ({type(node.layer).__name__})"
            raise ValueError(
                f"Model {self.graph.model_name!r}: the output must come from a Dense classifier "
                "(or a 1x1 Conv2D), optionally followed by softmax/linear Activation, Softmax, "
                f"Flatten, Reshape or Dropout layers. Received: output produced by {got}."
            )
        if self.graph.tensors[self.graph.outputs[0]].rank != 2:
            raise ValueError(
                f"Model {self.graph.model_name!r}: the output must be class scores of shape "
                f"[N, classes]. Received: {self.graph.tensors[self.graph.outputs[0]].shape}."
            )
        activation = getattr(node.layer, "activation", None)
        act_name = getattr(activation, "__name__", str(activation))
        if act_name not in ("linear", "softmax"):
            raise ValueError(
                f"Classifier {node.name!r} has activation {act_name!r}; s2dnas_tf needs logits "
                "(activation None/'linear') or 'softmax' (dropped: each stage outputs logits)."
            )
        self.classifier = node

    def _producer(self, key):
        producer = self.graph.tensors[key].producer
        return None if producer is None else self.graph.nodes[producer]

    def _build_units(self):
        tensors = self.graph.tensors
        nominal = self._nominal_resolutions()
        by_root: dict[int, list[int]] = {}
        for key in sorted(tensors):
            if key in self.shared:
                continue
            by_root.setdefault(self.find(key), []).append(key)
        group_of_res: dict = {}
        current = None
        for root, keys in sorted(by_root.items(), key=lambda kv: kv[1][0]):
            if root not in self._free or root in self._derived:
                continue  # derived units, and those mixing outputs follow (`follows`)
            first = tensors[keys[0]]
            res = nominal[first.key] if first.rank == 4 else None
            if res is None or first.rank != 4:
                if current is None:
                    current = self._new_group(None, group_of_res)
                group = current
            else:
                group = group_of_res.get(res)
                if group is None:
                    group = self._new_group(res, group_of_res)
                current = group
            channels = first.channels
            quantum = self._quantum.get(root, 1)
            if channels % quantum:
                quantum = 1
            unit = Unit(len(self.units), root, channels, quantum, group, keys)
            self.units.append(unit)
            self.groups[group].units.append(unit.index)
            self._unit_of_root[root] = unit
        # Every tensor gets the group the network is in at that point (topological order):
        # that is where a channel-mixing layer producing it sits, for the concat positions.
        current = 0
        for key in sorted(tensors):
            unit = self._unit_of_root.get(self.find(key))
            if unit is not None:
                current = unit.group
            self._group_of_tensor[key] = current
        if not self.units:
            raise ValueError(
                f"Model {self.graph.model_name!r} has no channel-mixing layer before its "
                "classifier, so there is nothing to split into stages."
            )

    def _new_group(self, resolution, group_of_res):
        group = len(self.groups)
        self.groups.append(UnitGroup(group, resolution, []))
        if resolution is not None:
            group_of_res[resolution] = group
        return group

    def _nominal_resolutions(self) -> dict:
        """Spatial size of each tensor, where 1x1 and vector tensors (global pooling, SE
        squeeze, flatten) inherit the size of the feature map they were pooled from."""
        tensors = self.graph.tensors
        nominal = {k: tensors[k].spatial for k in self.graph.inputs}
        for node in self.graph.nodes:
            inherited = next((nominal[k] for k in node.inputs if nominal.get(k)), None)
            for k in node.outputs:
                spatial = tensors[k].spatial
                if spatial is None or spatial == (1, 1):
                    nominal[k] = inherited
                else:
                    nominal[k] = spatial
        return nominal


_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)

# Kept importable from here; the one definition is in conventions.
is_softmax_layer = conventions.is_softmax_layer


def _is_tail_layer(layer) -> bool:
    if is_softmax_layer(layer):
        return True
    if type(layer) is keras.layers.Activation:
        return getattr(layer.activation, "__name__", "") == "linear"
    return type(layer) in (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def analyse(model: keras.Model) -> Analysis:
    """Analyses `model`'s channels into units and unit groups.

    Args:
        model: A Keras 3 functional or Sequential model.

    Returns:
        The `Analysis`.

    Raises:
        TypeError: For subclassed models or non-models.
        ValueError: For unsupported layers (all listed at once, each with its class), models
            without a Dense/1x1-conv classifier, or several inputs/outputs.
    """
    return Analysis(graph_lib.trace(model)).run()
