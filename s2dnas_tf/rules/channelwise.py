"""Channel-wise layers: each stage's slice goes through its own copy of the layer, with the
per-channel weights of its channels (BatchNorm, activations, pooling, depthwise and grouped
convs, reshapes)."""

from __future__ import annotations

import keras
import numpy as np

from s2dnas_tf.models.preprocessing import InputPreprocessing
from s2dnas_tf.rules.base import (
    LayerRule,
    Piece,
    UnsupportedLayerError,
    assign,
    channels_in,
    register_rule,
    slice_last,
)


class ChannelwiseRule(LayerRule):
    """Layers acting on each channel independently: per-channel weights (and per-channel
    config values, e.g. Rescaling(scale=[...])) are sliced, everything else is copied."""

    config_channel_keys: tuple = ()

    def analyse(self, node, ana):
        ana.union(node.inputs[0], node.outputs[0], node)

    def output_idx(self, node, ctx, idx):
        return idx

    def layer_config(self, node, ctx, idx) -> dict:
        full = channels_in(node, ctx.graph)
        cfg = {}
        for key in self.config_channel_keys:
            value = node.layer.get_config().get(key)
            if value is not None and np.ndim(value) and np.shape(value)[-1] == full:
                cfg[key] = np.asarray(value)[..., idx].tolist()
        return cfg

    def plan(self, node, inputs, ctx):
        (value,) = inputs
        return [[None if idx is None else self.output_idx(node, ctx, idx) for idx in value]]

    def build(self, node, inputs, ctx):
        (value,) = inputs
        full = channels_in(node, ctx.graph)
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
                assign(dst, slice_last(keras.ops.convert_to_numpy(src), full, piece.idx))
            if hasattr(new, "finalize_state") and new.weights:
                new.finalize_state()  # Normalization derives mean/variance from its weights
            out.append(Piece(y, self.output_idx(node, ctx, piece.idx)))
        return [out]


class AxisChannelwiseRule(ChannelwiseRule):
    """BatchNormalization / LayerNormalization: only over the last (channel) axis.

    LayerNormalization over channels is not channel-wise in the original: its mean and
    variance run over all C channels. Split into stages, each stage's slice is normalised
    over the channels that slice holds (its own channels at that tensor, the ones a
    channel-wise layer of that stage sees), with the slice's gamma and beta. Why: a stage
    is a narrower network of its own channels, and this is the LayerNorm such a narrower
    network has; it needs no channel of another stage, so a stage never waits for a later
    one and, before its concat position, not for an earlier one either (block-diagonal,
    as for every other layer), and the stage's values stay one slice per tensor. With
    S = 1 it is the original layer exactly; with S > 1 the statistics differ from the
    original's (as every activation does), which fine-tuning absorbs. Normalising over
    stages 1..s instead would give an earlier stage's slice a different value for every
    later stage reading it. A slice of one channel normalises to its beta. The
    weight-sharing supernet computes all stages in one tensor and refuses LayerNorm.
    """

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
        c_in = channels_in(node, graph)
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

    def _stage_groups(self, node, ctx, stage: int, idx: np.ndarray):
        """(conv groups, output channel indices) of a stage's input slice `idx`."""
        c_in, c_out, groups = self._shape(node, ctx.graph)
        per_in, per_out = c_in // groups, c_out // groups
        conv_groups = idx[::per_in] // per_in
        expected = (conv_groups[:, None] * per_in + np.arange(per_in)).reshape(-1)
        if len(idx) % per_in or not np.array_equal(expected, idx):
            raise ValueError(
                f"{node.name!r}: stage {stage}'s input slice does not hold whole conv groups "
                f"of {per_in} channels; it cannot be split there."
            )
        return conv_groups, (conv_groups[:, None] * per_out + np.arange(per_out)).reshape(-1)

    def plan(self, node, inputs, ctx):
        (value,) = inputs
        return [
            [
                None if idx is None else self._stage_groups(node, ctx, stage, idx)[1]
                for stage, idx in enumerate(value, start=1)
            ]
        ]

    def build(self, node, inputs, ctx):
        (value,) = inputs
        layer = node.layer
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        out = []
        for stage in range(1, ctx.num_stages + 1):
            piece = value[stage - 1]
            if piece is None:
                out.append(None)
                continue
            conv_groups, out_idx = self._stage_groups(node, ctx, stage, piece.idx)
            if depthwise:
                new = ctx.clone(layer, ctx.name(node, stage))
                y = new(piece.tensor)
                assign(new.kernel, kernel[:, :, piece.idx, :])
            else:
                new = ctx.clone(
                    layer, ctx.name(node, stage), filters=len(out_idx), groups=len(conv_groups)
                )
                y = new(piece.tensor)
                assign(new.kernel, kernel[..., out_idx])
            if bias is not None:
                assign(new.bias, bias[out_idx])
            out.append(Piece(y, out_idx))
        return [out]


class ProjectionDimRule(ChannelwiseRule):
    """A per-channel layer whose config names its channel count `projection_dim` and whose
    weights have it as last axis: keras.applications ConvNeXt's `LayerScale`
    (x * gamma). Each stage's copy gets its slice's count and gamma entries."""

    def layer_config(self, node, ctx, idx):
        return {**super().layer_config(node, ctx, idx), "projection_dim": len(idx)}


GROUPED_CONV_RULE = GroupedConvRule()

L = keras.layers
register_rule(L.DepthwiseConv2D)(GROUPED_CONV_RULE)
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
del L

try:  # keras.applications' own layer classes are not exported; keyed by their private path.
    from keras.src.applications.convnext import LayerScale as _LayerScale
except ImportError:  # pragma: no cover - another Keras layout: ConvNeXt is then refused
    _LayerScale = None
if _LayerScale is not None:
    register_rule(_LayerScale)(ProjectionDimRule())


class InputOnlyRule(LayerRule):
    """Layers that only make sense on the input image (`InputPreprocessing`: its caffe mode
    reverses the channel order): computed once, shared by every stage; anywhere else the
    model is refused."""

    def analyse(self, node, ana):  # only reached when the input is not the image alone
        raise UnsupportedLayerError(
            f"{node.name!r} ({type(node.layer).__name__}) must read the input image (before "
            "any channel-mixing layer); s2dnas_tf cannot split it between stages."
        )


register_rule(InputPreprocessing)(InputOnlyRule())
