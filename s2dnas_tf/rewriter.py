"""Split + concat: a model rebuilt as a multi-stage network, weights inherited (docs/design.md §2).

`transform(model, arch)` returns a new `keras.Model` with one output per stage (logits). Its
layers are named `stage{s}_<original name>` (plus `shared_<name>` for the layers computed on
the image before any channel-mixing layer); `stage_flops` reads those names, so it also works
on a transformed model saved and loaded again.

The original model is never modified: every layer of the new model is a fresh layer of the
same class and config, whose weights are slices of the original's.
"""

from __future__ import annotations

import heapq

import keras
import numpy as np

from s2dnas_tf import analysis as analysis_lib
from s2dnas_tf import conventions
from s2dnas_tf import flops as flops_lib
from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rules as rules_lib
from s2dnas_tf import space as space_lib

# Kept importable from here (tests and user code call rewriter.stage_of_layer).
stage_of_layer = conventions.stage_of_layer


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class MultiStageNet(keras.Model):
    """The functional model `transform` returns: images -> list of S stage logits.

    A plain Keras functional model, except that calling it always returns a list, also for
    S = 1 (Keras unwraps single-output lists otherwise).
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        outputs = super().call(inputs, training=training, mask=mask, **kwargs)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    @property
    def num_stages(self) -> int:
        return len(self.outputs)


class _Context:
    """What the layer rules may ask about one (space, arch) pair (`rules.BuildContext`)."""

    def __init__(self, space: space_lib.SearchSpace, arch: space_lib.Arch):
        analysis = space.analysis
        self.analysis = analysis
        self.graph = analysis.graph
        self.arch = arch
        self.num_stages = arch.num_stages
        by_index = space.unit_bounds(arch)
        self._bounds = {unit.root: by_index[unit.index] for unit in analysis.units}
        self._tail = {n.index for n in analysis.tail}
        # Per stage, the tensors of the identity blocks it skips (Arch.skips): it computes
        # nothing there, so its slice of each block's output is its slice of the input.
        self._skipped: list[set[int]] = [set() for _ in range(arch.num_stages + 1)]
        for stage in range(1, arch.num_stages):
            for group in range(arch.num_groups):
                count = arch.skipped_blocks(stage, group)
                blocks = analysis.blocks_of_group(group)
                for block in blocks[len(blocks) - count:] if count else []:
                    self._skipped[stage] |= block.branch
        # Mixing outputs that follow a derived layout (analysis.follows) copy the per-stage
        # channels of one derived tensor of their unit (`_follow_order` picks it and walks
        # it first), recorded as the walk produces it (`record`).
        self.order, self._layout_key = _follow_order(analysis)
        self._layout_sources = set(self._layout_key.values())
        self._layouts: dict[int, list] = {}

    def unit_bounds(self, unit: analysis_lib.Unit) -> list[int]:
        return self._bounds[unit.root]

    def allocated(self, key: int, stage: int) -> np.ndarray:
        if key in self._skipped[stage]:
            return np.zeros([0], np.int64)
        unit = self.analysis.unit_of(key)
        if unit is None:
            source = self._layout_key.get(key)
            if source is None or source not in self._layouts:
                raise AssertionError(f"internal: tensor {key} is not in a free unit")
            held = self._layouts[source][stage - 1]
            return np.zeros([0], np.int64) if held is None else np.asarray(held)
        bounds = self._bounds[unit.root]
        return np.arange(bounds[stage - 1], bounds[stage])

    def record(self, node, outputs: list) -> list:
        """Keeps the per-stage channels of the derived tensors that following mixing
        layers copy (see `allocated`); returns `outputs`."""
        for key, value in zip(node.outputs, outputs):
            if key in self._layout_sources and not isinstance(value, rules_lib.Shared):
                self._layouts[key] = [
                    None if v is None else (v.idx if isinstance(v, rules_lib.Piece) else v)
                    for v in value
                ]
        return outputs

    def visible_stages(self, node, stage: int) -> list[int]:
        if stage == 1:
            return [1]
        if node is self.analysis.classifier:
            return list(range(1, stage + 1))
        read = self.analysis.unit_of(node.inputs[0])
        if read is not None and read.gate:  # an excitation reads stage 1's whole bottleneck
            return list(range(1, stage + 1))
        group = self.analysis.group_of_tensor(node.outputs[0])
        if group >= self.arch.concat_position(stage):
            return list(range(1, stage + 1))
        return [stage]

    def clone(self, layer, name: str, **config) -> keras.layers.Layer:
        """A copy of `layer` for the rule to set every weight of (RULES.md): its
        initializers are zeros, nothing random is drawn to be overwritten."""
        return graph_lib.clone_layer(layer, name, initialize=False, **config)

    def name(self, node, stage: int, suffix: str = "") -> str:
        return conventions.stage_layer_name(stage, node.name, suffix)



def _follow_order(analysis: analysis_lib.Analysis) -> tuple[list, dict[int, int]]:
    """The order `transform` and `plan` walk the graph in, and each following mixing
    output's layout source (`Analysis.follows`): a derived tensor of its unit that does
    not depend on any of the unit's following layers, walked before them. Without
    following layers: the graph's own order.

    Raises:
        ValueError: If every derived tensor of such a unit is computed from a layer that
            must follow it (the layout would depend on itself).
    """
    graph = analysis.graph
    followers = analysis.following_keys()
    if not followers:
        return list(graph.nodes), {}
    ancestors: dict[int, int] = {}  # node index -> bitmask of the nodes it depends on
    for node in graph.nodes:
        mask = 0
        for key in node.inputs:
            p = graph.tensors[key].producer
            if p is not None:
                mask |= (1 << p) | ancestors[p]
        ancestors[node.index] = mask
    by_root: dict[int, list[int]] = {}
    for key in followers:
        by_root.setdefault(analysis.find(key), []).append(key)
    source_of: dict[int, int] = {}
    after: dict[int, set[int]] = {}  # node index -> node indices it must wait for
    for keys in by_root.values():
        producers = [graph.tensors[k].producer for k in keys]
        follow_mask = sum(1 << p for p in set(producers))
        sources = [
            k
            for k in analysis.layout_sources(keys[0])
            if not (ancestors[graph.tensors[k].producer] | (1 << graph.tensors[k].producer))
            & follow_mask
        ]
        if not sources:
            names = ", ".join(repr(graph.nodes[p].name) for p in producers)
            derived = ", ".join(
                repr(graph.nodes[graph.tensors[k].producer].name)
                for k in analysis.layout_sources(keys[0])
            )
            raise ValueError(
                f"Model {graph.model_name!r}: the outputs of {names} are joined elementwise "
                f"with the output of {derived} (a concatenation, flatten or "
                "channel-multiplying conv), so their channels must follow its layout, but "
                "it is computed from them; this pattern cannot be split into stages."
            )
        source = sources[0]
        for key, p in zip(keys, producers):
            source_of[key] = source
            after.setdefault(p, set()).add(graph.tensors[source].producer)
    # Kahn's algorithm, smallest index first: the graph's order where it is free to be.
    waiting = {}
    readers: dict[int, list[int]] = {}
    for node in graph.nodes:
        deps = {graph.tensors[k].producer for k in node.inputs} - {None}
        deps |= after.get(node.index, set())
        waiting[node.index] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(node.index)
    ready = [i for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph.nodes[i])
        for r in readers.get(i, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(graph.nodes):
        raise ValueError(
            f"Model {graph.model_name!r}: layers whose channels follow concatenations feed "
            "each other's concatenations in a cycle; this pattern cannot be split into stages."
        )
    return order, source_of


class _Builder(_Context):
    """Split + concat: a `graph.rebuild` step whose values are per-stage slices
    (`rules.Piece`s, or one `rules.Shared` tensor before any channel-mixing layer)."""

    def step(self, node, inputs: list) -> list:
        """The `graph.rebuild` step of split + concat: one node's per-stage layers."""
        ana = self.analysis
        rule = ana.rules.get(node.index)
        if node is ana.classifier:
            (value,) = inputs
            num_classes = self.graph.tensors[node.outputs[0]].channels
            return [rule.build_head(node, value, self, num_classes)]
        if node.index in self._tail:
            # After the classifier (e.g. Flatten after a 1x1-conv classifier), per stage;
            # a softmax is dropped: stages output logits.
            (heads,) = inputs
            if conventions.is_softmax_layer(node.layer):
                return [heads]
            return [
                [
                    rules_lib.Piece(
                        self.clone(node.layer, self.name(node, stage))(head.tensor), head.idx
                    )
                    for stage, head in enumerate(heads, start=1)
                ]
            ]
        if all(isinstance(v, rules_lib.Shared) for v in inputs) and rule.kind != "mixing":
            return [rules_lib.Shared(rule.build_shared(node, [v.tensor for v in inputs], self))]
        return self.record(node, rule.build(node, inputs, self))

    def build(self) -> keras.Model:
        graph = self.graph
        (in_key,) = graph.inputs
        images = keras.Input(shape=graph.tensors[in_key].shape[1:], name="images")
        values = graph_lib.rebuild(
            graph, self.step, {in_key: rules_lib.Shared(images)}, nodes=self.order
        )
        heads = values[graph.outputs[0]]
        if not isinstance(heads, list) or any(h is None for h in heads):
            raise AssertionError("internal: a stage has no classifier input")
        return MultiStageNet(
            images,
            [h.tensor for h in heads],
            name=f"{graph.model_name}_s2dnas{self.num_stages}",
        )


