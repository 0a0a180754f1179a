"""Name -> constructor registry of the reference model zoo, and argument checks.

A registry is a plain dict filled by the `register_model` decorator (the timm /
torchvision habit): a duplicate name is refused, an unknown name lists the valid ones.
The argument checks and channel scaling live here too because every registered
constructor shares them; only the registry functions are exported by the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import keras

__all__ = [
    "build_model",
    "check_input_shape",
    "check_non_negative_float",
    "check_num_classes",
    "check_positive_float",
    "list_models",
    "register_model",
    "scale_channels",
    "with_input_normalization",
]

ModelFn = TypeVar("ModelFn", bound=Callable[..., keras.Model])

# Registered name -> constructor taking (num_classes=..., input_shape=..., **kwargs).
_MODEL_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Returns a decorator that registers a model constructor under `name`.

    The constructor must accept `num_classes` and `input_shape` keyword arguments
    and return a `keras.Model`. It is returned unchanged, so it can still be called
    directly.

    Args:
        name: The registry key, e.g. `"resnet20"`. Must be a non-empty string not
            registered before.

    Returns:
        A decorator that stores its argument in the registry and returns it.

    Raises:
        ValueError: If `name` is not a non-empty string, or is already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Expected `name` to be a non-empty string. Received: name={name!r}"
        )
    if name in _MODEL_REGISTRY:
        existing = _MODEL_REGISTRY[name]
        raise ValueError(
            f"A model named {name!r} is already registered (by "
            f"{existing.__module__}.{existing.__qualname__}). "
            f"Model names must be unique. Received: name={name!r}"
        )

    def decorator(fn: ModelFn) -> ModelFn:
        _MODEL_REGISTRY[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Returns the registered model names, sorted alphabetically.

    Returns:
        A new list of names; mutating it does not change the registry.
    """
    return sorted(_MODEL_REGISTRY)


def build_model(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (32, 32, 3),
    **kwargs: Any,
) -> keras.Model:
    """Builds a registered model.

    Args:
        name: A name from `list_models()`, e.g. `"resnet20"`.
        num_classes: Number of output logits. Default 10 because CIFAR-10 is the
            reference dataset.
        input_shape: `(height, width, channels)` of one image, channels last.
            Default `(32, 32, 3)`: a CIFAR image.
        **kwargs: Passed to the model's constructor (e.g. `width_multiplier`,
            `weight_decay`, `dropout_rate`).

    Returns:
        A new functional `keras.Model` with freshly initialised weights whose
        output is the logits, shape `(batch, num_classes)` (no softmax).

    Raises:
        ValueError: If `name` is not registered, or `num_classes` / `input_shape`
            (or a constructor argument) has an invalid value.
        TypeError: If `kwargs` holds an argument the constructor does not take.
    """
    if name not in _MODEL_REGISTRY:
        raise ValueError(
            f"Unknown model name {name!r}. Available: {list_models()}. "
            f"Received: name={name!r}"
        )
    num_classes = check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    return _MODEL_REGISTRY[name](
        num_classes=num_classes, input_shape=input_shape, **kwargs
    )


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `True` classes or pixels are always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_num_classes(num_classes: Any) -> int:
    """Returns `num_classes` as an int after checking it is an integer >= 1.

    Args:
        num_classes: The value to check.

    Returns:
        `int(num_classes)`.

    Raises:
        ValueError: If `num_classes` is not an integer >= 1.
    """
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(
            "Expected `num_classes` to be an integer >= 1. "
            f"Received: num_classes={num_classes!r}"
        )
    return int(num_classes)


def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """Returns `input_shape` as a tuple after checking it is 3 positive integers.

    Args:
        input_shape: The value to check, `(height, width, channels)`.

    Returns:
        `input_shape` as a tuple of 3 Python ints.

    Raises:
        ValueError: If `input_shape` is not a sequence of 3 positive integers.
    """
    if (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
        or not all(_is_int(dim) and dim > 0 for dim in input_shape)
    ):
        raise ValueError(
            "Expected `input_shape` to be 3 positive integers "
            f"(height, width, channels). Received: input_shape={input_shape!r}"
        )
    return tuple(int(dim) for dim in input_shape)


def check_positive_float(arg_name: str, value: Any) -> float:
    """Returns `value` as a float after checking it is finite and > 0.

    Args:
        arg_name: The argument's name, used in the error message.
        value: The value to check.

    Returns:
        `float(value)`.

    Raises:
        ValueError: If `value` is not a finite real number > 0.
    """
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Expected `{arg_name}` to be a finite number > 0. "
            f"Received: {arg_name}={value!r}"
        )
    return float(value)


def check_non_negative_float(
    arg_name: str, value: Any, upper: float | None = None
) -> float:
    """Returns `value` as a float after checking `0 <= value` (and `< upper`).

    Args:
        arg_name: The argument's name, used in the error message.
        value: The value to check.
        upper: If given, `value` must be strictly below it (e.g. 1 for a dropout
            rate).

    Returns:
        `float(value)`.

    Raises:
        ValueError: If `value` is not a finite real number in the allowed range.
    """
    expected = f"in [0, {upper})" if upper is not None else ">= 0"
    if (
        not isinstance(value, numbers.Real)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
        or (upper is not None and value >= upper)
    ):
        raise ValueError(
            f"Expected `{arg_name}` to be a finite number {expected}. "
            f"Received: {arg_name}={value!r}"
        )
    return float(value)


def scale_channels(channels: int, width_multiplier: float) -> int:
    """Returns `channels * width_multiplier` rounded half up, at least 1.

    Half up rather than Python's `round()` (half to even: 6.5 -> 6, 7.5 -> 8) so
    the rounding does not depend on parity; at least 1 so every layer still exists.

    Args:
        channels: The channel count at width 1.
        width_multiplier: The factor, > 0.

    Returns:
        The scaled channel count.
    """
    return max(1, int(channels * width_multiplier + 0.5))


def with_input_normalization(
    model: keras.Model, mean: Sequence[float], variance: Sequence[float]
) -> keras.Model:
    """Puts a per-channel `Normalization` in front of `model`, so it takes raw pixels.

    This is the project's one rule for where normalisation lives: data pipelines yield raw
    pixel values (0..255) and the model normalises them itself, so an exported model takes
    raw images. The rewriter computes this layer once, shared by every stage.

    Args:
        model: A model taking normalised images.
        mean: Per-channel mean of the raw training images.
        variance: Per-channel variance of the raw training images.

    Returns:
        A new functional model `raw images -> model(normalised images)` with `model`'s name.

    Raises:
        ValueError: If `mean`/`variance` do not have one value per input channel or a
            variance is not positive.
    """
    channels = int(model.inputs[0].shape[-1])
    mean = [float(v) for v in mean]
    variance = [float(v) for v in variance]
    if len(mean) != channels or len(variance) != channels or min(variance) <= 0:
        raise ValueError(
            f"mean and variance need {channels} values (one per input channel), variances "
            f"> 0. Received: mean={mean}, variance={variance}"
        )
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="images")
    x = keras.layers.Normalization(mean=mean, variance=variance, name="input_norm")(inputs)
    return keras.Model(inputs, model(x), name=model.name)
