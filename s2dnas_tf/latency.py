"""Batch-1 latency of exported models: one image at a time, after a warm-up, wall clock.

Measures; asserts nothing about speed. Used by experiments/latency.py and
experiments/benchmark.py so both time models the same way.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


def time_calls(
    call: Callable[[np.ndarray], Any], images: Sequence[np.ndarray], warmup: int = 20
) -> tuple[dict[str, float], list[Any], np.ndarray]:
    """Calls `call` once per image (after `warmup` untimed calls on the first images).

    Returns:
        ({"mean_ms", "median_ms", "p90_ms"}, the outputs in order, each call's ms).
    """
    if len(images) == 0:
        raise ValueError("Expected at least one image to time. Received: none")
    for image in images[:warmup]:
        call(image)
    seconds = []
    outputs = []
    for image in images:
        start = time.perf_counter()
        out = call(image)
        seconds.append(time.perf_counter() - start)
        outputs.append(out)
    ms = np.asarray(seconds) * 1000.0
    return {
        "mean_ms": float(ms.mean()),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
    }, outputs, ms


def by_exit(ms: np.ndarray, exit_stages: np.ndarray) -> dict[str, list[float | None]]:
    """What an image costs when it stops at stage 1, 2, ..., max(exit_stages).

    Returns:
        {"mean_ms_by_exit": [...], "median_ms_by_exit": [...]}: the mean and median time
        of the calls that exited at each stage (None for a stage no image stopped at).
        Weighted by the exit fractions, the means give back the overall mean.
    """
    ms, exit_stages = np.asarray(ms), np.asarray(exit_stages)
    if ms.shape != exit_stages.shape:
        raise ValueError(
            f"Expected one exit stage per timed call. Received: {ms.shape[0]} times and "
            f"{exit_stages.shape[0]} exit stages"
        )
    last = int(exit_stages.max()) if len(exit_stages) else 0
    at = [exit_stages == s for s in range(1, last + 1)]
    return {
        "mean_ms_by_exit": [float(ms[m].mean()) if m.any() else None for m in at],
        "median_ms_by_exit": [float(np.median(ms[m])) if m.any() else None for m in at],
    }


def estimated_ms(exit_fractions: Sequence[float], ms_by_exit: Sequence[float | None]):
    """The mean time per image of an exit policy: sum_s fraction_s * (mean time of an
    image that stops at s). None if the policy sends images to a stage whose time is
    unknown (no timed image stopped there)."""
    total = 0.0
    for s, fraction in enumerate(exit_fractions):
        if fraction <= 0:
            continue
        if s >= len(ms_by_exit) or ms_by_exit[s] is None:
            return None
        total += fraction * ms_by_exit[s]
    return total


def set_tf_threads(threads: int) -> None:
    """Runs TensorFlow's ops on `threads` threads (intra-op and inter-op pools).

    At batch 1 the ops of a small CNN are too small to split: on the 2-core development
    machine a ResNet-20 SavedModel took 2.3 ms per image with TensorFlow's default pools and
    1.3 ms with one thread. The latency tools time with one thread by default, like the
    TFLite interpreter. Call it before TensorFlow runs its first op.

    Raises:
        ValueError: `threads` < 1.
        TypeError: `threads` is not an int.
        RuntimeError: TensorFlow has already started (its pools are fixed then).
    """
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int. Received: {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1. Received: {threads}")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as e:
        raise RuntimeError(
            "set_tf_threads must be called before TensorFlow runs any op; it has started "
            f"already ({e})."
        ) from e


def batch1_images(x: np.ndarray) -> list[np.ndarray]:
    """The rows of an image batch as float32 batches of one."""
    return [img[None].astype("float32") for img in x]


def time_saved_model(
    path: str, images: Sequence[np.ndarray], warmup: int = 20
) -> tuple[dict[str, float], np.ndarray]:
    """Times the `serving_batch1` signature of an exported SavedModel (see `export`).

    Returns:
        (timing stats, with each exit path's mean and median (`by_exit`), the exit stage
        of every image, int array).
    """
    import tensorflow as tf

    from s2dnas_tf import export

    fn = tf.saved_model.load(path).signatures[export.SERVING_BATCH1]
    stats, outs, ms = time_calls(lambda x: fn(images=tf.constant(x)), images, warmup)
    exit_stages = np.concatenate([o["exit_stage"].numpy() for o in outs])
    stats.update(by_exit(ms, exit_stages))
    return stats, exit_stages


def time_tflite(
    path: str, images: Sequence[np.ndarray], warmup: int = 20, threads: int = 1
) -> dict[str, float]:
    """Times a .tflite file's serving_default signature with the LiteRT interpreter
    (ai-edge-litert, the `dev` extra); raises ImportError without it. The stats include
    each exit path's mean and median (`by_exit`)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    stats, outs, ms = time_calls(lambda x: runner(images=x), images, warmup)
    exit_stages = np.concatenate([np.asarray(o["exit_stage"]).reshape([-1]) for o in outs])
    stats.update(by_exit(ms, exit_stages))
    return stats
