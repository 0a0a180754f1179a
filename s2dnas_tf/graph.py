"""The one walk of a Keras model's graph, and the one way to rebuild a model from it.

`trace(model)` flattens a Keras 3 functional (or Sequential) model into a `Graph`: layer calls
(`OpNode`) in topological order and the tensors between them (`TensorInfo`). Everything that
reads a model's structure works on it: the channel analysis, the FLOPs counter, the stage
split of the export, the early-exit baseline.

`rebuild(graph, step, inputs)` replays a graph node by node into a new functional graph: `step`
decides what each node becomes (`copy_call` is the usual answer: a fresh copy of the layer,
renamed or reconfigured, with the original's weights). The rewriter's split + concat, the
early-exit baseline and BatchNorm folding are each one `step` function; a new realisation of
the stages or a supernet is one more.

This is the only module that touches Keras's private graph attributes (`_keras_history`,
`_inbound_nodes`, `Sequential._functional`, `Functional`); each use is commented.

Nested models (a functional or Sequential model used as a layer, e.g.
`keras.Sequential([keras.applications.ResNet50(...), Dense(10)])`) are inlined: their layers
appear in the flat graph named `outer/inner` (a name no Keras layer can have, so it never
collides; `conventions.layer_name` turns it into `outer_inner` for a rebuilt layer). A nested
model called on inputs of other static shapes than it was built for (a backbone built for any
image size, called on 64x64 images) gets the shapes of this call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import keras

# `Functional` is not exported by Keras 3; it is the class `keras.Model(inputs, outputs)`
# returns, and the only way to tell a graph model from a subclassed one.
from keras.src.models.functional import Functional

from s2dnas_tf import conventions


@dataclasses.dataclass
class TensorInfo:
    """One edge of the graph.

    Attributes:
        key: Unique id of the tensor in this graph.
        shape: Static shape, batch dimension included (usually None).
        producer: Index of the `OpNode` that computes it, or None for a model input.
    """

    key: int
    shape: tuple
    producer: int | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        return int(self.shape[-1])

    @property
    def spatial(self) -> tuple | None:
        """(H, W) for a rank-4 tensor, else None."""
        return tuple(self.shape[1:3]) if self.rank == 4 else None


@dataclasses.dataclass
class OpNode:
    """One layer call.

    Attributes:
        index: Position in topological order.
        layer: The (original, never modified) Keras layer.
        name: Name in the flat graph ("outer/inner" for an inlined nested model's layer);
            unique unless the graph was traced with `allow_shared=True`.
        inputs: Keys of the input tensors, in call order.
        outputs: Keys of the output tensors.
        call_kwargs: Non-tensor keyword arguments of the call (e.g. `training`).
        arguments: Keras's record of the call (tensors and constants, e.g. the 3.0 of
            `x + 3.0`); `call_with(new_tensors)` replays it on new tensors.
        input_ids: id() of the call's input KerasTensors, parallel to `inputs`.
    """

    index: int
    layer: Any
    name: str
    inputs: list[int]
    outputs: list[int]
    call_kwargs: dict
    arguments: Any = None
    input_ids: list = dataclasses.field(default_factory=list)

    def filled_arguments(self, new_tensors: list) -> tuple[list, dict]:
        """The call's (args, kwargs) with its input tensors replaced by `new_tensors`."""
        return self.arguments.fill_in(dict(zip(self.input_ids, new_tensors)))


@dataclasses.dataclass
class Graph:
    """A flat, topologically ordered view of a Keras model's graph."""

    model_name: str
    nodes: list[OpNode]
    tensors: dict[int, TensorInfo]
    inputs: list[int]
    outputs: list[int]
    # key -> the model's own symbolic KerasTensor, to cut sub-models out of the graph with
    # keras.Model(inputs=..., outputs=...) (e.g. one model per stage for export).
    keras_tensors: dict = dataclasses.field(default_factory=dict)

    def consumers(self, key: int) -> list[OpNode]:
        return [n for n in self.nodes if key in n.inputs]


