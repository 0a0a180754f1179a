"""Threshold calibration: the front point for a FLOPs budget or an accuracy target.

`calibrate_for_budget` / `calibrate_for_accuracy` pick from `accuracy_flops_curve`,
and raise `BudgetNotMetError` / `TargetNotMetError` when no point qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s2dnas_tf.calibration.checks import check_real
from s2dnas_tf.calibration.pareto import accuracy_flops_curve
from s2dnas_tf.calibration.policy import PolicyResult


class BudgetNotMetError(ValueError):
    """No threshold set meets a FLOPs budget.

    Attributes:
        flops_budget: the budget that was asked for.
        cheapest_flops: the least average FLOPs any threshold set achieves.
    """

    def __init__(self, flops_budget: float, cheapest_flops: float):
        self.flops_budget = float(flops_budget)
        self.cheapest_flops = float(cheapest_flops)
        super().__init__(
            "No exit thresholds meet the FLOPs budget: the cheapest policy (every sample "
            f"exits at stage 1) averages {self.cheapest_flops!r} FLOPs. "
            f"Received: flops_budget={flops_budget!r}"
        )


class TargetNotMetError(ValueError):
    """No threshold set reaches a target accuracy.

    Attributes:
        target_accuracy: the accuracy that was asked for.
        best_accuracy: the best accuracy any threshold set achieves.
    """

    def __init__(self, target_accuracy: float, best_accuracy: float):
        self.target_accuracy = float(target_accuracy)
        self.best_accuracy = float(best_accuracy)
        super().__init__(
            "No exit thresholds reach the target accuracy: the best achievable is "
            f"{self.best_accuracy!r}. Received: target_accuracy={target_accuracy!r}"
        )


def calibrate_for_budget(
    probs: Any,
    labels: Any,
    stage_flops: Sequence[float],
    flops_budget: float,
    num_candidates: int = 50,
) -> PolicyResult:
    """The thresholds with the best accuracy whose average FLOPs fit a budget.

    Among threshold sets searched by `accuracy_flops_curve`, the one with the highest
    accuracy and avg_flops <= flops_budget (ties: the fewer FLOPs).

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        flops_budget: the largest acceptable average FLOPs per sample, absolute (in
            the unit of `stage_flops`, not a fraction).
        num_candidates: number of quantile thresholds per stage.

    Returns:
        The chosen `PolicyResult`.

    Raises:
        BudgetNotMetError: if even the cheapest policy exceeds the budget; its
            `cheapest_flops` attribute is that policy's average FLOPs.
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    flops_budget = check_real("flops_budget", flops_budget)
    if flops_budget < 0:
        raise ValueError(
            f"Expected a non-negative FLOPs budget. Received: flops_budget={flops_budget!r}"
        )
    front = accuracy_flops_curve(probs, labels, stage_flops, num_candidates)
    affordable = [p for p in front if p.avg_flops <= flops_budget]
    if not affordable:
        raise BudgetNotMetError(flops_budget, cheapest_flops=front[0].avg_flops)
    # Accuracy strictly increases along the front, so the last affordable is the best.
    return affordable[-1]


def calibrate_for_accuracy(
    probs: Any,
    labels: Any,
    stage_flops: Sequence[float],
    target_accuracy: float,
    num_candidates: int = 50,
) -> PolicyResult:
    """The thresholds with the least average FLOPs that reach a target accuracy.

    Among threshold sets searched by `accuracy_flops_curve`, the one with the lowest
    avg_flops and accuracy >= target_accuracy (ties: the more accurate).

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        target_accuracy: the least acceptable accuracy, in [0, 1].
        num_candidates: number of quantile thresholds per stage.

    Returns:
        The chosen `PolicyResult`.

    Raises:
        TargetNotMetError: if no threshold set reaches the target; its
            `best_accuracy` attribute is the best accuracy achievable.
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    target_accuracy = check_real("target_accuracy", target_accuracy)
    if not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(
            "Expected a target accuracy in [0, 1]. "
            f"Received: target_accuracy={target_accuracy!r}"
        )
    front = accuracy_flops_curve(probs, labels, stage_flops, num_candidates)
    for point in front:  # avg_flops ascending: the first that qualifies is the cheapest.
        if point.accuracy >= target_accuracy:
            return point
    raise TargetNotMetError(target_accuracy, best_accuracy=front[-1].accuracy)
