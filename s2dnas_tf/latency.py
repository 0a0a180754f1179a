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
) -> tuple[dict[str, float], list[Any]]:
    """Calls `call` once per image (after `warmup` untimed calls on the first images).

    Returns:
        ({"mean_ms", "median_ms", "p90_ms"}, the outputs in order).
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
    }, outputs


def batch1_images(x: np.ndarray) -> list[np.ndarray]:
    """The rows of an image batch as float32 batches of one."""
    return [img[None].astype("float32") for img in x]


def time_saved_model(
    path: str, images: Sequence[np.ndarray], warmup: int = 20
) -> tuple[dict[str, float], np.ndarray]:
    """Times the `serving_batch1` signature of an exported SavedModel (see `export`).

    Returns:
        (timing stats, the exit stage of every image, int array).
    """
    import tensorflow as tf

    from s2dnas_tf import export

    fn = tf.saved_model.load(path).signatures[export.SERVING_BATCH1]
    stats, outs = time_calls(lambda x: fn(images=tf.constant(x)), images, warmup)
    return stats, np.concatenate([o["exit_stage"].numpy() for o in outs])


def time_tflite(
    path: str, images: Sequence[np.ndarray], warmup: int = 20, threads: int = 1
) -> dict[str, float]:
    """Times a .tflite file's serving_default signature with the LiteRT interpreter
    (ai-edge-litert, the `dev` extra); raises ImportError without it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    stats, _ = time_calls(lambda x: runner(images=x), images, warmup)
    return stats