class _Planner(_Context):
    """The same walk without building: per tensor, the channels each stage holds."""

    def step(self, node, inputs: list) -> list:
        ana = self.analysis
        rule = ana.rules.get(node.index)
        if node is ana.classifier:
            num_classes = self.graph.tensors[node.outputs[0]].channels
            return [rule.plan_head(node, inputs[0], self, num_classes)]
        if node.index in self._tail:
            return [inputs[0]]  # per-stage heads, softmax dropped: all classes each
        if all(isinstance(v, rules_lib.Shared) for v in inputs) and rule.kind != "mixing":
            return [rules_lib.Shared(None) for _ in node.outputs]
        return self.record(node, rule.plan(node, inputs, self))


class ArchPlan:
    """The channels each stage holds at every tensor of `transform(model, arch)`, computed
    without building it (milliseconds instead of seconds). Build with `plan(space, arch)`.

    Attributes:
        values: Graph tensor key (of `space.analysis.graph`) -> `rules.Shared(None)` for a
            tensor computed once on the image, else S entries: the original channel indices
            stage s holds there, in order, or None where it computes nothing. The graph's
            output holds the S heads' class indices.
        num_stages: S.
    """

    def __init__(self, space: space_lib.SearchSpace, arch: space_lib.Arch):
        space.check_arch(arch)
        self._planner = _Planner(space, arch)
        self.graph = self._planner.graph
        self.num_stages = arch.num_stages
        (in_key,) = self.graph.inputs
        self.values = graph_lib.rebuild(
            self.graph,
            self._planner.step,
            {in_key: rules_lib.Shared(None)},
            nodes=self._planner.order,
        )

    def is_shared(self, key: int) -> bool:
        return isinstance(self.values[key], rules_lib.Shared)

    def live_channels(self, key: int) -> np.ndarray:
        """The channels of tensor `key` some stage computes (all, for a shared tensor)."""
        if self.is_shared(key):
            return np.arange(self.graph.tensors[key].channels)
        held = [idx for idx in self.values[key] if idx is not None]
        return np.unique(np.concatenate(held)) if held else np.zeros([0], np.int64)

    def visible_inputs(self, node, stage: int) -> np.ndarray | None:
        """The input channels stage `stage` reads in channel-mixing `node` (None: all of a
        shared input), or an empty array when it reads nothing."""
        (key,) = node.inputs
        if self.is_shared(key):
            return None
        held = [
            self.values[key][r - 1]
            for r in self._planner.visible_stages(node, stage)
            if self.values[key][r - 1] is not None
        ]
        return np.concatenate(held) if held else np.zeros([0], np.int64)


    def stage_flops(self) -> list[int]:
        """`stage_flops(transform(model, arch))` from the plan alone (same convention, see
        `s2dnas_tf.flops`): the cumulative MACs of stages 1..s."""
        own = [0] * self.num_stages
        ana = self._planner.analysis
        self._needed = self._needed_pieces()
        for node in self.graph.nodes:
            if not isinstance(node.layer, flops_lib.COUNTED_LAYERS):
                continue
            if node is ana.classifier or ana.rules[node.index].kind == "mixing":
                self._add_mixing_flops(node, own)
            else:
                self._add_channelwise_flops(node, own)
        return [int(sum(own[:s])) for s in range(1, self.num_stages + 1)]

    def _reads(self, node, stage: int) -> list[tuple[int, int]]:
        """The (input key, stage) slices stage `stage`'s output of `node` is computed from."""
        ana = self._planner.analysis
        if node is ana.classifier or (
            node.index in ana.rules and ana.rules[node.index].kind == "mixing"
        ):
            stages = self._planner.visible_stages(node, stage)
        else:
            stages = [stage]
        return [
            (key, r)
            for key in node.inputs
            if not self.is_shared(key)
            for r in stages
            if self.values[key][r - 1] is not None
        ]

    def _needed_pieces(self) -> set[tuple[int, int]]:
        """The (tensor key, stage) slices some stage's logits depend on. A slice nothing
        reads (e.g. everything of a stage that adds no channels where the classifier reads)
        is built by `transform` but not part of its model, so it costs nothing."""
        tail = self._planner._tail
        needed = set()
        for node in reversed(self.graph.nodes):
            if node.index in tail:
                continue
            for stage in range(1, self.num_stages + 1):
                if node is self._planner.analysis.classifier or any(
                    (key, stage) in needed for key in node.outputs
                ):
                    needed.update(self._reads(node, stage))
        return needed

    def _geometry(self, node) -> tuple[int, int, int]:
        """(output positions, kernel taps, input channels) of a counted layer."""
        out_shape = self.graph.tensors[node.outputs[0]].shape
        positions = int(np.prod(out_shape[1:-1], dtype=np.int64))
        taps = int(np.prod(getattr(node.layer, "kernel_size", (1,)), dtype=np.int64))
        return positions, taps, self.graph.tensors[node.inputs[0]].channels

    def _add_mixing_flops(self, node, own: list) -> None:
        """Conv2D / Dense / SeparableConv2D: each stage's outputs from what it reads; a
        separable conv's depthwise part once per stage slice read (named for that stage)."""
        positions, taps, c_in = self._geometry(node)
        separable = isinstance(node.layer, keras.layers.SeparableConv2D)
        multiplier = node.layer.depth_multiplier if separable else 1
        pointwise_taps = 1 if separable else taps
        depthwise_done = set()
        in_value = self.values[node.inputs[0]]
        head = node is self._planner.analysis.classifier
        for stage, out_idx in enumerate(self.values[node.outputs[0]], start=1):
            if out_idx is None or not (head or (node.outputs[0], stage) in self._needed):
                continue
            rows = self.visible_inputs(node, stage)
            seen = c_in if rows is None else len(rows)
            own[stage - 1] += positions * pointwise_taps * seen * multiplier * len(out_idx)
            if not separable:
                continue
            readers = [1] if rows is None else [
                r for r in self._planner.visible_stages(node, stage) if in_value[r - 1] is not None
            ]
            for r in readers:
                if r not in depthwise_done:
                    depthwise_done.add(r)
                    width = c_in if rows is None else len(in_value[r - 1])
                    own[r - 1] += positions * taps * width * multiplier

    def _add_channelwise_flops(self, node, own: list) -> None:
        """Depthwise / grouped convs: each output channel reads c_in / groups inputs."""
        positions, taps, c_in = self._geometry(node)
        layer = node.layer
        groups = c_in if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.groups
        out = self.values[node.outputs[0]]
        if self.is_shared(node.outputs[0]):
            out = [np.arange(self.graph.tensors[node.outputs[0]].channels)]
        for stage, out_idx in enumerate(out, start=1):
            needed = self.is_shared(node.outputs[0]) or (node.outputs[0], stage) in self._needed
            if out_idx is not None and needed:
                own[stage - 1] += positions * taps * (c_in // groups) * len(out_idx)


def plan(space: space_lib.SearchSpace, arch: space_lib.Arch) -> ArchPlan:
    """`ArchPlan(space, arch)`: what `transform` would build, per tensor and stage.

    Raises:
        ValueError: If `arch` is not of `space`, or cannot be built.
    """
    return ArchPlan(space, arch)


def transform(model: keras.Model, arch: space_lib.Arch) -> keras.Model:
    """Builds the multi-stage network of `arch` from `model`, inheriting its weights.

    Args:
        model: The static Keras model (functional or Sequential); it is not modified.
        arch: An architecture of `SearchSpace.from_model(model, num_stages=arch.num_stages)`.

    Returns:
        A keras.Model mapping images to a list of S logits tensors [N, num_classes], stage 1
        first. With S = 1 it computes the original model's logits.

    Raises:
        TypeError: If `model` is not a functional/Sequential keras.Model or `arch` not an Arch.
        ValueError: If the model has unsupported layers or `arch` is not of its space.
    """
    if not isinstance(arch, space_lib.Arch):
        raise TypeError(
            f"arch must be an s2dnas_tf.Arch (from SearchSpace.default_arch/sample/decode). "
            f"Received: arch of type {type(arch).__name__}"
        )
    analysis = analysis_lib.analyse(model)
    space = space_lib.SearchSpace(
        analysis, arch.num_stages, arch.grid, arch.channel_multiple, bool(arch.skips))
    space.check_arch(arch)
    return _Builder(space, arch).build()


def to_static(net: keras.Model, model: keras.Model) -> keras.Model:
    """The static model again, with the weights of its one-stage network after training.

    With S = 1, `transform(model, arch)` is `model` computed layer by layer under new names
    (`stage1_<name>`, `shared_<name>`). Trained as a one-stage net (the dynamic methods'
    recipe applied to the static model), its weights go back into a copy of `model`, which
    then computes what `net` does and can be transformed, searched or exported like any
    static model.

    Args:
        net: A one-stage network from `transform(model, ...)` (or loaded back from one).
        model: The static model it was built from (not modified).

    Returns:
        A new keras.Model with `model`'s architecture and layer names and `net`'s weights.

    Raises:
        TypeError: If either is not a functional/Sequential keras.Model.
        ValueError: If `net` has more than one stage, or a layer of `model` with weights has
            no counterpart of the same weight shapes in `net` (also a layer the rewriter
            computes as two, e.g. SeparableConv2D as depthwise + pointwise).
    """
    for what, value in (("net", net), ("model", model)):
        if not isinstance(value, keras.Model):
            raise TypeError(
                f"{what} must be a keras.Model. Received: {what} of type {type(value).__name__}"
            )
    if len(net.outputs) != 1:
        raise ValueError(
            "Expected a one-stage network (transform with num_stages=1). Received: "
            f"{net.name!r} with {len(net.outputs)} outputs"
        )
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    copy.set_weights(model.get_weights())
    trained = {layer.name: layer for layer in net.layers}
    for node in graph_lib.trace(copy).nodes:
        if not node.layer.weights:
            continue
        stage1 = conventions.stage_layer_name(1, node.name)
        shared = conventions.shared_layer_name(node.name)
        source = trained.get(stage1) or trained.get(shared)
        if source is None or [tuple(w.shape) for w in source.weights] != [
            tuple(w.shape) for w in node.layer.weights
        ]:
            raise ValueError(
                f"Expected {net.name!r} to be a one-stage network built from {model.name!r}. "
                f"Received: no layer {stage1!r} or {shared!r} with the "
                f"weight shapes of {model.name!r}'s layer {node.name!r}"
            )
        node.layer.set_weights([w.numpy() for w in source.weights])
    return copy


def stage_flops(net: keras.Model) -> list[int]:
    """Cumulative FLOPs (MACs, docs/design.md §4) of a transformed network, per stage.

    Args:
        net: A model returned by `transform` (or loaded back from one).

    Returns:
        S ints: the cost of running stages 1..s, for s = 1..S.

    Raises:
        ValueError: If `net` has no `stage{s}_` layers (not a transformed model).
    """
    per_layer = flops_lib.flops_by_layer(net)
    own: dict[int, int] = {}
    for name, macs in per_layer.items():
        stage = stage_of_layer(name)
        if stage is not None:
            own[stage] = own.get(stage, 0) + macs
    if not own:
        raise ValueError(
            f"Model {net.name!r} has no stage layers (named 'stage<s>_...'); stage_flops takes "
            "a network returned by s2dnas_tf.transform."
        )
    num_stages = len(net.outputs)
    return [int(sum(own.get(s, 0) for s in range(1, k + 1))) for k in range(1, num_stages + 1)]
