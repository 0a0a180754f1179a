"""Layer rules: how each Keras layer type is split into per-stage slices (DESIGN §2).

A rule answers three questions for one layer type:

- `check`: is this particular layer's configuration supported? (raise
  `UnsupportedLayerError` naming the layer and what is accepted);
- `analyse`: which of its tensors share a channel partition (`Analysis.union`), which start a
  new free unit (`mark_free`), which are derived from their inputs (`mark_derived`);
- `build`: given the per-stage slices of its inputs, build the per-stage layers with
  inherited (sliced) weights and return the per-stage slices of its output.

A *slice* (`Piece`) is a Keras tensor plus `idx`, the original channel indices it holds, in
order. A stage that computes nothing at some tensor has `None` there (it behaves as zeros).

Rules are looked up by exact layer class in a registry; `register_rule(SomeLayer)(MyRule())`
adds a type without touching the rewriter (see WORKSPACE.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import keras
import numpy as np


class UnsupportedLayerError(ValueError):
    """A layer (or its configuration) that s2dnas_tf cannot split."""


@dataclasses.dataclass
class Piece:
    """One stage's slice of a tensor: `tensor[..., k]` is original channel `idx[k]`."""

    tensor: keras.KerasTensor
    idx: np.ndarray


# A tensor's value while rebuilding: a list of S optional pieces (partitioned) or one full
# tensor (shared: computed from the image alone, visible to every stage).
@dataclasses.dataclass
class Shared:
    tensor: keras.KerasTensor


Value = "Shared | list[Piece | None]"


class BuildContext(Protocol):
    """What a rule may ask the rewriter (implemented in rewriter.py)."""

    num_stages: int
    graph: object  # graph.Graph of the original model

    def visible_stages(self, node, stage: int) -> list[int]:
        """Stages (1-based) whose slices stage `stage` reads in channel-mixing `node`."""

    def allocated(self, key: int, stage: int) -> np.ndarray:
        """Original channel indices of tensor `key` allocated to `stage` (a free unit)."""

    def clone(self, layer, name: str, **config) -> keras.layers.Layer:
        """A new layer of `layer`'s class and config, renamed, with `config` overrides."""

    def name(self, node, stage: int, suffix: str = "") -> str:
        """The new layer's name for `stage`."""


class LayerRule:
    """Base rule. `kind` is "mixing" for channel-mixing layers, "channelwise" otherwise."""

    kind = "channelwise"

    def check(self, node, graph) -> None:
        layer = node.layer
        if len(node.outputs) != 1:
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(layer).__name__}) has {len(node.outputs)} outputs; "
                "only single-output layers are supported"
            )
        fmt = getattr(layer, "data_format", "channels_last")
        if fmt not in (None, "channels_last"):
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(layer).__name__}) uses data_format={fmt!r}; only "
                "'channels_last' is supported"
            )

    def resolve(self, layer) -> "LayerRule":
        """The rule that applies to this layer instance (a class may need several)."""
        return self

    def analyse(self, node, ana) -> None:
        raise NotImplementedError

    def build(self, node, inputs: list, ctx: BuildContext) -> list:
        raise NotImplementedError

    def build_shared(self, node, tensors: list, ctx: BuildContext):
        """The layer once on full tensors computed from the image alone (e.g. the input
        Normalization): a copy of the layer with the same weights."""
        new = ctx.clone(node.layer, f"shared_{node.name}")
        y = new(*tensors, **node.call_kwargs)
        for src, dst in zip(node.layer.weights, new.weights):
            dst.assign(src)
        if hasattr(new, "finalize_state") and new.weights:
            new.finalize_state()
        return y


_RULES: dict[type, LayerRule] = {}


def register_rule(*layer_classes: type) -> Callable[[LayerRule], LayerRule]:
    """Registers a rule instance for exact layer classes; refuses duplicates.

    Usage: `register_rule(MyLayer)(MyRule())`.
    """

    def deco(rule: LayerRule) -> LayerRule:
        if not isinstance(rule, LayerRule):
            raise TypeError(
                f"register_rule expects a LayerRule instance. Received: {type(rule).__name__}"
            )
        for cls in layer_classes:
            if cls in _RULES:
                raise ValueError(
                    f"A rule for {cls.__name__} is already registered "
                    f"({type(_RULES[cls]).__name__}). Received a second one: "
                    f"{type(rule).__name__}"
                )
            _RULES[cls] = rule
        return rule

    return deco


