"""The accuracy vs. average FLOPs Pareto front over exit thresholds.

`candidate_thresholds` gives each stage's candidates; `accuracy_flops_curve` searches
their grid (exhaustively for S <= 3, by Pareto local search beyond) and keeps the
non-dominated points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from s2dnas_tf.calibration.checks import check_num_candidates, stage_predictions
from s2dnas_tf.calibration.policy import (
    NEVER_EXIT,
    PolicyResult,
    Split,
    exit_stages_from_confidence,
    sum_flops,
)

# Local search for S > 3 (see `accuracy_flops_curve`): a bound on the rounds of
# Pareto local search, so its cost stays predictable. It converges well before.
_MAX_SEARCH_ROUNDS = 50


def candidate_thresholds(probs: Any, num_candidates: int = 50) -> list[np.ndarray]:
    """The per-stage threshold candidates the calibration searches over.

    For each stage s < S: `num_candidates` quantiles of that stage's max softmax
    probability on this split, at the evenly spaced levels k / (num_candidates + 1),
    k = 1..num_candidates, plus 0.0 (every sample exits) and `NEVER_EXIT` (none does);
    sorted and without duplicates.

    Args:
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        num_candidates: number of quantiles per stage.

    Returns:
        S - 1 sorted float64 arrays (an empty list for S = 1).

    Raises:
        ValueError: if `probs` is invalid or `num_candidates` < 1.
        TypeError: if an argument has the wrong type.
    """
    num_candidates = check_num_candidates(num_candidates)
    confidence, _, _ = stage_predictions(probs)
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
        probs: the S stages' softmax outputs (see `s2dnas_tf.calibration`).
        labels: int array [N] of true classes.
        stage_flops: S cumulative FLOPs, strictly increasing.
        num_candidates: number of quantile thresholds per stage.

    Returns:
        The front as a list of `PolicyResult`; for S = 1 the single static point.

    Raises:
        ValueError: if the shapes or values of the arguments are invalid.
        TypeError: if an argument is not numeric.
    """
    num_candidates = check_num_candidates(num_candidates)
    split = Split.build(probs, labels, stage_flops)
    return _pareto_front(split, num_candidates)


# --------------------------------------------------------------------------------------
# Counting over the candidate grid.
#
# Candidates of stage s are sorted: T_s[0] < ... < T_s[m_s - 1]. A sample's bin at
# stage s is b_s = #{j : T_s[j] <= conf_s}; with threshold T_s[j] it exits at s iff
# b_s > j. So a threshold set is a vector of candidate indices, and every count is a
# count of samples by bins.


def _candidate_thresholds(confidence: np.ndarray, num_candidates: int) -> list[np.ndarray]:
    levels = np.arange(1, num_candidates + 1) / (num_candidates + 1)
    candidates = []
    for conf in confidence[:-1]:
        quantiles = np.quantile(conf, levels)
        candidates.append(np.unique(np.concatenate([[0.0], quantiles, [NEVER_EXIT]])))
    return candidates


def _pareto_front(split: Split, num_candidates: int) -> list[PolicyResult]:
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
    keep = _pareto_indices(sum_flops(counts, split.stage_flops), num_correct)
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
    split: Split, bins: np.ndarray, candidates: list[np.ndarray]
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
    split: Split, bins: np.ndarray, points: np.ndarray, sizes: tuple[int, ...]
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
    split: Split, bins: np.ndarray, candidates: list[np.ndarray]
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
        stages = exit_stages_from_confidence(
            split.confidence, tuple(t[j] for t, j in zip(candidates, point))
        )
        seed_counts[i] = np.bincount(stages - 1, minlength=split.num_stages)
        seed_correct[i] = np.count_nonzero(split.correct[stages - 1, np.arange(stages.size)])
    indices, counts, num_correct = [seeds], [seed_counts], [seed_correct]

    # Bound the [P, S-1, N] temporaries of a batched sweep to ~2**24 elements.
    batch = max(1, 2**24 // (len(sizes) * split.num_samples))
    expanded: set[tuple[int, ...]] = set()
    for _ in range(_MAX_SEARCH_ROUNDS):
        all_indices = np.concatenate(indices)
        keep = _pareto_indices(
            sum_flops(np.concatenate(counts), split.stage_flops), np.concatenate(num_correct)
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
