"""Walks a Keras 3 functional (or Sequential) model into a flat, topologically ordered graph.

This is the only module that touches Keras's private graph attributes (`_keras_history`,
`_inbound_nodes`, `Sequential._functional`); each use is commented. Everything downstream
(analysis, rewriting, FLOPs of transformed nets) works on the plain `Graph` built here.

Nested models (a functional or Sequential model used as a layer, e.g.
`keras.Sequential([keras.applications.ResNet50(...), Dense(10)])`) are inlined: their layers
appear in the flat graph with the outer layer's name as a prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

# `Functional` is not exported by Keras 3; it is the class `keras.Model(inputs, outputs)`
# returns, and the only way to tell a graph model from a subclassed one.
from keras.src.models.functional import Functional


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
        name: Unique name in the flat graph ("outer_inner" for inlined nested models).
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


def clone_layer(layer: keras.layers.Layer, name: str, **config) -> keras.layers.Layer:
    """A fresh, unbuilt copy of `layer` from its config, named `name`, with `config`'s
    entries overriding the original's (weights are not copied)."""
    cfg = layer.get_config()
    cfg.update(config)
    cfg["name"] = name
    return type(layer).from_config(cfg)


def replay(node: OpNode, inputs: list, operation: Any = None) -> list:
    """Calls `operation` (default: the node's own layer or keras.ops call) the way `node`
    was called, on new input tensors; always returns the list of outputs."""
    args, kwargs = node.filled_arguments(inputs)
    outputs = (operation or node.layer)(*args, **kwargs)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


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


def trace(model: keras.Model, single_output: bool = True) -> Graph:
    """Flattens `model` into a `Graph`.

    Args:
        model: A built Keras 3 functional or Sequential model with one input and (unless
            `single_output` is False, e.g. for a multi-stage net) one output.
        single_output: Refuse models with several outputs.

    Returns:
        The flat graph, nodes in topological order.

    Raises:
        TypeError: If `model` is not a functional/Sequential keras.Model.
        ValueError: If it is unbuilt or has several inputs or outputs.
    """
    functional = _as_functional(model)
    if len(functional.inputs) != 1 or (single_output and len(functional.outputs) != 1):
        raise ValueError(
            f"Model {model.name!r} must have exactly one input (the images) and one output "
            f"(the class scores). Received: {len(functional.inputs)} inputs, "
            f"{len(functional.outputs)} outputs."
        )
    builder = _GraphBuilder()
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

    def __init__(self):
        self.nodes: list[OpNode] = []
        self.tensors: dict[int, TensorInfo] = {}
        self.keras_tensors: dict[int, keras.KerasTensor] = {}
        self._next_key = 0
        self._names: set[str] = set()

    def new_tensor(self, tensor, producer: int | None = None) -> int:
        key = self._next_key
        self._next_key += 1
        self.tensors[key] = TensorInfo(key, tuple(tensor.shape), producer)
        self.keras_tensors[key] = tensor
        return key

    def walk(self, functional: Functional, alias: dict[int, int], prefix: str) -> list[int]:
        """Adds the nodes of `functional` whose inputs are mapped in `alias`.

        Args:
            functional: The graph model to walk.
            alias: id(KerasTensor of this graph) -> key in the flat graph; filled as we go.
            prefix: Name prefix for layers of a nested model.

        Returns:
            The flat-graph keys of `functional.outputs`.
        """
        for node in _topological_nodes(functional):
            layer = node.operation
            in_tensors = node.input_tensors
            in_keys = [alias[id(t)] for t in in_tensors]
            name = f"{prefix}{layer.name}"
            kwargs = {
                k: v
                for k, v in node.arguments.kwargs.items()
                if not isinstance(v, keras.KerasTensor)
            }
            if isinstance(layer, keras.Model):
                inner = _as_functional(layer)
                if len(inner.inputs) != len(in_keys):
                    raise ValueError(
                        f"Nested model {name!r} is called with {len(in_keys)} inputs but "
                        f"declares {len(inner.inputs)}."
                    )
                inner_alias = {id(t): k for t, k in zip(inner.inputs, in_keys)}
                inner_out = self.walk(inner, inner_alias, prefix=f"{name}_")
                for t, k in zip(node.outputs, inner_out):
                    alias[id(t)] = k
                continue
            if name in self._names:
                raise ValueError(
                    f"Layer {name!r} is called more than once (a shared layer). s2dnas_tf "
                    "splits each layer call into per-stage slices and needs every layer to "
                    "be called once."
                )
            self._names.add(name)
            index = len(self.nodes)
            out_keys = [self.new_tensor(t, producer=index) for t in node.outputs]
            for t, k in zip(node.outputs, out_keys):
                alias[id(t)] = k
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