def is_graph_model(model: Any) -> bool:
    """Whether `model` is a keras.Model with a graph to walk (functional, or a built
    Sequential); False for subclassed models and anything else."""
    if isinstance(model, keras.Sequential):
        # A built Sequential keeps an equivalent functional model in `_functional`.
        return getattr(model, "_functional", None) is not None
    return isinstance(model, Functional)


def clone_layer(
    layer: keras.layers.Layer, name: str, *, initialize: bool = True, **config
) -> keras.layers.Layer:
    """A fresh, unbuilt copy of `layer` from its config, named `name`, with `config`'s
    entries overriding the original's (weights are not copied).

    `initialize=False` is for callers that set every weight of the copy right after it is
    built: its initializers are replaced by zeros, so that building it does not draw random
    values only to overwrite them (on a large model that drawing is a third or more of a
    rebuild's time)."""
    cfg = layer.get_config()
    if not initialize:
        for key, value in cfg.items():
            if key.endswith("_initializer") and value is not None:
                cfg[key] = "zeros"
    cfg.update(config)
    cfg["name"] = name
    return type(layer).from_config(cfg)


def replay(node: OpNode, inputs: list, operation: Any = None) -> list:
    """Calls `operation` (default: the node's own layer or keras.ops call) the way `node`
    was called, on new input tensors; always returns the list of outputs."""
    args, kwargs = node.filled_arguments(inputs)
    outputs = (operation or node.layer)(*args, **kwargs)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def copy_call(
    node: OpNode,
    inputs: list,
    name: str | None = None,
    weights: list | None = None,
    **config,
) -> list:
    """Replays `node` on `inputs` with a fresh copy of its layer: the usual `rebuild` step.

    The copy has the layer's class and config with `config`'s entries overriding it, is
    named `name` (default: the node's name as a layer name) and gets `weights` (default: the
    original layer's). A `keras.ops` call in the graph is replayed as it is (it has no
    weights and no name of ours). The original layer is not touched.

    Args:
        node: The node to replay.
        inputs: The new tensors for its inputs, in `node.inputs` order.
        name: The copy's name.
        weights: Weights for the copy, in `layer.get_weights()` order.
        **config: Config entries to override (e.g. `activation="linear"`).

    Returns:
        The new output tensors, in `node.outputs` order.
    """
    layer = node.layer
    if not isinstance(layer, keras.layers.Layer):
        return replay(node, inputs)
    copy = clone_layer(
        layer, name or conventions.layer_name(node.name), initialize=False, **config
    )
    outputs = replay(node, inputs, copy)  # builds the copy
    copy.set_weights(layer.get_weights() if weights is None else weights)
    return outputs


# What a `rebuild` step returns for a node: its new output values (any objects: tensors, or a
# rewriter's per-stage slices), or None to drop the node (its outputs get no value).
Step = Callable[[OpNode, list], "list | None"]


def rebuild(graph: Graph, step: Step, inputs: dict[int, Any], nodes=None) -> dict[int, Any]:
    """Replays `graph` node by node, each node turned into new values by `step`.

    The one loop behind every model this package derives from another: `step(node,
    input_values)` returns the node's output values (`copy_call(node, inputs)` copies it);
    values are whatever the caller maps tensors to (Keras tensors, per-stage slices, ...).
    The caller makes `keras.Model(new_inputs, [values[k] for k in graph.outputs])`.

    Args:
        graph: The traced graph.
        step: The per-node rebuild.
        inputs: Value of each graph input key (e.g. a new `keras.Input`).
        nodes: The nodes to replay (default: all), in topological order.

    Returns:
        Every rebuilt tensor's value, by graph key (inputs included).

    Raises:
        ValueError: If a node reads a tensor with no value (its producer was dropped).
    """
    values = dict(inputs)
    for node in graph.nodes if nodes is None else nodes:
        missing = [k for k in node.inputs if k not in values]
        if missing:
            raise ValueError(
                f"Cannot rebuild {node.name!r}: it reads tensor(s) {missing} whose producer "
                "was dropped."
            )
        outputs = step(node, [values[k] for k in node.inputs])
        if outputs is None:
            continue
        if len(outputs) != len(node.outputs):
            raise AssertionError(
                f"internal: rebuilding {node.name!r} gave {len(outputs)} outputs for "
                f"{len(node.outputs)}"
            )
        values.update(zip(node.outputs, outputs))
    return values


