"""Layers that join tensors: merges (Add, Multiply, ...), Concatenate, and elementwise
`keras.ops` calls in a functional graph."""

from __future__ import annotations

import keras
import numpy as np

# The classes of `keras.ops` calls recorded in a functional graph are not exported; the rule
# is keyed by them (the public `keras.ops` function replays the call).
from keras.src.ops import nn as _ops_nn
from keras.src.ops import numpy as _ops_numpy

from s2dnas_tf.rules.base import (
    LayerRule,
    Piece,
    UnsupportedLayerError,
    check_same_channels,
    register_rule,
)


class _JoinRule(LayerRule):
    """A layer joining same-shaped slices elementwise: stage s's output holds the channels
    of the inputs it computes (`_present`: which, or None for nothing)."""

    def _present(self, node, stage: int, pieces: list) -> list | None:
        raise NotImplementedError

    def plan(self, node, inputs, ctx):
        out = []
        for stage in range(1, ctx.num_stages + 1):
            present = self._present(node, stage, [v[stage - 1] for v in inputs])
            out.append(None if present is None else present[0])
        return [out]


class MergeRule(_JoinRule):
    """Add / Multiply / Subtract / Average / Maximum / Minimum, stage by stage."""

    def check(self, node, graph):
        super().check(node, graph)

    def analyse(self, node, ana):
        for key in node.inputs:
            ana.union(node.inputs[0], key, node)
        ana.union(node.inputs[0], node.outputs[0], node)

    def _present(self, node, stage: int, pieces: list) -> list | None:
        """The inputs stage `stage` computes, or None when its output is nothing."""
        present = [p for p in pieces if p is not None]
        if not present:
            return None
        if len(present) < len(pieces):
            if isinstance(node.layer, keras.layers.Multiply):
                return None  # a factor of zeros
            if not isinstance(node.layer, keras.layers.Add):
                raise ValueError(
                    f"{node.name!r} ({type(node.layer).__name__}): stage {stage} computes "
                    "only some of its inputs; only Add and Multiply accept that."
                )
        return present

    def build(self, node, inputs, ctx):
        layer = node.layer
        out = []
        for stage in range(1, ctx.num_stages + 1):
            present = self._present(node, stage, [v[stage - 1] for v in inputs])
            if present is None:
                out.append(None)
                continue
            check_same_channels(node, stage, present)
            if len(present) == 1:
                out.append(present[0])
                continue
            new = ctx.clone(layer, ctx.name(node, stage))
            out.append(Piece(new([p.tensor for p in present]), present[0].idx))
        return [out]


class ScaledResidualRule(_JoinRule):
    """`inputs[0] + inputs[1] * scale` with a constant `scale` in the layer's config:
    keras.applications Inception-ResNet's `CustomScaleLayer`. Per stage like an Add: both
    inputs -> a copy of the layer; only the first -> it passes through; only the second ->
    a `Rescaling(scale)` of it."""

    def analyse(self, node, ana):
        for key in node.inputs:
            ana.union(node.inputs[0], key, node)
        ana.union(node.inputs[0], node.outputs[0], node)

    def check(self, node, graph):
        super().check(node, graph)
        if len(node.inputs) != 2:
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(node.layer).__name__}): expected 2 inputs "
                f"(shortcut, residual). Received: {len(node.inputs)}"
            )

    def _present(self, node, stage: int, pieces: list) -> list | None:
        present = [p for p in pieces if p is not None]
        return present or None

    def build(self, node, inputs, ctx):
        out = []
        for stage in range(1, ctx.num_stages + 1):
            shortcut, residual = (v[stage - 1] for v in inputs)
            present = self._present(node, stage, [shortcut, residual])
            if present is None:
                out.append(None)
                continue
            check_same_channels(node, stage, present)
            if residual is None:
                out.append(shortcut)
                continue
            if shortcut is None:
                scale = node.layer.get_config()["scale"]
                new = keras.layers.Rescaling(scale, name=ctx.name(node, stage))
                out.append(Piece(new(residual.tensor), residual.idx))
                continue
            new = ctx.clone(node.layer, ctx.name(node, stage))
            out.append(Piece(new([shortcut.tensor, residual.tensor]), shortcut.idx))
        return [out]