def rule_for(layer) -> LayerRule:
    """The registered rule for `layer`'s exact class.

    Raises:
        UnsupportedLayerError: If none is registered.
    """
    rule = _RULES.get(type(layer))
    if rule is None:
        what = type(layer).__module__ + "." + type(layer).__name__
        hint = ""
        if isinstance(layer, keras.layers.Lambda):
            hint = " (a Lambda's channel semantics are unknown)"
        elif not isinstance(layer, keras.layers.Layer):
            hint = " (a keras.ops call in the functional graph; use the keras.layers equivalent)"
        raise UnsupportedLayerError(f"{layer.name!r} of class {what} has no rule{hint}")
    return rule.resolve(layer)


def supported_layer_names() -> list[str]:
    return sorted({cls.__name__ for cls in _RULES})


def is_classifier_layer(layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


# --- helpers --------------------------------------------------------------------------------


def _slice_last(array: np.ndarray, full: int, idx: np.ndarray) -> np.ndarray:
    return array[..., idx] if array.ndim and array.shape[-1] == full else array


def _assign(variable, value) -> None:
    if tuple(variable.shape) != tuple(np.shape(value)):
        raise AssertionError(
            f"internal: cannot assign {np.shape(value)} to {variable.path} {variable.shape}"
        )
    variable.assign(np.asarray(value, dtype=variable.dtype))


def _concat(pieces: list[Piece], name: str) -> Piece:
    if len(pieces) == 1:
        return pieces[0]
    tensor = keras.layers.Concatenate(axis=-1, name=name)([p.tensor for p in pieces])
    return Piece(tensor, np.concatenate([p.idx for p in pieces]))


def _check_same_channels(node, stage: int, pieces: list) -> None:
    """Elementwise-joined slices of one stage must hold the same channels, in order."""
    for p in pieces[1:]:
        if not np.array_equal(p.idx, pieces[0].idx):
            raise ValueError(
                f"{node.name!r}: stage {stage}'s inputs hold different channels; this "
                "architecture cannot be built."
            )


def _channels_in(node, graph) -> int:
    return graph.tensors[node.inputs[0]].channels


# --- channel-mixing layers --------------------------------------------------------------------


class MixingRule(LayerRule):
    """Conv2D (groups=1) and Dense: stage s computes its own output channels from the input
    slices of the stages it can see (its own, or 1..s past its concat position)."""

    kind = "mixing"

    def check(self, node, graph):
        super().check(node, graph)
        layer = node.layer
        if getattr(layer, "lora_rank", None):
            raise UnsupportedLayerError(f"{node.name!r}: LoRA-enabled layers are not supported")

    def analyse(self, node, ana):
        ana.mark_free(node.outputs[0])

    def build(self, node, inputs, ctx, out_idx_fn=None, **overrides):
        (value,) = inputs
        layer = node.layer
        full_in = ctx.graph.tensors[node.inputs[0]].channels
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        out = []
        for stage in range(1, ctx.num_stages + 1):
            if out_idx_fn is not None:
                out_idx = out_idx_fn(stage)
            else:
                out_idx = ctx.allocated(node.outputs[0], stage)
            if len(out_idx) == 0:
                out.append(None)
                continue
            if isinstance(value, Shared):
                source = Piece(value.tensor, np.arange(full_in))
            else:
                seen = [value[r - 1] for r in ctx.visible_stages(node, stage)]
                seen = [p for p in seen if p is not None]
                if not seen:
                    out.append(None)
                    continue
                source = _concat(seen, ctx.name(node, stage, "_in"))
            size_key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
            new = ctx.clone(layer, ctx.name(node, stage), **{size_key: len(out_idx)}, **overrides)
            y = new(source.tensor)
            _assign(new.kernel, kernel[..., source.idx, :][..., out_idx])
            if bias is not None:
                _assign(new.bias, bias[out_idx])
            out.append(Piece(y, np.asarray(out_idx)))
        return [out]

    def build_head(self, node, value, ctx, num_classes: int):
        """Each stage's classifier over everything it can see, all classes out, no softmax."""
        return self.build(
            node,
            [value],
            ctx,
            out_idx_fn=lambda stage: np.arange(num_classes),
            activation="linear",
        )[0]


class SeparableConvRule(LayerRule):
    """SeparableConv2D = a per-stage depthwise conv, then a channel-mixing pointwise conv."""

    kind = "mixing"

    def analyse(self, node, ana):
        ana.mark_free(node.outputs[0])

    def build(self, node, inputs, ctx):
        (value,) = inputs
        layer = node.layer
        full_in = ctx.graph.tensors[node.inputs[0]].channels
        mult = layer.depth_multiplier
        dw_kernel = keras.ops.convert_to_numpy(layer.depthwise_kernel)
        pw_kernel = keras.ops.convert_to_numpy(layer.pointwise_kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        cfg = layer.get_config()
        depthwise_cache: dict[int, Piece] = {}

        def depthwise(stage: int, piece: Piece, shared: bool) -> Piece:
            if stage not in depthwise_cache:
                dw = keras.layers.DepthwiseConv2D(
                    kernel_size=cfg["kernel_size"],
                    strides=cfg["strides"],
                    padding=cfg["padding"],
                    depth_multiplier=mult,
                    dilation_rate=cfg["dilation_rate"],
                    use_bias=False,
                    name=ctx.name(node, stage, "_dw") if not shared else f"shared_{node.name}_dw",
                    trainable=layer.trainable,
                    dtype=layer.dtype_policy,
                )
                y = dw(piece.tensor)
                _assign(dw.kernel, dw_kernel[:, :, piece.idx, :])
                idx = (piece.idx[:, None] * mult + np.arange(mult)[None, :]).reshape(-1)
                depthwise_cache[stage] = Piece(y, idx)
            return depthwise_cache[stage]

        out = []
        for stage in range(1, ctx.num_stages + 1):
            out_idx = ctx.allocated(node.outputs[0], stage)
            if len(out_idx) == 0:
                out.append(None)
                continue
            if isinstance(value, Shared):
                seen = [depthwise(0, Piece(value.tensor, np.arange(full_in)), True)]
            else:
                seen = [
                    depthwise(r, value[r - 1], False)
                    for r in ctx.visible_stages(node, stage)
                    if value[r - 1] is not None
                ]
            if not seen:
                out.append(None)
                continue
            source = _concat(seen, ctx.name(node, stage, "_in"))
            pw = keras.layers.Conv2D(
                filters=len(out_idx),
                kernel_size=1,
                use_bias=bias is not None,
                activation=cfg["activation"],
                name=ctx.name(node, stage, "_pw"),
                trainable=layer.trainable,
                dtype=layer.dtype_policy,
            )
            y = pw(source.tensor)
            _assign(pw.kernel, pw_kernel[:, :, source.idx, :][..., out_idx])
            if bias is not None:
                _assign(pw.bias, bias[out_idx])
            out.append(Piece(y, np.asarray(out_idx)))
        return [out]


# --- channel-wise layers ----------------------------------------------------------------------


class ChannelwiseRule(LayerRule):
    """Layers acting on each channel independently: per-channel weights (and per-channel
    config values, e.g. Rescaling(scale=[...])) are sliced, everything else is copied."""

    config_channel_keys: tuple = ()

    def analyse(self, node, ana):
        ana.union(node.inputs[0], node.outputs[0], node)

    def output_idx(self, node, ctx, idx):
        return idx

    def layer_config(self, node, ctx, idx) -> dict:
        full = _channels_in(node, ctx.graph)
        cfg = {}
        for key in self.config_channel_keys:
            value = node.layer.get_config().get(key)
            if value is not None and np.ndim(value) and np.shape(value)[-1] == full:
                cfg[key] = np.asarray(value)[..., idx].tolist()
        return cfg

    def build(self, node, inputs, ctx):
        (value,) = inputs
        full = _channels_in(node, ctx.graph)
        out = []
        for stage in range(1, ctx.num_stages + 1):
            piece = value[stage - 1]
            if piece is None:
                out.append(None)
                continue
            new = ctx.clone(
                node.layer, ctx.name(node, stage), **self.layer_config(node, ctx, piece.idx)
            )
            y = new(piece.tensor, **node.call_kwargs)
            for src, dst in zip(node.layer.weights, new.weights):
                _assign(dst, _slice_last(keras.ops.convert_to_numpy(src), full, piece.idx))
            if hasattr(new, "finalize_state") and new.weights:
                new.finalize_state()  # Normalization derives mean/variance from its weights
            out.append(Piece(y, self.output_idx(node, ctx, piece.idx)))
        return [out]


class AxisChannelwiseRule(ChannelwiseRule):
    """BatchNormalization / LayerNormalization: only over the last (channel) axis."""

    def check(self, node, graph):
        super().check(node, graph)
        rank = graph.tensors[node.inputs[0]].rank
        axis = node.layer.axis
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        if [a % rank for a in axes] != [rank - 1]:
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(node.layer).__name__}) normalizes over axis={axis!r}; "
                "only the channel axis (-1) is supported"
            )


