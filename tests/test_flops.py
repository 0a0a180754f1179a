"""Tests for `s2dnas_tf.flops`: hand-computed MACs, TF's profiler, published figures."""

from __future__ import annotations

from collections.abc import Callable

import keras
import pytest
import tensorflow as tf
from keras import layers

from s2dnas_tf.flops import count_flops, flops_by_layer, layer_flops, uncounted_layers

# --------------------------------------------------------------------------------------
# Helpers.


def _one_layer_model(layer: layers.Layer, input_shape: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def _cifar_resnet(depth: int, num_classes: int = 10) -> keras.Model:
    """The CIFAR ResNet of He et al. (2016), option-B (1x1 projection) shortcuts."""
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            y = layers.Conv2D(filters, 3, strides, padding="same", use_bias=False)(x)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = layers.BatchNormalization()(y)
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides, use_bias=False)(x)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name=f"resnet{depth}")


# Op types whose FLOPs the profiler reports for the layers the counter counts. Conv1D /
# DepthwiseConv1D / SeparableConv1D lower to the 2D ops on an expanded axis, Dense to
# MatMul (Keras reshapes a rank > 2 input to 2D first), SeparableConv2D to
# DepthwiseConv2dNative + a 1x1 Conv2D. BatchMatMul* is listed in case a Dense on a
# rank > 2 input lowers to it on another TF version; it does not occur in TF 2.21.
_PROFILED_OP_TYPES = (
    "Conv2D",
    "Conv3D",
    "DepthwiseConv2dNative",
    "MatMul",
    "BatchMatMul",
    "BatchMatMulV2",
    "BatchMatMulV3",
)
_CALL_OP_TYPES = ("PartitionedCall", "StatefulPartitionedCall")


