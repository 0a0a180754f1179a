"""Dynamic inference and exit-threshold calibration (DESIGN §4), in plain numpy.

Exit rule: after stage s < S a sample exits if the maximum softmax probability of
stage s is >= tau_s; the last stage always answers. Everything here works on the
stages' softmax outputs on a held-out split, so it is exact and needs no TensorFlow:

- `exit_stages` / `evaluate_policy`: where each sample exits under given thresholds,
  and the resulting accuracy, average FLOPs and exit fractions.
- `accuracy_flops_curve`: the Pareto front (accuracy vs. average FLOPs) over a grid
  of candidate thresholds (`candidate_thresholds`).
- `calibrate_for_budget` / `calibrate_for_accuracy`: the front point with the best
  accuracy under a FLOPs budget, or the least FLOPs reaching a target accuracy.
- `oracle`: each sample exits at the earliest stage that is right (the limit).

Common arguments:
    probs: the S stages' softmax outputs, a sequence of S arrays [N, K] or one
        array [S, N, K]. Hold logits? Pass them through `softmax` first.
    labels: int array [N] (an [N, 1] array, as `keras.datasets` returns, is also
        accepted), values in [0, K).
    stage_flops: S cumulative FLOPs: entry s is the cost of running stages 1..s
        (what `s2dnas_tf.stage_flops(net)` returns); strictly increasing.

A sample that exits at stage s costs stage_flops[s - 1]; avg_flops is the mean over
the split, in the same unit as `stage_flops`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BudgetNotMetError",
    "NEVER_EXIT",
    "PolicyResult",
    "TargetNotMetError",
    "accuracy_flops_curve",
    "calibrate_for_accuracy",
    "calibrate_for_budget",
    "candidate_thresholds",
    "evaluate_policy",
    "exit_stages",
    "oracle",
    "softmax",
]

# A threshold no softmax probability reaches: the stage never lets a sample exit. A
# finite number (not inf) so that thresholds stay valid JSON in report.json.
NEVER_EXIT = 2.0

# Slack for probabilities that went through float16/float32 arithmetic.
_PROB_RANGE_ATOL = 1e-4
_PROB_SUM_ATOL = 1e-2

# Local search for S > 3 (see `accuracy_flops_curve`): a bound on the rounds of
# Pareto local search, so its cost stays predictable. It converges well before.
_MAX_SEARCH_ROUNDS = 50


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


# --------------------------------------------------------------------------------------
# Public functions.


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
    if not _is_real_dtype(x.dtype):
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
        probs: the S stages' softmax outputs (see the module docstring).
        thresholds: S - 1 thresholds tau_1..tau_{S-1}; a sample exits after stage
            s < S if its max softmax probability there is >= tau_s. 0.0 lets every
            sample exit, any value > 1 (e.g. `NEVER_EXIT`) lets none exit.

    Returns:
        int32 array [N] of 1-based exit stages.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    confidence, _, _ = _stage_predictions(probs)
    taus = _check_thresholds(thresholds, num_stages=confidence.shape[0])
    return _exit_stages(confidence, taus)


def evaluate_policy(
    probs: Any, labels: Any, stage_flops: Sequence[float], thresholds: Sequence[float]
) -> PolicyResult:
    """Accuracy, average FLOPs and exit fractions of given thresholds.

    Args:
        probs: the S stages' softmax outputs (see the module docstring).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        thresholds: S - 1 exit thresholds (see `exit_stages`).

    Returns:
        The `PolicyResult` of `thresholds` on this split.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    split = _Split.build(probs, labels, stage_flops)
    taus = _check_thresholds(thresholds, num_stages=split.num_stages)
    return split.evaluate(taus)


def candidate_thresholds(probs: Any, num_candidates: int = 50) -> list[np.ndarray]:
    """The per-stage threshold candidates the calibration searches over.

    For each stage s < S: `num_candidates` quantiles of that stage's max softmax
    probability on this split, at the evenly spaced levels k / (num_candidates + 1),
    k = 1..num_candidates, plus 0.0 (every sample exits) and `NEVER_EXIT` (none does);
    sorted and without duplicates.

    Args:
        probs: the S stages' softmax outputs (see the module docstring).
        num_candidates: number of quantiles per stage.

    Returns:
        S - 1 sorted float64 arrays (an empty list for S = 1).

    Raises:
        ValueError: if `probs` is invalid or `num_candidates` < 1.
        TypeError: if an argument has the wrong type.
    """
    num_candidates = _check_num_candidates(num_candidates)
    confidence, _, _ = _stage_predictions(probs)
    return _candidate_thresholds(confidence, num_candidates)