class ConcatenateRule(LayerRule):
    def check(self, node, graph):
        super().check(node, graph)
        rank = graph.tensors[node.outputs[0]].rank
        if node.layer.axis % rank != rank - 1:
            raise UnsupportedLayerError(
                f"{node.name!r} (Concatenate axis={node.layer.axis}): only concatenation along "
                "the channel axis (-1) is supported"
            )

    def analyse(self, node, ana):
        ana.mark_derived(node.outputs[0])

    def plan(self, node, inputs, ctx):
        offsets = np.cumsum([0] + [ctx.graph.tensors[k].channels for k in node.inputs])
        out = []
        for stage in range(1, ctx.num_stages + 1):
            present = [
                v[stage - 1] + off for v, off in zip(inputs, offsets) if v[stage - 1] is not None
            ]
            out.append(np.concatenate(present) if present else None)
        return [out]

    def build(self, node, inputs, ctx):
        offsets = np.cumsum([0] + [ctx.graph.tensors[k].channels for k in node.inputs])
        out = []
        for stage in range(1, ctx.num_stages + 1):
            present = [
                Piece(v[stage - 1].tensor, v[stage - 1].idx + off)
                for v, off in zip(inputs, offsets)
                if v[stage - 1] is not None
            ]
            if not present:
                out.append(None)
                continue
            if len(present) == 1:
                out.append(present[0])
                continue
            new = ctx.clone(node.layer, ctx.name(node, stage))
            out.append(
                Piece(new([p.tensor for p in present]), np.concatenate([p.idx for p in present]))
            )
        return [out]


class ElementwiseOpRule(_JoinRule):
    """`keras.ops` elementwise calls in a functional graph (`x + 3.0`, `x * gate`,
    `keras.ops.relu(x)`), as in keras.applications' MobileNetV3: replayed per stage through
    the public `keras.ops` function, with their constants. Two tensor operands are joined
    like a merge layer."""

    def __init__(self, function, zero_preserving: bool):
        self.function = function
        # f(0, c) == 0 (multiply, relu...): a stage computing nothing stays at nothing.
        self.zero_preserving = zero_preserving

    def check(self, node, graph):
        if len(node.inputs) not in (1, 2) or len(node.outputs) != 1:
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(node.layer).__name__}): keras.ops calls are supported "
                "with one or two tensor operands and one output"
            )
        shapes = [graph.tensors[k].shape for k in node.inputs]
        out = graph.tensors[node.outputs[0]]
        if any(len(sh) and sh[-1] not in (out.channels,) for sh in shapes):
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(node.layer).__name__}): operands with shapes {shapes} "
                "broadcast over the channel axis; only per-channel operations are supported"
            )

    def analyse(self, node, ana):
        for key in node.inputs:
            ana.union(node.inputs[0], key, node)
        ana.union(node.inputs[0], node.outputs[0], node)

    def _call(self, node, tensors):
        args, kwargs = node.filled_arguments(tensors)
        return self.function(*args, **kwargs)

    def build_shared(self, node, tensors, ctx):
        return self._call(node, tensors)

    def _present(self, node, stage: int, pieces: list) -> list | None:
        present = [p for p in pieces if p is not None]
        if len(present) < len(pieces):
            if not present or self.zero_preserving or len(pieces) == 1:
                return None
            raise ValueError(
                f"{node.name!r} ({type(node.layer).__name__}): stage {stage} computes only "
                "one of its operands; this architecture cannot be built."
            )
        return present

    def build(self, node, inputs, ctx):
        out = []
        for stage in range(1, ctx.num_stages + 1):
            present = self._present(node, stage, [v[stage - 1] for v in inputs])
            if present is None:
                out.append(None)
                continue
            check_same_channels(node, stage, present)
            y = self._call(node, [p.tensor for p in present])
            out.append(Piece(y, present[0].idx))
        return [out]


L = keras.layers
register_rule(L.Add, L.Multiply, L.Subtract, L.Average, L.Maximum, L.Minimum)(MergeRule())
register_rule(L.Concatenate)(ConcatenateRule())
del L

try:  # keras.applications' own layer class is not exported; keyed by its private path.
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer as _ScaleLayer
except ImportError:  # pragma: no cover - another Keras layout: Inception-ResNet is refused
    _ScaleLayer = None
if _ScaleLayer is not None:
    register_rule(_ScaleLayer)(ScaledResidualRule())

# keras.ops calls that are per-channel (elementwise); private classes, public functions.
for _cls, _fn, _zero in [
    (_ops_numpy.Add, keras.ops.add, False),
    (_ops_numpy.Subtract, keras.ops.subtract, False),
    (_ops_numpy.Multiply, keras.ops.multiply, True),
    (_ops_numpy.Divide, keras.ops.divide, True),
    (_ops_numpy.TrueDivide, keras.ops.true_divide, True),
    (_ops_numpy.Maximum, keras.ops.maximum, False),
    (_ops_numpy.Minimum, keras.ops.minimum, False),
    (_ops_numpy.Negative, keras.ops.negative, True),
    (_ops_numpy.Abs, keras.ops.abs, True),
    (_ops_nn.Relu, keras.ops.relu, True),
    (_ops_nn.Relu6, keras.ops.relu6, True),
    (_ops_nn.Sigmoid, keras.ops.sigmoid, False),
    (_ops_nn.HardSigmoid, keras.ops.hard_sigmoid, False),
    (_ops_nn.HardSilu, keras.ops.hard_silu, True),
    (_ops_nn.Silu, keras.ops.silu, True),
]:
    register_rule(_cls)(ElementwiseOpRule(_fn, _zero))
del _cls, _fn, _zero
