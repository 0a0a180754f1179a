"""Checks of the calibration's arguments: probabilities, labels, stage FLOPs, thresholds.

Each check raises `ValueError` or `TypeError` with what was expected and what was
received, and returns the value in the form the rest of the package computes with.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

# Slack for probabilities that went through float16/float32 arithmetic.
_PROB_RANGE_ATOL = 1e-4
_PROB_SUM_ATOL = 1e-2


def stage_predictions(probs: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Max probability [S, N], argmax [S, N] and the number of classes K.

    Validates `probs` on the way. Stages are reduced one at a time, so an [S, N, K]
    array is never copied whole.
    """
    if hasattr(probs, "shape"):  # np.ndarray, tf.Tensor, ...
        probs = np.asarray(probs)
        if probs.ndim != 3:
            raise ValueError(
                "Expected `probs` as a sequence of S arrays [N, K] or an array [S, N, K]. "
                f"Received: an array with shape={probs.shape!r}"
            )
    elif not isinstance(probs, Sequence) or isinstance(probs, (str, bytes)):
        raise TypeError(
            "Expected `probs` as a sequence of S arrays [N, K] or an array [S, N, K]. "
            f"Received: probs of type {type(probs).__name__}"
        )
    if len(probs) < 1:
        raise ValueError(
            f"Expected at least one stage in `probs`. Received: probs with {len(probs)} stages"
        )
    confidence, argmax, shapes = [], [], []
    for s, stage_probs in enumerate(probs):
        p = np.asarray(stage_probs)
        shapes.append(p.shape)
        if not is_real_dtype(p.dtype):
            raise TypeError(
                f"Expected real-valued probabilities. Received: probs[{s}] with "
                f"dtype={p.dtype!r}"
            )
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise ValueError(
                "Expected each stage's probabilities as a non-empty array [N, K]. "
                f"Received: probs[{s}] with shape={p.shape!r}"
            )
        if p.shape != shapes[0]:
            raise ValueError(
                "Expected every stage's probabilities to have the same shape [N, K]. "
                f"Received: probs[0] with shape={shapes[0]!r} and probs[{s}] with "
                f"shape={p.shape!r}"
            )
        lo, hi = float(np.min(p)), float(np.max(p))
        row_sums = np.sum(p, axis=1, dtype=np.float64)
        if (
            not (math.isfinite(lo) and math.isfinite(hi))
            or lo < -_PROB_RANGE_ATOL
            or hi > 1.0 + _PROB_RANGE_ATOL
            or np.max(np.abs(row_sums - 1.0)) > _PROB_SUM_ATOL
        ):
            raise ValueError(
                "Expected softmax probabilities (values in [0, 1], rows summing to 1); "
                f"pass logits through `softmax` first. Received: probs[{s}] with values "
                f"in [{lo!r}, {hi!r}] and row sums in [{float(np.min(row_sums))!r}, "
                f"{float(np.max(row_sums))!r}]"
            )
        confidence.append(np.max(p, axis=1).astype(np.float64))
        argmax.append(np.argmax(p, axis=1))
    return np.stack(confidence), np.stack(argmax), shapes[0][1]


def is_real_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def check_labels(labels: Any, num_samples: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:  # keras.datasets' [N, 1] labels.
        y = y[:, 0]
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            "Expected integer class labels (not one-hot, not floats). "
            f"Received: labels with dtype={y.dtype!r} and shape={y.shape!r}"
        )
    if y.shape != (num_samples,):
        raise ValueError(
            f"Expected labels of shape ({num_samples},), one per sample in `probs`. "
            f"Received: labels with shape={np.asarray(labels).shape!r}"
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"Expected labels in [0, {num_classes}) for {num_classes} classes. "
            f"Received: labels in [{int(y.min())}, {int(y.max())}]"
        )
    return y


def check_stage_flops(stage_flops: Any, num_stages: int) -> np.ndarray:
    try:
        values = [check_real("stage_flops", f, echo=stage_flops) for f in stage_flops]
    except TypeError as e:
        raise TypeError(
            "Expected `stage_flops` as a sequence of S numbers. "
            f"Received: stage_flops={stage_flops!r}"
        ) from e
    flops = np.asarray(values, dtype=np.float64)
    if flops.size != num_stages:
        raise ValueError(
            f"Expected {num_stages} cumulative stage FLOPs, one per stage in `probs`. "
            f"Received: stage_flops={stage_flops!r}"
        )
    if not np.all(np.isfinite(flops)) or flops[0] < 0 or np.any(np.diff(flops) <= 0):
        raise ValueError(
            "Expected cumulative stage FLOPs: finite, non-negative and strictly increasing. "
            f"Received: stage_flops={stage_flops!r}"
        )
    return flops


def check_thresholds(thresholds: Any, num_stages: int) -> tuple[float, ...]:
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__"):
        raise TypeError(
            f"Expected `thresholds` as a sequence of {num_stages - 1} numbers. "
            f"Received: thresholds={thresholds!r}"
        )
    if isinstance(thresholds, np.ndarray) and thresholds.ndim != 1:
        raise ValueError(
            f"Expected `thresholds` as a flat sequence of {num_stages - 1} numbers. "
            f"Received: thresholds={thresholds!r}"
        )
    taus = tuple(check_real("thresholds", t, echo=thresholds) for t in thresholds)
    if len(taus) != num_stages - 1:
        raise ValueError(
            f"Expected {num_stages - 1} thresholds for {num_stages} stages (the last "
            f"stage always answers). Received: thresholds={thresholds!r}"
        )
    return taus


def check_num_candidates(num_candidates: Any) -> int:
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, numbers.Integral):
        raise TypeError(
            f"Expected an integer `num_candidates`. Received: num_candidates={num_candidates!r}"
        )
    if num_candidates < 1:
        raise ValueError(
            f"Expected num_candidates >= 1. Received: num_candidates={num_candidates!r}"
        )
    return int(num_candidates)


def check_real(name: str, value: Any, echo: Any = None) -> float:
    """A finite-or-infinite, non-NaN real number as a float."""
    echo = value if echo is None else echo
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            raise TypeError(f"Expected a real number for `{name}`. Received: {name}={echo!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"Expected a number, not NaN, for `{name}`. Received: {name}={echo!r}")
    return value
