"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2).

Depth `6n + 2`: a 3x3 stem convolution, three stages of `n` basic blocks (two 3x3
convolutions each) at 16, 32 and 64 filters on 32x32, 16x16 and 8x8 feature maps,
global average pooling and a dense classifier. Registered as `resnet20` (n=3),
`resnet32` (n=5), `resnet56` (n=9) and `resnet110` (n=18).
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
    scale_channels,
)

__all__ = ["resnet110", "resnet20", "resnet32", "resnet56", "resnet_cifar"]

# Filters of the three stages in the paper (section 4.2).
_STAGE_FILTERS = (16, 32, 64)


def _conv_bn(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int,
    strides: int,
    prefix: str,
    conv_suffix: str,
    bn_suffix: str,
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
        name=f"{prefix}_{conv_suffix}",
    )(x)
    return keras.layers.BatchNormalization(name=f"{prefix}_{bn_suffix}")(x)


def _basic_block(
    x: keras.KerasTensor,
    filters: int,
    strides: int,
    prefix: str,
    regularizer: keras.regularizers.Regularizer | None,
) -> keras.KerasTensor:
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""
    in_channels = x.shape[-1]
    shortcut = x
    y = _conv_bn(x, filters, 3, strides, prefix, "conv1", "bn1", regularizer)
    y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv_bn(y, filters, 3, 1, prefix, "conv2", "bn2", regularizer)
    if strides != 1 or in_channels != filters:
        # Option B of the paper: a 1x1 strided conv + BN projects where shapes differ.
        shortcut = _conv_bn(
            x, filters, 1, strides, prefix, "shortcut_conv", "shortcut_bn", regularizer
        )
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_relu2")(y)


def resnet_cifar(
    depth: int,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    width_multiplier: float = 1.0,
    weight_decay: float = 1e-4,
) -> keras.Model:
    """Builds a CIFAR ResNet of depth `6n + 2` (He et al. 2016, section 4.2).

    Layout: `stem_conv` (3x3, 16) + `stem_bn` + `stem_relu`; stages 1..3 of `n` basic
    blocks with 16, 32, 64 filters, stride 2 in the first block of stages 2 and 3;
    `avg_pool` (global average pooling); `logits` (Dense, no softmax). Layers are
    named `stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,shortcut_conv,shortcut_bn,
    add,relu2}`, with `s` and `b` counted from 1.

    Shortcuts are identities except where the shape changes (the first block of
    stages 2 and 3), which uses the paper's *option B*: a 1x1 stride-2 convolution
    + BatchNorm projection. The paper's own CIFAR models use option A (identity with
    zero-padded channels, no parameters); option B is what most Keras
    implementations do and keeps every layer a plain convolution. It adds two 1x1
    convolutions and 2,752 trainable parameters at width 1 (ResNet-20: 272,474
    instead of the paper's 269,722 ~ "0.27M").

    Args:
        depth: Number of weighted layers on the main path, `6n + 2` with `n >= 1`
            (20, 32, 44, 56, 110, ...).
        num_classes: Number of output logits. Default 10: CIFAR-10.
        input_shape: `(height, width, channels)`, channels last. Default
            `(32, 32, 3)`: a CIFAR image.
        width_multiplier: Scales every channel count (rounded half up, at least 1);
            0.5 gives the half-width network. Default 1.0: the paper's widths.
        weight_decay: L2 coefficient of every conv and dense kernel, applied as
            `keras.regularizers.L2(weight_decay)`, i.e. a loss term
            `weight_decay * sum(w**2)` (its gradient is `2 * weight_decay * w`).
            0 disables it. Default 1e-4: the value of the paper.

    Returns:
        A functional `keras.Model` named `resnet{depth}` mapping images to logits of
        shape `(batch, num_classes)`.

    Raises:
        ValueError: If `depth` is not `6n + 2` with `n >= 1`, or any other argument
            has an invalid value.
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 8
        or (depth - 2) % 6
    ):
        raise ValueError(
            "Expected `depth` to be 6n + 2 for an integer n >= 1 (8, 14, 20, 32, 56, "
            f"110, ...). Received: depth={depth!r}"
        )
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    weight_decay = check_non_negative_float("weight_decay", weight_decay)
    blocks_per_stage = (depth - 2) // 6
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    stage_filters = [scale_channels(f, width_multiplier) for f in _STAGE_FILTERS]

    inputs = keras.Input(shape=input_shape, name="images")
    x = _conv_bn(inputs, stage_filters[0], 3, 1, "stem", "conv", "bn", regularizer)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage_index, filters in enumerate(stage_filters, start=1):
        for block_index in range(1, blocks_per_stage + 1):
            strides = 2 if stage_index > 1 and block_index == 1 else 1
            x = _basic_block(
                x,
                filters,
                strides,
                f"stage{stage_index}_block{block_index}",
                regularizer,
            )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def _register_depth(depth: int, note: str) -> None:
    """Registers `resnet{depth}` as `resnet_cifar(depth, ...)`."""

    def build(
        num_classes: int = 10,
        input_shape: Sequence[int] = (32, 32, 3),
        width_multiplier: float = 1.0,
        weight_decay: float = 1e-4,
    ) -> keras.Model:
        return resnet_cifar(depth, num_classes, input_shape, width_multiplier, weight_decay)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = (
        f"Builds ResNet-{depth} for CIFAR (n={(depth - 2) // 6}){note}.\n\n"
        "Args and errors as in `resnet_cifar`; returns a functional `keras.Model` "
        "producing logits."
    )
    globals()[build.__name__] = register_model(build.__name__)(build)


# depth -> a note for the docstring; ResNet-8 is the smallest member (quickstart, fast tests).
for _depth, _note in {
    8: ": the smallest member, for the quickstart and fast tests",
    20: "; 272,474 trainable parameters at 10 classes",
    32: "",
    56: "",
    110: "",
}.items():
    _register_depth(_depth, _note)
del _depth, _note