class ActivationRule(ChannelwiseRule):
    def check(self, node, graph):
        super().check(node, graph)
        act = getattr(node.layer, "activation", None)
        name = getattr(act, "__name__", "")
        if isinstance(node.layer, keras.layers.Softmax) or name in ("softmax", "log_softmax"):
            raise UnsupportedLayerError(
                f"{node.name!r}: a softmax couples all channels; it is only supported as the "
                "model's final layer, after the classifier"
            )


class ReshapeRule(ChannelwiseRule):
    """Reshape that keeps the channel axis last and only adds/removes singleton dims
    (e.g. the (C,) -> (1, 1, C) of a squeeze-excite block)."""

    def check(self, node, graph):
        super().check(node, graph)
        src = graph.tensors[node.inputs[0]].shape[1:]
        dst = graph.tensors[node.outputs[0]].shape[1:]
        ok = (
            src[-1] == dst[-1]
            and int(np.prod([d for d in src[:-1]], dtype=np.int64)) == 1
            and int(np.prod([d for d in dst[:-1]], dtype=np.int64)) == 1
        )
        if not ok:
            raise UnsupportedLayerError(
                f"{node.name!r} (Reshape {tuple(src)} -> {tuple(dst)}): only reshapes that keep "
                "the channel axis last and add or remove size-1 dims are supported"
            )

    def layer_config(self, node, ctx, idx):
        target = tuple(node.layer.target_shape)
        return {"target_shape": target[:-1] + (len(idx),)}