def new_inputs(graph: Graph) -> dict[int, keras.KerasTensor]:
    """A fresh `keras.Input` for each input of `graph`, with its name, batch shape and dtype
    (the usual `inputs` of `rebuild`)."""
    values = {}
    for key in graph.inputs:
        tensor = graph.keras_tensors[key]
        values[key] = keras.Input(
            batch_shape=graph.tensors[key].shape, dtype=tensor.dtype, name=tensor.name
        )
    return values


def _as_functional(model: keras.Model) -> Functional:
    """Returns the functional graph behind `model`, refusing models that have none."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Expected a keras.Model (functional or Sequential). "
            f"Received: model of type {type(model).__name__}"
        )
    if isinstance(model, keras.Sequential):
        # A built Sequential keeps an equivalent functional model in the private
        # `_functional` attribute; it holds the very same layer objects.
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"Sequential model {model.name!r} is not built: give it an `Input` or call "
                "`model.build(input_shape)` first."
            )
        return functional
    if not isinstance(model, Functional):
        raise TypeError(
            f"Model {model.name!r} of class {type(model).__name__} is a subclassed model: its "
            "graph is Python code that cannot be rewritten. s2dnas_tf accepts Keras "
            "functional models (keras.Model(inputs, outputs)) and Sequential models."
        )
    return model


def _history(tensor):
    # Every symbolic KerasTensor records (operation, node_index, tensor_index) in the private
    # `_keras_history`; it is how Keras itself walks a functional graph (ops/function.py).
    return tensor._keras_history


def _inbound_node(operation, node_index):
    # The call event that produced a tensor lives in the operation's private `_inbound_nodes`.
    return operation._inbound_nodes[node_index]


def trace(
    model: keras.Model,
    *,
    single_input: bool = True,
    single_output: bool = True,
    allow_shared: bool = False,
) -> Graph:
    """Flattens `model` into a `Graph`.

    Args:
        model: A built Keras 3 functional or Sequential model.
        single_input: Refuse models with several inputs (the rewriter takes one image input).
        single_output: Refuse models with several outputs (a static model ends in one class
            scores tensor; a multi-stage net has S outputs).
        allow_shared: Accept a layer (or nested model) called more than once; each call is a
            node, and the calls share a name. Off for everything that rebuilds layer by
            layer (a shared layer would become several unshared ones).

    Returns:
        The flat graph, nodes in topological order.

    Raises:
        TypeError: If `model` is not a functional/Sequential keras.Model.
        ValueError: If it is unbuilt, has several inputs or outputs where one is required, or
            calls a layer twice without `allow_shared`.
    """
    functional = _as_functional(model)
    if (single_input and len(functional.inputs) != 1) or (
        single_output and len(functional.outputs) != 1
    ):
        raise ValueError(
            f"Model {model.name!r} must have exactly one input (the images) and one output "
            f"(the class scores). Received: {len(functional.inputs)} inputs, "
            f"{len(functional.outputs)} outputs."
        )
    builder = _GraphBuilder(allow_shared)
    in_keys = [builder.new_tensor(t) for t in functional.inputs]
    alias = {id(t): k for t, k in zip(functional.inputs, in_keys)}
    out_keys = builder.walk(functional, alias, prefix="")
    return Graph(
        model_name=model.name,
        nodes=builder.nodes,
        tensors=builder.tensors,
        inputs=in_keys,
        outputs=out_keys,
        keras_tensors=builder.keras_tensors,
    )


class _GraphBuilder:
    """Accumulates nodes and tensors while walking (possibly nested) functional graphs."""

    def __init__(self, allow_shared: bool):
        self.allow_shared = allow_shared
        self.nodes: list[OpNode] = []
        self.tensors: dict[int, TensorInfo] = {}
        self.keras_tensors: dict[int, keras.KerasTensor] = {}
        self._next_key = 0
        self._names: set[str] = set()

    def new_tensor(self, tensor, producer: int | None = None, shape=None) -> int:
        key = self._next_key
        self._next_key += 1
        shape = tuple(tensor.shape) if shape is None else tuple(shape)
        self.tensors[key] = TensorInfo(key, shape, producer)
        self.keras_tensors[key] = tensor
        return key

    def walk(self, functional: Functional, alias: dict[int, int], prefix: str) -> list[int]:
        """Adds the nodes of `functional` whose inputs are mapped in `alias`.

        Args:
            functional: The graph model to walk.
            alias: id(KerasTensor of this graph) -> key in the flat graph; filled as we go.
            prefix: Name prefix for layers of a nested model ("outer/").

        Returns:
            The flat-graph keys of `functional.outputs`.
        """
        for node in _topological_nodes(functional):
            layer = node.operation
            in_tensors = node.input_tensors
            in_keys = [alias[id(t)] for t in in_tensors]
            name = f"{prefix}{layer.name}"
            if isinstance(layer, keras.Model) and is_graph_model(layer):
                inner = _as_functional(layer)
                if len(inner.inputs) != len(in_keys):
                    raise ValueError(
                        f"Nested model {name!r} is called with {len(in_keys)} inputs but "
                        f"declares {len(inner.inputs)}."
                    )
                inner_alias = {id(t): k for t, k in zip(inner.inputs, in_keys)}
                inner_out = self.walk(inner, inner_alias, prefix=f"{name}/")
                for t, k in zip(node.outputs, inner_out):
                    alias[id(t)] = k
                continue
            if name in self._names and not self.allow_shared:
                raise ValueError(
                    f"Layer {name!r} is called more than once (a shared layer). s2dnas_tf "
                    "splits each layer call into per-stage slices and needs every layer to "
                    "be called once."
                )
            self._names.add(name)
            index = len(self.nodes)
            shapes = self._call_shapes(node, in_tensors, in_keys)
            out_keys = [
                self.new_tensor(t, producer=index, shape=shape)
                for t, shape in zip(node.outputs, shapes)
            ]
            for t, k in zip(node.outputs, out_keys):
                alias[id(t)] = k
            kwargs = {
                k: v
                for k, v in node.arguments.kwargs.items()
                if not isinstance(v, keras.KerasTensor)
            }
            self.nodes.append(
                OpNode(
                    index,
                    layer,
                    name,
                    in_keys,
                    out_keys,
                    kwargs,
                    node.arguments,
                    [id(t) for t in in_tensors],
                )
            )
        return [alias[id(t)] for t in functional.outputs]

    def _call_shapes(self, node, in_tensors, in_keys) -> list[tuple]:
        """The output shapes of this call: the recorded ones, unless the call's inputs (in
        the flat graph) have other static shapes than the recorded inputs, as in a nested
        backbone built for any image size; then they are derived for these inputs."""
        actual = [self.tensors[k].shape for k in in_keys]
        if all(tuple(t.shape)[1:] == shape[1:] for t, shape in zip(in_tensors, actual)):
            return [tuple(t.shape) for t in node.outputs]
        specs = [
            keras.KerasTensor(shape, dtype=t.dtype) for t, shape in zip(in_tensors, actual)
        ]
        args, kwargs = node.arguments.fill_in({id(t): x for t, x in zip(in_tensors, specs)})
        outputs = keras.tree.flatten(node.operation.compute_output_spec(*args, **kwargs))
        return [tuple(x.shape) for x in outputs]


def _topological_nodes(functional: Functional) -> list:
    """The call nodes of `functional` from inputs to outputs, InputLayer nodes excluded."""
    input_ids = {id(t) for t in functional.inputs}
    order, done, in_progress = [], set(), set()
    # Iterative DFS (DenseNet-sized graphs would exceed Python's recursion limit).
    stack = [(t, False) for t in reversed(functional.outputs)]
    while stack:
        tensor, expanded = stack.pop()
        if id(tensor) in input_ids:
            continue
        operation, node_index, _ = _history(tensor)
        node = _inbound_node(operation, node_index)
        if id(node) in done:
            continue
        if expanded:
            in_progress.discard(id(node))
            done.add(id(node))
            if not node.is_input:
                order.append(node)
            continue
        if id(node) in in_progress:
            continue
        in_progress.add(id(node))
        stack.append((tensor, True))
        for t in reversed(node.input_tensors):
            stack.append((t, False))
    return order