def _profiler_flops(model: keras.Model, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one sample per TensorFlow's profiler (2 FLOPs per MAC), batch 1.

    Quirks of `tf.compat.v1.profiler` in TF 2.21 that this works around:
    - `float_operation()` counts every op with a registered "flops" statistic
      (BiasAdd, Add, Mul, FusedBatchNorm's pieces, ...), so accounting is restricted
      to the op types the counter's convention counts (`account_type_regexes`).
    - The profiler does not descend into function calls. Keras runs a grouped
      convolution (`groups > 1`) in a `tf.function(jit_compile=True)` (TF's grouped
      conv is broken on CPU), which appears as one StatefulPartitionedCall; its body is
      rebuilt with `function_def_to_graph` from the call's input shapes and profiled
      too. That needs the graph frozen first: in the unfrozen body the kernel is a
      captured resource variable whose ReadVariableOp has no static shape, and the
      profiler skips it ("ops no flops stats due to incomplete shapes"). Freezing
      turns the variables into constant inputs with known shapes.
    - Freezing loses the static output shapes of the call ops (a call op has no
      shape function), and with them every shape downstream of a grouped conv. The
      shapes the trace knew are put back as `_output_shapes` attributes, which
      `import_graph_def` honours. (The "1 ops no flops stats" line the profiler may
      still print is about a call op itself, which has no flops statistic.)
    - A dilated convolution is lowered through SpaceToBatchND, which pads each
      spatial size up to a multiple of the dilation rate; the profiler then counts
      the padded positions (e.g. a 7x7 'same' conv with dilation 2 counts as 8x8).
      The tests use spatial sizes divisible by the dilation rate.
    """
    # Private TF modules, acceptable in a test helper; the library never imports them.
    from tensorflow.python.framework import convert_to_constants
    from tensorflow.python.framework import function_def_to_graph

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["account_type_regexes"] = [f"^{t}$" for t in _PROFILED_OP_TYPES]
    options["output"] = "none"  # No per-op table on stdout.

    def profile(graph: tf.Graph, library: dict) -> int:
        total = tf.compat.v1.profiler.profile(graph=graph, options=options)
        total = total.total_float_ops
        for op in graph.get_operations():
            if op.type in _CALL_OP_TYPES:
                body = function_def_to_graph.function_def_to_graph(
                    library[op.get_attr("f").name],
                    input_shapes=[t.shape for t in op.inputs],
                )
                total += profile(body, library)
        return total

    traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32)
    )
    _, graph_def = convert_to_constants.convert_variables_to_constants_v2_as_graph(
        traced
    )
    traced_ops = {op.name: op for op in traced.graph.get_operations()}
    for node in graph_def.node:  # Freezing keeps the node names.
        if node.op in _CALL_OP_TYPES:
            output_shapes = node.attr["_output_shapes"].list.shape
            del output_shapes[:]
            traced_outputs = traced_ops[node.name].outputs
            output_shapes.extend(t.shape.as_proto() for t in traced_outputs)
    frozen = tf.Graph()
    with frozen.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    library = {f.signature.name: f for f in graph_def.library.function}
    return profile(frozen, library)


# --------------------------------------------------------------------------------------
# 1. Hand-computed MACs.


@pytest.mark.parametrize(
    "make_layer, input_shape, expected_macs",
    [
        # 9x9 -> 5x5 (ceil(9 / 2)) positions x 8 out x 3*3 taps x 4 in.
        pytest.param(
            lambda: layers.Conv2D(8, 3, strides=2, padding="same"),
            (9, 9, 4),
            25 * 8 * 9 * 4,
            id="conv2d_stride2_same",
        ),
        # Dilation 2: a 5x5 receptive field, 10x10 -> 6x6 'valid'.
        pytest.param(
            lambda: layers.Conv2D(6, 3, dilation_rate=2),
            (10, 10, 4),
            36 * 6 * 9 * 4,
            id="conv2d_dilation2",
        ),
        # groups=2: each output channel reads 4 / 2 input channels; 8x8 -> 6x6.
        pytest.param(
            lambda: layers.Conv2D(6, 3, groups=2),
            (8, 8, 4),
            36 * 6 * 9 * 2,
            id="conv2d_groups2",
        ),
        pytest.param(
            lambda: layers.Conv2D(6, 3, data_format="channels_first"),
            (4, 8, 8),
            36 * 6 * 9 * 4,
            id="conv2d_channels_first",
        ),
        # 4 in x 2 = 8 depthwise channels at 8x8 ('same'), 3*3 taps each.
        pytest.param(
            lambda: layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
            (8, 8, 4),
            64 * 8 * 9,
            id="depthwise2d_multiplier2",
        ),
        # Depthwise 8x8 -> 6x6 on 4 channels, then 1x1 from 4 to 10 channels.
        pytest.param(
            lambda: layers.SeparableConv2D(10, 3),
            (8, 8, 4),
            36 * 4 * 9 + 36 * 4 * 10,
            id="separable2d",
        ),
        pytest.param(
            lambda: layers.Dense(5),
            (7,),
            7 * 5,
            id="dense_rank2",
        ),
        # Rank 3: the Dense is applied at each of the 3 positions.
        pytest.param(
            lambda: layers.Dense(5),
            (3, 7),
            3 * 7 * 5,
            id="dense_rank3",
        ),
        pytest.param(
            lambda: layers.Conv1D(6, 3, strides=2, padding="same"),
            (16, 4),
            8 * 6 * 3 * 4,
            id="conv1d",
        ),
        pytest.param(
            lambda: layers.Conv3D(5, 3, strides=2, padding="same"),
            (6, 6, 6, 4),
            27 * 5 * 27 * 4,
            id="conv3d",
        ),
        pytest.param(
            lambda: layers.DepthwiseConv1D(3, depth_multiplier=2),
            (8, 4),
            6 * 8 * 3,
            id="depthwise1d",
        ),
        pytest.param(
            lambda: layers.SeparableConv1D(5, 3),
            (8, 4),
            6 * 4 * 3 + 6 * 4 * 5,
            id="separable1d",
        ),
    ],
)
def test_single_layer_macs(
    make_layer: Callable[[], layers.Layer],
    input_shape: tuple[int, ...],
    expected_macs: int,
) -> None:
    layer = make_layer()
    model = _one_layer_model(layer, input_shape)
    assert flops_by_layer(model) == {layer.name: expected_macs}
    assert count_flops(model) == expected_macs
    assert uncounted_layers(model) == []
    # layer_flops on its own; the batch dimension is ignored, None or not.
    output_shape = tuple(model.outputs[0].shape)
    assert layer_flops(layer, (None, *input_shape), output_shape) == expected_macs
    batched = layer_flops(layer, (32, *input_shape), (32, *output_shape[1:]))
    assert batched == expected_macs


def test_layer_flops_is_zero_for_uncounted_and_unknown_layers() -> None:
    image = (None, 4, 4, 3)
    assert layer_flops(layers.BatchNormalization(), image, image) == 0
    assert layer_flops(layers.ReLU(), image, image) == 0
    assert layer_flops(layers.Add(), [(None, 3), (None, 3)], (None, 3)) == 0

    class Unknown(layers.Layer):
        pass

    assert layer_flops(Unknown(), (None, 3), (None, 3)) == 0


def test_layer_flops_refuses_an_unknown_dimension_it_depends_on() -> None:
    conv = layers.Conv2D(4, 3)
    with pytest.raises(ValueError, match="unknown"):
        layer_flops(conv, (None, None, None, 3), (None, None, None, 4))
    with pytest.raises(ValueError, match="one shape"):
        layer_flops(layers.Dense(3), [(None, 3), (None, 3)], (None, 3))


def test_sequential_model() -> None:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, name="conv"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(name="relu"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(10, name="logits"),
        ]
    )
    assert flops_by_layer(model) == {
        "conv": 36 * 4 * 9 * 3,
        "bn": 0,
        "relu": 0,
        "pool": 0,
        "logits": 4 * 10,
    }
    assert count_flops(model) == 36 * 4 * 9 * 3 + 4 * 10
    assert uncounted_layers(model) == ["bn"]


def test_sequential_model_built_with_build() -> None:
    model = keras.Sequential([layers.Dense(3, name="a"), layers.Dense(2, name="b")])
    model.build((None, 5))
    assert flops_by_layer(model) == {"a": 5 * 3, "b": 3 * 2}


def test_nested_models_are_expanded_and_shared_calls_counted_per_call() -> None:
    block_inputs = keras.Input((8, 8, 4))
    block_outputs = layers.Conv2D(4, 3, padding="same", name="conv")(block_inputs)
    block_outputs = layers.BatchNormalization(name="bn")(block_outputs)
    block = keras.Model(block_inputs, block_outputs, name="block")
    head = keras.Sequential(
        [keras.Input((4,)), layers.Dense(10, name="dense")], name="head"
    )

    inputs = keras.Input((8, 8, 4))
    x = block(block(inputs))  # The nested model is called twice.
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = head(x)
    model = keras.Model(inputs, logits)

    conv_macs = 64 * 4 * 9 * 4
    assert flops_by_layer(model) == {
        "block/conv": 2 * conv_macs,
        "block/bn": 0,
        "pool": 0,
        "head/dense": 4 * 10,
    }
    assert count_flops(model) == 2 * conv_macs + 40
    assert uncounted_layers(model) == ["block/bn"]


def test_shared_layer_counted_per_call() -> None:
    left, right = keras.Input((6,)), keras.Input((6,))
    shared = layers.Dense(3, name="shared")
    outputs = layers.Concatenate(name="concat")([shared(left), shared(right)])
    model = keras.Model([left, right], outputs)
    assert flops_by_layer(model) == {"shared": 2 * 6 * 3, "concat": 0}


def test_nested_model_with_unknown_spatial_size_takes_the_outer_shape() -> None:
    # A backbone built for any image size, called on 8x8 images.
    backbone_inputs = keras.Input((None, None, 3))
    backbone_outputs = layers.Conv2D(4, 3, strides=2, padding="same", name="conv")(
        backbone_inputs
    )
    backbone = keras.Model(backbone_inputs, backbone_outputs, name="backbone")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, backbone(inputs))
    assert flops_by_layer(model) == {"backbone/conv": 16 * 4 * 9 * 3}
    with pytest.raises(ValueError, match="static input shape"):
        count_flops(backbone)


def test_uncounted_layers_lists_weighted_and_unknown_layers_only() -> None:
    class Scale(layers.Layer):  # A class the counter does not know, no weights.
        def call(self, x):
            return 2.0 * x

    class Head(keras.Model):  # A subclassed model: no graph to expand.
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="act")(x)
    x = layers.Conv2DTranspose(4, 3, name="deconv")(x)
    x = Scale(name="scale")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(2, name="dense")(x)
    model = keras.Model(inputs, Head(name="head")(x))
    assert uncounted_layers(model) == ["bn", "deconv", "scale", "head"]
    assert set(flops_by_layer(model)) == {
        "conv", "bn", "act", "deconv", "scale", "pool", "flat", "dense", "head"
    }  # fmt: skip
    assert flops_by_layer(model)["head"] == 0


def test_invalid_models_raise_type_error() -> None:
    with pytest.raises(TypeError, match="keras.Model"):
        count_flops(layers.Dense(3))
    with pytest.raises(TypeError, match="built"):
        count_flops(keras.Sequential([layers.Dense(3)]))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(tf.zeros((1, 4)))
    with pytest.raises(TypeError, match="subclassed"):
        flops_by_layer(subclassed)
    with pytest.raises(TypeError, match="subclassed"):
        uncounted_layers(subclassed)


# --------------------------------------------------------------------------------------
# 2. Agreement with TensorFlow's profiler (2 FLOPs per MAC).


def _conv_mix() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = layers.Conv2D(8, 3, groups=4, padding="same")(x)
    x = layers.Conv2D(8, 3, dilation_rate=2, padding="same")(x)  # 8x8: divisible by 2.
    x = layers.SeparableConv2D(12, 3, strides=2, padding="same")(x)
    x = layers.Dense(6)(x)  # On a rank-4 tensor.
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x), name="conv_mix")


def _branchy() -> keras.Model:
    inputs = keras.Input((12, 12, 4))
    a = layers.Conv2D(6, 1)(inputs)
    b = layers.SeparableConv2D(6, 5, padding="same", depth_multiplier=2)(inputs)
    x = layers.Add()([a, b])
    x = layers.Conv2D(6, 3, strides=3)(x)
    x = layers.Reshape((16, 6))(x)
    x = layers.Dense(5)(x)  # On a rank-3 tensor.
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(3)(x), name="branchy")


def _sequence_mix() -> keras.Model:
    inputs = keras.Input((16, 4))
    x = layers.Conv1D(6, 3, strides=2, padding="same")(inputs)
    x = layers.DepthwiseConv1D(3, depth_multiplier=2, padding="same")(x)
    x = layers.SeparableConv1D(6, 3)(x)
    x = layers.Conv1D(4, 3, groups=2, dilation_rate=2, padding="same")(x)
    return keras.Model(inputs, layers.Dense(3)(x), name="sequence_mix")


@pytest.mark.parametrize(
    "build_model",
    [_conv_mix, _branchy, _sequence_mix, lambda: _cifar_resnet(20)],
    ids=["conv_mix", "branchy", "sequence_mix", "resnet20"],
)
def test_matches_tensorflow_profiler(build_model: Callable[[], keras.Model]) -> None:
    model = build_model()
    macs = count_flops(model)
    assert macs > 0
    assert _profiler_flops(model, tuple(model.inputs[0].shape[1:])) == 2 * macs


@pytest.mark.slow
def test_mobilenet_v2_matches_tensorflow_profiler() -> None:
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(64, 64, 3), classes=10
    )
    macs = count_flops(model)
    assert macs == 24_461_312  # Measured; pinned so a regression is visible.
    assert _profiler_flops(model, (64, 64, 3)) == 2 * macs
    # Everything left out is a BatchNormalization; the rest is weightless plumbing.
    bn_names = {
        layer.name
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization)
    }
    assert set(uncounted_layers(model)) == bn_names


# --------------------------------------------------------------------------------------
# 3. Published figures (ResNet paper, CIFAR-10): within 2 %.

# Option-B ResNet-20, by hand: stem 32*32*16*27 = 442,368; stage 1: 6 convs of
# 32*32*16*144 = 2,359,296; stages 2 and 3: a strided conv of 1,179,648, 5 convs of
# 2,359,296 and a 1x1 projection of 131,072; Dense 64*10 = 640.
_RESNET20_MACS = (
    442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296 + 131_072) + 640
)
# ResNet-56: 18 convs per stage instead of 6.
_RESNET56_MACS = (
    442_368 + 18 * 2_359_296 + 2 * (1_179_648 + 17 * 2_359_296 + 131_072) + 640
)
_PUBLISHED_MACS = {"resnet20": 40.8e6, "resnet56": 125e6}


@pytest.mark.parametrize(
    "depth, expected_macs", [(20, _RESNET20_MACS), (56, _RESNET56_MACS)]
)
def test_inline_cifar_resnet_matches_published_figures(
    depth: int, expected_macs: int
) -> None:
    model = _cifar_resnet(depth)
    macs = count_flops(model)
    assert macs == expected_macs  # 40,813,184 and 125,747,840.
    published = _PUBLISHED_MACS[f"resnet{depth}"]
    assert abs(macs - published) / published < 0.02
    bn_names = {
        layer.name
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization)
    }
    assert set(uncounted_layers(model)) == bn_names


@pytest.mark.parametrize("name", sorted(_PUBLISHED_MACS))
def test_model_zoo_matches_published_figures(name: str) -> None:
    models = pytest.importorskip("s2dnas_tf.models")
    if not hasattr(models, "build_model"):
        pytest.skip("s2dnas_tf.models does not export build_model yet")
    if name not in models.list_models():
        pytest.skip(f"{name!r} is not registered in s2dnas_tf.models")
    macs = count_flops(models.build_model(name))
    published = _PUBLISHED_MACS[name]
    assert abs(macs - published) / published < 0.02, f"{name}: {macs:,} MACs"
