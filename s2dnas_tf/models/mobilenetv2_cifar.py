"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR images.

The ImageNet network downsamples 32x (224 -> 7). For CIFAR the usual adaptation
(e.g. kuangliu/pytorch-cifar) keeps the first two stride-2 layers of the network --
the stem convolution and the first block of the 24-channel stage -- at stride 1,
so it downsamples 8x and the last feature map of a 32x32 image is 4x4. Everything
else is the paper's Table 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from s2dnas_tf.models.registry import (
    check_input_shape,
    check_non_negative_float,
    check_num_classes,
    check_positive_float,
    register_model,
)

__all__ = ["make_divisible", "mobilenetv2_cifar"]

_STEM_FILTERS = 32
# (expansion t, output channels c, blocks n, stride s of the first block): Table 2 of
# the paper, with the 24-channel stage at stride 1 instead of 2 for 32x32 inputs.
_INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_HEAD_FILTERS = 1280
# Channel counts are kept multiples of 8, as in the paper's reference code, because
# hardware vector units and kernels favour them.
_CHANNEL_DIVISOR = 8


def make_divisible(value: float, divisor: int = _CHANNEL_DIVISOR) -> int:
    """Rounds a channel count to the nearest multiple of `divisor` (MobileNet rule).

    The rule of the reference implementation (also `keras.applications` and
    torchvision): round to the nearest multiple, at least `divisor`, and go one
    multiple up if rounding down lost more than 10 %.

    Args:
        value: The scaled channel count, e.g. `24 * 0.5`.
        divisor: The multiple to round to. Default 8: the reference value.

    Returns:
        The rounded channel count.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    strides: int,
    prefix: str,
    regularizer: keras.regularizers.Regularizer | None,
) -> keras.KerasTensor:
    """Conv2D (no bias: the BN that follows has its own shift) then BatchNorm."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=f"{prefix}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)


def _inverted_residual(
    x: keras.KerasTensor,
    expansion: int,
    filters: int,
    strides: int,
    prefix: str,
    regularizer: keras.regularizers.Regularizer | None,
) -> keras.KerasTensor:
    """1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN, (+ input)."""
    in_channels = x.shape[-1]
    y = x
    if expansion != 1:
        # With t = 1 the expansion would be a square 1x1 conv; the paper omits it.
        y = _conv_bn(y, in_channels * expansion, 1, 1, f"{prefix}_expand", regularizer)
        y = keras.layers.ReLU(6.0, name=f"{prefix}_expand_relu")(y)
    y = keras.layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer="he_normal",
        # Not regularised, following the TF-slim reference
        # (`regularize_depthwise=False`): its 9 weights per channel are few.
        name=f"{prefix}_depthwise_conv",
    )(y)
    y = keras.layers.BatchNormalization(name=f"{prefix}_depthwise_bn")(y)
    y = keras.layers.ReLU(6.0, name=f"{prefix}_depthwise_relu")(y)
    # Linear bottleneck: no activation after the projection.
    y = _conv_bn(y, filters, 1, 1, f"{prefix}_project", regularizer)
    if strides == 1 and in_channels == filters:
        y = keras.layers.Add(name=f"{prefix}_add")([x, y])
    return y


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    width_multiplier: float = 1.0,
    weight_decay: float = 4e-5,
    dropout_rate: float = 0.2,
) -> keras.Model:
    """Builds MobileNetV2 for CIFAR (final feature map 4x4 on a 32x32 image).

    Layout: `stem_conv` (3x3, 32, stride 1) + `stem_bn` + `stem_relu`; seven stages
    of inverted residual blocks `stage{s}_block{b}_{expand_conv,expand_bn,
    expand_relu,depthwise_conv,depthwise_bn,depthwise_relu,project_conv,
    project_bn,add}` (`expand_*` absent in stage 1, whose expansion is 1; `add`
    only where the stride is 1 and the channel count unchanged); `head_conv` (1x1,
    1280) + `head_bn` + `head_relu`; `avg_pool`; `head_dropout` (only when
    `dropout_rate > 0`); `logits` (Dense, no softmax). All ReLUs are ReLU6.

    Args:
        num_classes: Number of output logits. Default 10: CIFAR-10.
        input_shape: `(height, width, channels)`, channels last. Default
            `(32, 32, 3)`: a CIFAR image.
        width_multiplier: The paper's alpha. Every channel count is scaled and
            rounded with `make_divisible` (multiples of 8); the 1280-channel head is
            only scaled when alpha > 1, as in the paper. Default 1.0: the paper's
            widths.
        weight_decay: L2 coefficient of every conv and dense kernel except the
            depthwise ones, applied as `keras.regularizers.L2(weight_decay)` (loss
            term `weight_decay * sum(w**2)`); 0 disables it. Default 4e-5: the value
            of the paper.
        dropout_rate: Dropout rate before the classifier; 0 leaves the layer out.
            Default 0.2: the rate of the torchvision / TF-slim reference classifier.

    Returns:
        A functional `keras.Model` named `mobilenetv2_cifar` mapping images to
        logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: If an argument has an invalid value.
    """
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    weight_decay = check_non_negative_float("weight_decay", weight_decay)
    dropout_rate = check_non_negative_float("dropout_rate", dropout_rate, upper=1.0)
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None

    inputs = keras.Input(shape=input_shape, name="images")
    stem_filters = make_divisible(_STEM_FILTERS * width_multiplier)
    x = _conv_bn(inputs, stem_filters, 3, 1, "stem", regularizer)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for stage_index, (expansion, filters, num_blocks, first_stride) in enumerate(
        _INVERTED_RESIDUAL_SETTINGS, start=1
    ):
        for block_index in range(1, num_blocks + 1):
            x = _inverted_residual(
                x,
                expansion,
                make_divisible(filters * width_multiplier),
                first_stride if block_index == 1 else 1,
                f"stage{stage_index}_block{block_index}",
                regularizer,
            )
    # The paper keeps the head at 1280 channels for alpha < 1 (it matters for accuracy).
    head_filters = make_divisible(_HEAD_FILTERS * max(1.0, width_multiplier))
    x = _conv_bn(x, head_filters, 1, 1, "head", regularizer)
    x = keras.layers.ReLU(6.0, name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="mobilenetv2_cifar")