class FlattenRule(ChannelwiseRule):
    """Flatten of (H, W, C): channel c at position p becomes feature p*C + c."""

    def check(self, node, graph):
        super().check(node, graph)

    def analyse(self, node, ana):
        spatial = ana.graph.tensors[node.inputs[0]].shape[1:-1]
        if int(np.prod(spatial, dtype=np.int64)) == 1:
            ana.union(node.inputs[0], node.outputs[0], node)
        else:
            ana.mark_derived(node.outputs[0])

    def output_idx(self, node, ctx, idx):
        shape = ctx.graph.tensors[node.inputs[0]].shape[1:]
        positions = int(np.prod(shape[:-1], dtype=np.int64))
        return (np.arange(positions)[:, None] * shape[-1] + idx[None, :]).reshape(-1)


class GroupedConvRule(ChannelwiseRule):
    """DepthwiseConv2D, and Conv2D with groups > 1: each conv group only reads its own input
    channels, so a stage keeps the whole conv groups its slice holds (partitions of the input
    are aligned to whole groups)."""

    def _shape(self, node, graph):
        layer = node.layer
        c_in = _channels_in(node, graph)
        c_out = graph.tensors[node.outputs[0]].channels
        groups = c_in if isinstance(layer, keras.layers.DepthwiseConv2D) else layer.groups
        return c_in, c_out, groups

    def analyse(self, node, ana):
        c_in, c_out, groups = self._shape(node, ana.graph)
        ana.require_quantum(node.inputs[0], c_in // groups)
        if c_in == c_out:
            ana.union(node.inputs[0], node.outputs[0], node)
            ana.require_quantum(node.outputs[0], c_out // groups)
        else:
            ana.mark_derived(node.outputs[0])

    def build(self, node, inputs, ctx):
        (value,) = inputs
        layer = node.layer
        c_in, c_out, groups = self._shape(node, ctx.graph)
        per_in, per_out = c_in // groups, c_out // groups
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        out = []
        for stage in range(1, ctx.num_stages + 1):
            piece = value[stage - 1]
            if piece is None:
                out.append(None)
                continue
            conv_groups = piece.idx[::per_in] // per_in
            expected = (conv_groups[:, None] * per_in + np.arange(per_in)).reshape(-1)
            if len(piece.idx) % per_in or not np.array_equal(expected, piece.idx):
                raise ValueError(
                    f"{node.name!r}: stage {stage}'s input slice does not hold whole conv groups "
                    f"of {per_in} channels; it cannot be split there."
                )
            out_idx = (conv_groups[:, None] * per_out + np.arange(per_out)).reshape(-1)
            if depthwise:
                new = ctx.clone(layer, ctx.name(node, stage))
                y = new(piece.tensor)
                _assign(new.kernel, kernel[:, :, piece.idx, :])
            else:
                new = ctx.clone(
                    layer, ctx.name(node, stage), filters=len(out_idx), groups=len(conv_groups)
                )
                y = new(piece.tensor)
                _assign(new.kernel, kernel[..., out_idx])
            if bias is not None:
                _assign(new.bias, bias[out_idx])
            out.append(Piece(y, out_idx))
        return [out]


# --- merges -----------------------------------------------------------------------------------


class MergeRule(LayerRule):
    """Add / Multiply / Subtract / Average / Maximum / Minimum, stage by stage."""

    def check(self, node, graph):
        super().check(node, graph)

    def analyse(self, node, ana):
        for key in node.inputs:
            ana.union(node.inputs[0], key, node)
        ana.union(node.inputs[0], node.outputs[0], node)

    def build(self, node, inputs, ctx):
        layer = node.layer
        out = []
        for stage in range(1, ctx.num_stages + 1):
            pieces = [v[stage - 1] for v in inputs]
            present = [p for p in pieces if p is not None]
            if not present:
                out.append(None)
                continue
            if len(present) < len(pieces):
                if isinstance(layer, keras.layers.Multiply):
                    out.append(None)  # a factor of zeros
                    continue
                if not isinstance(layer, keras.layers.Add):
                    raise ValueError(
                        f"{node.name!r} ({type(layer).__name__}): stage {stage} computes only "
                        "some of its inputs; only Add and Multiply accept that."
                    )
            _check_same_channels(node, stage, present)
            if len(present) == 1:
                out.append(present[0])
                continue
            new = ctx.clone(layer, ctx.name(node, stage))
            out.append(Piece(new([p.tensor for p in present]), present[0].idx))
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


class ElementwiseOpRule(LayerRule):
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

    def build(self, node, inputs, ctx):
        out = []
        for stage in range(1, ctx.num_stages + 1):
            pieces = [v[stage - 1] for v in inputs]
            present = [p for p in pieces if p is not None]
            if len(present) < len(pieces):
                if not present or self.zero_preserving or len(pieces) == 1:
                    out.append(None)
                    continue
                raise ValueError(
                    f"{node.name!r} ({type(node.layer).__name__}): stage {stage} computes only "
                    "one of its operands; this architecture cannot be built."
                )
            _check_same_channels(node, stage, present)
            y = self._call(node, [p.tensor for p in present])
            out.append(Piece(y, present[0].idx))
        return [out]


class Conv2DRule(MixingRule):
    """Conv2D: channel-mixing when groups == 1, a grouped (channel-wise by group) conv else."""

    def resolve(self, layer):
        return _GROUPED if layer.groups > 1 else self


_GROUPED = GroupedConvRule()

# --- the registry -----------------------------------------------------------------------------

L = keras.layers
register_rule(L.Conv2D)(Conv2DRule())
register_rule(L.Dense)(MixingRule())
register_rule(L.SeparableConv2D)(SeparableConvRule())
register_rule(L.DepthwiseConv2D)(_GROUPED)
register_rule(L.BatchNormalization, L.LayerNormalization)(AxisChannelwiseRule())
register_rule(L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax)(ActivationRule())
register_rule(
    L.MaxPooling2D,
    L.AveragePooling2D,
    L.GlobalAveragePooling2D,
    L.GlobalMaxPooling2D,
    L.ZeroPadding2D,
    L.Cropping2D,
    L.UpSampling2D,
    L.Dropout,
    L.SpatialDropout2D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.Identity,
)(ChannelwiseRule())
_config_sliced = ChannelwiseRule()
_config_sliced.config_channel_keys = ("scale", "offset", "mean", "variance")
register_rule(L.Rescaling, L.Normalization)(_config_sliced)
register_rule(L.Reshape)(ReshapeRule())
register_rule(L.Flatten)(FlattenRule())
register_rule(L.Add, L.Multiply, L.Subtract, L.Average, L.Maximum, L.Minimum)(MergeRule())
register_rule(L.Concatenate)(ConcatenateRule())
del L

# keras.ops calls that are per-channel (elementwise); private classes, public functions.
from keras.src.ops import nn as _ops_nn  # noqa: E402
from keras.src.ops import numpy as _ops_numpy  # noqa: E402

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