def accuracy_flops_curve(
    probs: Any, labels: Any, stage_flops: Sequence[float], num_candidates: int = 50
) -> list[PolicyResult]:
    """The Pareto front of accuracy vs. average FLOPs over exit thresholds.

    Threshold sets are drawn from `candidate_thresholds(probs, num_candidates)`.
    - S <= 3: the full product grid is searched, so the front is exact on that grid.
      Counting is vectorised: samples are binned by the candidate index of their
      confidence at each stage, and cumulative sums over that histogram give every
      grid point's exit counts at once, O(N + grid size).
    - S > 3: Pareto local search. Seeds: the "shared quantile" diagonal (stage s uses
      its k-th candidate, rescaled to its own candidate count, for every k; this
      includes "all exit at stage 1" and "all reach the last stage"). Then, until
      the front stops changing, every front point not yet expanded is expanded
      along each coordinate: one stage's threshold sweeps all its candidates while
      the others stay fixed (each sweep is one vectorised pass over the samples).
      The result is a valid front of points that are each exactly what
      `evaluate_policy` gives for their thresholds, and locally optimal: no single
      threshold change yields a point that dominates one of them. It is not
      guaranteed to equal the front of the full grid.

    Points are sorted by avg_flops ascending with strictly increasing accuracy: no
    point is dominated (weakly, with one strict inequality) by another threshold set
    searched. Of threshold sets with identical (accuracy, avg_flops) the first in the
    search order (for S <= 3: the smallest thresholds, lexicographically) is kept.
    The first point is "every sample exits at stage 1" (or cheaper-equal); the last
    has the best accuracy found.

    Args:
        probs: the S stages' softmax outputs (see the module docstring).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        num_candidates: number of quantile thresholds per stage.

    Returns:
        The front as a list of `PolicyResult`; for S = 1 the single static point.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    num_candidates = _check_num_candidates(num_candidates)
    split = _Split.build(probs, labels, stage_flops)
    return _pareto_front(split, num_candidates)


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
        probs: the S stages' softmax outputs (see the module docstring).
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
    flops_budget = _check_real("flops_budget", flops_budget)
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
        probs: the S stages' softmax outputs (see the module docstring).
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
    target_accuracy = _check_real("target_accuracy", target_accuracy)
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


def oracle(probs: Any, labels: Any, stage_flops: Sequence[float]) -> PolicyResult:
    """The oracle policy: each sample exits at the earliest stage that is right.

    Samples no stage gets right run to the last stage (and cost its FLOPs). This is
    the limit any confidence-based exit rule can reach with these stages.

    Args:
        probs: the S stages' softmax outputs (see the module docstring).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.

    Returns:
        A `PolicyResult` with empty `thresholds`; `accuracy` is the fraction of
        samples some stage gets right.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    split = _Split.build(probs, labels, stage_flops)
    any_right = split.correct.any(axis=0)
    stages = np.where(any_right, np.argmax(split.correct, axis=0) + 1, split.num_stages)
    counts = np.bincount(stages - 1, minlength=split.num_stages)
    return split.result((), counts, int(np.count_nonzero(any_right)))


# --------------------------------------------------------------------------------------
# The split: per-stage confidence and correctness, and exact counting.


@dataclasses.dataclass(frozen=True)
class _Split:
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
    def build(cls, probs: Any, labels: Any, stage_flops: Sequence[float]) -> _Split:
        confidence, argmax, num_classes = _stage_predictions(probs)
        num_stages, num_samples = confidence.shape
        labels = _check_labels(labels, num_samples, num_classes)
        flops = _check_stage_flops(stage_flops, num_stages)
        return cls(confidence, argmax == labels[None, :], flops)

    def evaluate(self, thresholds: tuple[float, ...]) -> PolicyResult:
        stages = _exit_stages(self.confidence, thresholds)
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
            avg_flops=float(_total_flops(counts, self.stage_flops)) / n,
            exit_fractions=tuple(int(c) / n for c in counts),
        )


