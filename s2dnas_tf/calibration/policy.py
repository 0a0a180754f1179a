"""The exit policy on a split: where each sample exits, what a policy achieves, the oracle.

`exit_stages` / `evaluate_policy` apply given thresholds; `oracle` lets each sample exit
at the earliest stage that is right. `Split` holds what they need from a split (per
stage confidence and correctness) and counts exits exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from s2dnas_tf.calibration.checks import (
    check_labels,
    check_stage_flops,
    check_thresholds,
    is_real_dtype,
    stage_predictions,
)

# A threshold no softmax probability reaches: the stage never lets a sample exit. A
# finite number (not inf) so that thresholds stay valid JSON in report.json.
NEVER_EXIT = 2.0


@dataclasses.dataclass(frozen=True)
class PolicyResult:
    """One exit policy and what it achieves on a split.

    Attributes:
        thresholds: tau_1..tau_{S-1} (empty for S = 1 and for the oracle).
        accuracy: fraction of samples answered correctly, in [0, 1].
        avg_flops: mean FLOPs per sample, in the unit of `stage_flops`.
        exit_fractions: S fractions of samples exiting at stages 1..S (they sum to 1).
    """

    thresholds: tuple[float, ...]
    accuracy: float
    avg_flops: float
    exit_fractions: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict with lists in place of tuples."""
        return {
            "thresholds": list(self.thresholds),
            "accuracy": self.accuracy,
            "avg_flops": self.avg_flops,
            "exit_fractions": list(self.exit_fractions),
        }


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax.

    Args:
        logits: array-like of logits, e.g. [N, K] or [S, N, K].
        axis: the class axis.

    Returns:
        Probabilities of the same shape; floating inputs keep their dtype, integer
        inputs give float64.

    Raises:
        TypeError: if `logits` is not numeric.
    """
    x = np.asarray(logits)
    if not is_real_dtype(x.dtype):
        raise TypeError(
            f"Expected real-valued logits. Received: logits with dtype={x.dtype!r}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    # Shifting by the max keeps exp() from overflowing; it does not change the result.
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def exit_stages(probs: Any, thresholds: Sequence[float]) -> np.ndarray:
    """The stage at which each sample exits under the exit rule.

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        thresholds: S - 1 thresholds tau_1..tau_{S-1}; a sample exits after stage
            s < S if its max softmax probability there is >= tau_s. 0.0 lets every
            sample exit, any value > 1 (e.g. `NEVER_EXIT`) lets none exit.

    Returns:
        int32 array [N] of 1-based exit stages.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    confidence, _, _ = stage_predictions(probs)
    taus = check_thresholds(thresholds, num_stages=confidence.shape[0])
    return exit_stages_from_confidence(confidence, taus)


def evaluate_policy(
    probs: Any, labels: Any, stage_flops: Sequence[float], thresholds: Sequence[float]
) -> PolicyResult:
    """Accuracy, average FLOPs and exit fractions of given thresholds.

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        thresholds: S - 1 exit thresholds (see `exit_stages`).

    Returns:
        The `PolicyResult` of `thresholds` on this split.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    split = Split.build(probs, labels, stage_flops)
    taus = check_thresholds(thresholds, num_stages=split.num_stages)
    return split.evaluate(taus)


def oracle(probs: Any, labels: Any, stage_flops: Sequence[float]) -> PolicyResult:
    """The oracle policy: each sample exits at the earliest stage that is right.

    Samples no stage gets right run to the last stage (and cost its FLOPs). This is
    the limit any confidence-based exit rule can reach with these stages.

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.

    Returns:
        A `PolicyResult` with empty `thresholds`; `accuracy` is the fraction of
        samples some stage gets right.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    split = Split.build(probs, labels, stage_flops)
    any_right = split.correct.any(axis=0)
    stages = np.where(any_right, np.argmax(split.correct, axis=0) + 1, split.num_stages)
    counts = np.bincount(stages - 1, minlength=split.num_stages)
    return split.result((), counts, int(np.count_nonzero(any_right)))


# --------------------------------------------------------------------------------------
# The split: per-stage confidence and correctness, and exact counting.


@dataclasses.dataclass(frozen=True)
class Split:
    """What calibration needs from a split: confidence and correctness per stage."""

    confidence: np.ndarray  # float64 [S, N]: max softmax probability.
    correct: np.ndarray  # bool [S, N]: argmax == label.
    stage_flops: np.ndarray  # float64 [S], cumulative.

    @property
    def num_stages(self) -> int:
        return self.confidence.shape[0]

    @property
    def num_samples(self) -> int:
        return self.confidence.shape[1]

    @classmethod
    def build(cls, probs: Any, labels: Any, stage_flops: Sequence[float]) -> Split:
        confidence, argmax, num_classes = stage_predictions(probs)
        num_stages, num_samples = confidence.shape
        labels = check_labels(labels, num_samples, num_classes)
        flops = check_stage_flops(stage_flops, num_stages)
        return cls(confidence, argmax == labels[None, :], flops)

    def evaluate(self, thresholds: tuple[float, ...]) -> PolicyResult:
        stages = exit_stages_from_confidence(self.confidence, thresholds)
        counts = np.bincount(stages - 1, minlength=self.num_stages)
        num_correct = int(np.count_nonzero(self.correct[stages - 1, np.arange(stages.size)]))
        return self.result(thresholds, counts, num_correct)

    def result(
        self, thresholds: tuple[float, ...], counts: np.ndarray, num_correct: int
    ) -> PolicyResult:
        n = self.num_samples
        return PolicyResult(
            thresholds=tuple(float(t) for t in thresholds),
            accuracy=num_correct / n,
            avg_flops=float(sum_flops(counts, self.stage_flops)) / n,
            exit_fractions=tuple(int(c) / n for c in counts),
        )


def sum_flops(counts: np.ndarray, stage_flops: np.ndarray) -> np.ndarray:
    """Sum_s counts[..., s] * stage_flops[s], always summed in stage order.

    Every code path computes FLOPs through here, so that the same exit counts give
    bit-identical FLOPs (the Pareto filter compares them exactly).
    """
    total = counts[..., 0] * stage_flops[0]
    for s in range(1, stage_flops.size):
        total = total + counts[..., s] * stage_flops[s]
    return total


def exit_stages_from_confidence(
    confidence: np.ndarray, thresholds: tuple[float, ...]
) -> np.ndarray:
    num_stages, num_samples = confidence.shape
    stages = np.full(num_samples, num_stages, dtype=np.int32)
    undecided = np.ones(num_samples, dtype=bool)
    for s, tau in enumerate(thresholds):
        exits = undecided & (confidence[s] >= tau)
        stages[exits] = s + 1
        undecided &= ~exits
    return stages
