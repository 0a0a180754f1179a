"""Channel-mixing layers (Conv2D, Dense, SeparableConv2D): stage s computes its own output
channels from the input slices of the stages it may read (split + concat)."""

from __future__ import annotations

import keras
import numpy as np

from s2dnas_tf import conventions
from s2dnas_tf.rules.base import (
    LayerRule,
    Piece,
    Shared,
    UnsupportedLayerError,
    assign,
    concat_pieces,
    register_rule,
)
from s2dnas_tf.rules.channelwise import GROUPED_CONV_RULE


def _mixing_plan(node, value, ctx, out_idx_fn=None) -> list:
    """Stage s holds its allocated output channels, unless it sees no input at all."""
    out = []
    for stage in range(1, ctx.num_stages + 1):
        if out_idx_fn is not None:
            out_idx = np.asarray(out_idx_fn(stage))
        else:
            out_idx = ctx.allocated(node.outputs[0], stage)
        sees = isinstance(value, Shared) or any(
            value[r - 1] is not None for r in ctx.visible_stages(node, stage)
        )
        out.append(out_idx if len(out_idx) and sees else None)
    return out


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

    def plan(self, node, inputs, ctx):
        return [_mixing_plan(node, inputs[0], ctx)]

    def plan_head(self, node, value, ctx, num_classes: int) -> list:
        """`plan` of `build_head`: every stage's classifier gives all classes."""
        return _mixing_plan(node, value, ctx, lambda stage: np.arange(num_classes))

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
                source = concat_pieces(seen, ctx.name(node, stage, "_in"))
            size_key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
            new = ctx.clone(layer, ctx.name(node, stage), **{size_key: len(out_idx)}, **overrides)
            y = new(source.tensor)
            assign(new.kernel, kernel[..., source.idx, :][..., out_idx])
            if bias is not None:
                assign(new.bias, bias[out_idx])
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

    def plan(self, node, inputs, ctx):
        return [_mixing_plan(node, inputs[0], ctx)]

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
                    name=(
                        conventions.shared_layer_name(node.name, "_dw")
                        if shared
                        else ctx.name(node, stage, "_dw")
                    ),
                    trainable=layer.trainable,
                    dtype=layer.dtype_policy,
                )
                y = dw(piece.tensor)
                assign(dw.kernel, dw_kernel[:, :, piece.idx, :])
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
            source = concat_pieces(seen, ctx.name(node, stage, "_in"))
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
            assign(pw.kernel, pw_kernel[:, :, source.idx, :][..., out_idx])
            if bias is not None:
                assign(pw.bias, bias[out_idx])
            out.append(Piece(y, np.asarray(out_idx)))
        return [out]


class Conv2DRule(MixingRule):
    """Conv2D: channel-mixing when groups == 1, a grouped (channel-wise by group) conv else."""

    def resolve(self, layer):
        return GROUPED_CONV_RULE if layer.groups > 1 else self


register_rule(keras.layers.Conv2D)(Conv2DRule())
register_rule(keras.layers.Dense)(MixingRule())
register_rule(keras.layers.SeparableConv2D)(SeparableConvRule())