def _total_flops(counts: np.ndarray, stage_flops: np.ndarray) -> np.ndarray:
    """Sum_s counts[..., s] * stage_flops[s], always summed in stage order.

    Every code path computes FLOPs through here, so that the same exit counts give
    bit-identical FLOPs (the Pareto filter compares them exactly).
    """
    total = counts[..., 0] * stage_flops[0]
    for s in range(1, stage_flops.size):
        total = total + counts[..., s] * stage_flops[s]
    return total


def _exit_stages(confidence: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    num_stages, num_samples = confidence.shape
    stages = np.full(num_samples, num_stages, dtype=np.int32)
    undecided = np.ones(num_samples, dtype=bool)
    for s, tau in enumerate(thresholds):
        exits = undecided & (confidence[s] >= tau)
        stages[exits] = s + 1
        undecided &= ~exits
    return stages


def _candidate_thresholds(confidence: np.ndarray, num_candidates: int) -> list[np.ndarray]:
    levels = np.arange(1, num_candidates + 1) / (num_candidates + 1)
    candidates = []
    for conf in confidence[:-1]:
        quantiles = np.quantile(conf, levels)
        candidates.append(np.unique(np.concatenate([[0.0], quantiles, [NEVER_EXIT]])))
    return candidates


# --------------------------------------------------------------------------------------
# The Pareto front.
#
# Candidates of stage s are sorted: T_s[0] < ... < T_s[m_s - 1]. A sample's bin at
# stage s is b_s = #{j : T_s[j] <= conf_s}; with threshold T_s[j] it exits at s iff
# b_s > j. So a threshold set is a vector of candidate indices, and every count is a
# count of samples by bins.


def _pareto_front(split: _Split, num_candidates: int) -> list[PolicyResult]:
    if split.num_stages == 1:
        return [split.evaluate(())]
    candidates = _candidate_thresholds(split.confidence, num_candidates)
    bins = np.stack(
        [np.searchsorted(t, c, side="right") for t, c in zip(candidates, split.confidence)]
    )
    if split.num_stages <= 3:
        indices, counts, num_correct = _grid_outcomes(split, bins, candidates)
    else:
        indices, counts, num_correct = _local_search_outcomes(split, bins, candidates)
    keep = _pareto_indices(_total_flops(counts, split.stage_flops), num_correct)
    front = []
    for k in keep:
        taus = tuple(float(t[j]) for t, j in zip(candidates, indices[k]))
        front.append(split.result(taus, counts[k], int(num_correct[k])))
    return front


def _pareto_indices(total_flops: np.ndarray, num_correct: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, by FLOPs ascending; ties: first index."""
    order = np.lexsort((np.arange(total_flops.size), -num_correct, total_flops))
    sorted_correct = num_correct[order]
    best_before = np.concatenate([[-1], np.maximum.accumulate(sorted_correct)[:-1]])
    # Within equal FLOPs the most accurate comes first, so "strictly more accurate
    # than everything cheaper-or-equal before it" is exactly non-domination.
    return order[sorted_correct > best_before]


def _grid_outcomes(
    split: _Split, bins: np.ndarray, candidates: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit counts and correct counts of every point of the full candidate grid.

    Samples exiting at stage s with index vector j are those with b_t <= j_t for
    t < s and b_s > j_s (all t < S for the last stage): a histogram of the bins with
    prefix sums along the "<=" axes and a strict suffix sum along the ">" axis.

    Returns:
        indices [G, S-1] (grid points in lexicographic order), counts [G, S] and
        num_correct [G].
    """
    sizes = tuple(t.size for t in candidates)
    num_stages = split.num_stages
    counts = np.zeros(sizes + (num_stages,), dtype=np.int64)
    num_correct = np.zeros(sizes, dtype=np.int64)
    for s in range(num_stages):
        is_last = s == num_stages - 1
        dims = sizes if is_last else sizes[: s + 1]
        hist_shape = tuple(m + 1 for m in dims)  # bins range over 0..m.
        flat = np.ravel_multi_index(tuple(bins[: len(dims)]), hist_shape)

        def exit_table(selected: np.ndarray) -> np.ndarray:
            hist = np.bincount(selected, minlength=math.prod(hist_shape)).reshape(hist_shape)
            for axis in range(len(dims) if is_last else s):
                hist = np.cumsum(hist, axis=axis)  # b_t <= j_t
            if not is_last:
                hist = _strict_suffix_sums(hist, axis=s)  # b_s > j_s
            # Candidate indices run over 0..m-1; broadcast over the later stages.
            hist = hist[tuple(slice(0, m) for m in dims)]
            return hist.reshape(dims + (1,) * (len(sizes) - len(dims)))

        counts[..., s] = exit_table(flat)
        num_correct += exit_table(flat[split.correct[s]])
    indices = np.stack(np.unravel_index(np.arange(math.prod(sizes)), sizes), axis=1)
    return indices, counts.reshape(-1, num_stages), num_correct.reshape(-1)


def _sweep_outcomes(
    split: _Split, bins: np.ndarray, points: np.ndarray, sizes: tuple[int, ...]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outcomes of `points` [P, S-1] with one stage's threshold swept, for each stage.

    For every stage s < S, point p and candidate index j: the outcome of p with its
    s-th entry replaced by j, from one pass over the samples (histograms over
    (point, bin) pairs).

    Returns:
        For each stage s < S: counts [P, sizes[s], S] and num_correct [P, sizes[s]].
    """
    num_stages, num_samples = split.correct.shape
    num_points = points.shape[0]
    samples = np.arange(num_samples)[None, :]
    point_ids = np.arange(num_points)[:, None]

    # first / second: the first and the second stage (0-based) at which each sample
    # would exit under each point, S - 1 (the last) when there is none. Sweeping stage
    # s changes nothing for samples with first < s; the others exit at s or, if not,
    # at `first` (first > s) or at `second` (first == s).
    would_exit = bins[None, :, :] > points[:, :, None]  # [P, S-1, N]
    last = num_stages - 1
    first = np.where(would_exit.any(axis=1), np.argmax(would_exit, axis=1), last)
    would_exit &= np.arange(num_stages - 1)[None, :, None] > first[:, None, :]
    second = np.where(would_exit.any(axis=1), np.argmax(would_exit, axis=1), last)
    first_right = split.correct[first, samples]
    second_right = split.correct[second, samples]

    outcomes = []
    for stage, size in enumerate(sizes):
        before = first < stage
        fixed_counts = np.bincount(
            (point_ids * num_stages + first)[before], minlength=num_points * num_stages
        ).reshape(num_points, num_stages)
        fixed_right = np.count_nonzero(first_right & before, axis=1)

        reach = ~before
        at_stage = first == stage
        fallback = np.where(at_stage, second, first)
        fallback_right = np.where(at_stage, second_right, first_right)
        cell = point_ids * (size + 1) + bins[stage][None, :]  # [P, N]: (point, bin)

        def hist(selected: np.ndarray, width: int = 1) -> np.ndarray:
            flat = np.bincount(selected, minlength=num_points * (size + 1) * width)
            return flat.reshape((num_points, size + 1) + ((width,) if width > 1 else ()))

        # Exit at `stage` with candidate j iff bin > j: strict suffix sums over bins;
        # otherwise on to the fallback stage: prefix sums over bin <= j.
        exit_here = _strict_suffix_sums(hist(cell[reach]), axis=1)
        exit_here_right = _strict_suffix_sums(
            hist(cell[reach & split.correct[stage][None, :]]), axis=1
        )
        go_on = hist((cell * num_stages + fallback)[reach], num_stages)
        go_on = np.cumsum(go_on, axis=1)[:, :size]
        go_on_right = np.cumsum(hist(cell[reach & fallback_right]), axis=1)[:, :size]

        counts = go_on + fixed_counts[:, None, :]
        counts[:, :, stage] += exit_here
        outcomes.append((counts, fixed_right[:, None] + exit_here_right + go_on_right))
    return outcomes


def _strict_suffix_sums(hist: np.ndarray, axis: int = 0) -> np.ndarray:
    """out[j] = sum(hist[j + 1:]) along `axis`, for j = 0..hist.shape[axis] - 2."""
    suffix = np.flip(np.cumsum(np.flip(hist, axis=axis), axis=axis), axis=axis)
    return np.take(suffix, np.arange(1, hist.shape[axis]), axis=axis)


def _local_search_outcomes(
    split: _Split, bins: np.ndarray, candidates: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pareto local search over the candidate grid (S > 3; see `accuracy_flops_curve`).

    Returns:
        indices [P, S-1], counts [P, S] and num_correct [P] of every point evaluated.
    """
    sizes = tuple(t.size for t in candidates)
    longest = max(sizes)
    # Seeds: the shared-quantile diagonal, from "all exit at 1" to "none exits early".
    seeds = np.array(
        [[round(k * (m - 1) / max(longest - 1, 1)) for m in sizes] for k in range(longest)]
    )
    seed_counts = np.zeros((len(seeds), split.num_stages), dtype=np.int64)
    seed_correct = np.zeros(len(seeds), dtype=np.int64)
    for i, point in enumerate(seeds):
        stages = _exit_stages(split.confidence, tuple(t[j] for t, j in zip(candidates, point)))
        seed_counts[i] = np.bincount(stages - 1, minlength=split.num_stages)
        seed_correct[i] = np.count_nonzero(split.correct[stages - 1, np.arange(stages.size)])
    indices, counts, num_correct = [seeds], [seed_counts], [seed_correct]

    # Bound the [P, S-1, N] temporaries of a batched sweep to ~2**24 elements.
    batch = max(1, 2**24 // (len(sizes) * split.num_samples))
    expanded: set[tuple[int, ...]] = set()
    for _ in range(_MAX_SEARCH_ROUNDS):
        all_indices = np.concatenate(indices)
        keep = _pareto_indices(
            _total_flops(np.concatenate(counts), split.stage_flops), np.concatenate(num_correct)
        )
        new = np.array([all_indices[k] for k in keep if tuple(all_indices[k]) not in expanded])
        if new.size == 0:
            break
        expanded.update(map(tuple, new))
        for start in range(0, len(new), batch):
            points = new[start : start + batch]
            sweeps = _sweep_outcomes(split, bins, points, sizes)
            for stage, (size, (line_counts, line_correct)) in enumerate(zip(sizes, sweeps)):
                line = np.repeat(points[:, None, :], size, axis=1)
                line[:, :, stage] = np.arange(size)
                indices.append(line.reshape(-1, len(sizes)))
                counts.append(line_counts.reshape(-1, split.num_stages))
                num_correct.append(line_correct.reshape(-1))
    return np.concatenate(indices), np.concatenate(counts), np.concatenate(num_correct)


# --------------------------------------------------------------------------------------
# Validation.


def _stage_predictions(probs: Any) -> tuple[np.ndarray, np.ndarray, int]:
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
        if not _is_real_dtype(p.dtype):
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


def _is_real_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _check_labels(labels: Any, num_samples: int, num_classes: int) -> np.ndarray:
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


def _check_stage_flops(stage_flops: Any, num_stages: int) -> np.ndarray:
    try:
        values = [_check_real("stage_flops", f, echo=stage_flops) for f in stage_flops]
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


def _check_thresholds(thresholds: Any, num_stages: int) -> tuple[float, ...]:
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
    taus = tuple(_check_real("thresholds", t, echo=thresholds) for t in thresholds)
    if len(taus) != num_stages - 1:
        raise ValueError(
            f"Expected {num_stages - 1} thresholds for {num_stages} stages (the last "
            f"stage always answers). Received: thresholds={thresholds!r}"
        )
    return taus


def _check_num_candidates(num_candidates: Any) -> int:
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, numbers.Integral):
        raise TypeError(
            f"Expected an integer `num_candidates`. Received: num_candidates={num_candidates!r}"
        )
    if num_candidates < 1:
        raise ValueError(
            f"Expected num_candidates >= 1. Received: num_candidates={num_candidates!r}"
        )
    return int(num_candidates)


def _check_real(name: str, value: Any, echo: Any = None) -> float:
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
