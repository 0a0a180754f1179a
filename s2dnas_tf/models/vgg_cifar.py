"""VGG-16 with BatchNorm for CIFAR (Simonyan & Zisserman 2015, BN after every conv).

The CIFAR variant common to the pruning and dynamic-inference literature: the
thirteen 3x3 convolutions of VGG-16, five 2x2 max-poolings (32x32 -> 1x1), then a
single 512-unit hidden dense layer instead of ImageNet's two 4096-unit ones.
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

__all__ = ["vgg16_bn"]

# Filters of each 3x3 conv, one tuple per block; every block ends in a 2x2 max-pool.
_VGG16_BLOCKS = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
_HIDDEN_UNITS = 512
# Five 2x2 poolings halve the spatial size five times.
_MIN_SPATIAL_SIZE = 2 ** len(_VGG16_BLOCKS)


@register_model("vgg16_bn")
def vgg16_bn(
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    width_multiplier: float = 1.0,
    weight_decay: float = 5e-4,
    dropout_rate: float = 0.5,
) -> keras.Model:
    """Builds the CIFAR VGG-16 with BatchNorm.

    Layout: blocks 1..5 of 2, 2, 3, 3, 3 convolutions (3x3, 64/128/256/512/512
    filters, `same` padding), each `block{b}_conv{i}` + `block{b}_bn{i}` +
    `block{b}_relu{i}`, and each block closed by `block{b}_pool` (2x2 max-pool);
    then `features_flatten`, `fc1` (Dense 512) + `fc1_bn` + `fc1_relu`,
    `fc1_dropout` (only when `dropout_rate > 0`), and `logits` (Dense, no
    softmax). The convolutions and `fc1` have no bias since the BatchNorm after
    them has its own shift.

    Args:
        num_classes: Number of output logits. Default 10: CIFAR-10.
        input_shape: `(height, width, channels)`, channels last; height and width
            must be at least 32 (five 2x2 poolings). Default `(32, 32, 3)`: a CIFAR
            image. Larger inputs make `features_flatten` (and `fc1`) wider.
        width_multiplier: Scales every channel count, `fc1` included (rounded half
            up, at least 1). Default 1.0: the standard widths.
        weight_decay: L2 coefficient of every conv and dense kernel, applied as
            `keras.regularizers.L2(weight_decay)` (loss term
            `weight_decay * sum(w**2)`); 0 disables it. Default 5e-4: the usual
            value for VGG on CIFAR.
        dropout_rate: Dropout rate before the classifier; 0 leaves the layer out.
            Default 0.5: the rate of the original VGG classifier.

    Returns:
        A functional `keras.Model` named `vgg16_bn` mapping images to logits of
        shape `(batch, num_classes)`.

    Raises:
        ValueError: If an argument has an invalid value, or the input is smaller
            than 32x32.
    """
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    width_multiplier = check_positive_float("width_multiplier", width_multiplier)
    weight_decay = check_non_negative_float("weight_decay", weight_decay)
    dropout_rate = check_non_negative_float("dropout_rate", dropout_rate, upper=1.0)
    if min(input_shape[:2]) < _MIN_SPATIAL_SIZE:
        raise ValueError(
            f"vgg16_bn pools the input {len(_VGG16_BLOCKS)} times, so height and "
            f"width must be at least {_MIN_SPATIAL_SIZE}. "
            f"Received: input_shape={input_shape!r}"
        )
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for block_index, block_filters in enumerate(_VGG16_BLOCKS, start=1):
        for conv_index, filters in enumerate(block_filters, start=1):
            prefix = f"block{block_index}"
            x = keras.layers.Conv2D(
                scale_channels(filters, width_multiplier),
                3,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                kernel_regularizer=regularizer,
                name=f"{prefix}_conv{conv_index}",
            )(x)
            x = keras.layers.BatchNormalization(name=f"{prefix}_bn{conv_index}")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu{conv_index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block_index}_pool")(x)
    x = keras.layers.Flatten(name="features_flatten")(x)
    x = keras.layers.Dense(
        scale_channels(_HIDDEN_UNITS, width_multiplier),
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name="fc1",
    )(x)
    x = keras.layers.BatchNormalization(name="fc1_bn")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="fc1_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="vgg16_bn")
