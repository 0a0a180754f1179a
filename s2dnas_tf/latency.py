"""Latency of exported models, wall clock after a warm-up: one image at a time
(`time_models`: SavedModel and TFLite), and per image at a server's batch size
(`time_saved_model_batches`: SavedModel `serving_default` on batches of 64).

Measures; asserts nothing about speed. Used by experiments/latency.py and
experiments/benchmark.py so both time models the same way.

Models that are compared are timed together (`time_models`): in rounds of `chunk` images,
each model in turn, so that a slow spell of the machine (on the shared 2-core development
VM the same model's time drifted by up to 30 % between minutes) falls on all of them
alike and their ratios stay meaningful.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from s2dnas_tf import export


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "mean_ms": float(ms.mean()),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
    }


def time_interleaved(
    calls: dict[str, Callable[[np.ndarray], Any]],
    images: Sequence[np.ndarray],
    warmup: int = 20,
    chunk: int = 250,
) -> dict[str, tuple[dict[str, float], list[Any], np.ndarray]]:
    """Calls each of `calls` once per image, wall clock, interleaved: every call warms up
    (`warmup` untimed calls on the first images), then in rounds of `chunk` images each
    call runs over the round's images (the order of the calls rotates from round to
    round), until every call has seen every image once.

    Returns:
        {name: (stats, outputs in image order, each call's ms)}.
    """
    if len(images) == 0:
        raise ValueError("Expected at least one image to time. Received: none")
    if not calls:
        raise ValueError("Expected at least one model to time. Received: none")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1. Received: {chunk}")
    names = list(calls)
    for name in names:
        for image in images[:warmup]:
            calls[name](image)
    seconds = {name: [] for name in names}
    outputs = {name: [] for name in names}
    for round_index, start in enumerate(range(0, len(images), chunk)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            call = calls[name]
            for image in images[start : start + chunk]:
                begin = time.perf_counter()
                out = call(image)
                seconds[name].append(time.perf_counter() - begin)
                outputs[name].append(out)
    result = {}
    for name in names:
        ms = np.asarray(seconds[name]) * 1000.0
        result[name] = (_stats(ms), outputs[name], ms)
    return result


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


def estimated_ms(
    exit_fractions: Sequence[float], ms_by_exit: Sequence[float | None] | None
) -> float | None:
    """The mean time per image of an exit policy: sum_s fraction_s * (mean time of an
    image that stops at s). None if the policy sends images to a stage whose time is
    unknown (no timed image stopped there), or if `ms_by_exit` is None (not timed)."""
    if ms_by_exit is None:
        return None
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


SAVED_MODEL = "saved_model"
TFLITE = "tflite"


def _saved_model_call(path: str, signature: str = export.SERVING_BATCH1):
    import tensorflow as tf

    fn = tf.saved_model.load(path).signatures[signature]
    return lambda x: fn(images=tf.constant(x))


def _tflite_call(path: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner("serving_default")
    return lambda x: runner(images=x)


def time_models(
    models: dict[str, tuple[str, str]],
    images: Sequence[np.ndarray],
    warmup: int = 20,
    threads: int = 1,
    chunk: int = 250,
) -> dict[str, dict[str, Any]]:
    """Times exported models together (`time_interleaved`), one image at a time.

    Args:
        models: {name: (kind, path)}: kind `SAVED_MODEL` (a SavedModel directory of
            `export`; its `serving_batch1` signature is timed) or `TFLITE` (a .tflite
            file of `export.convert_to_tflite`, run by the LiteRT interpreter of
            ai-edge-litert, the `dev` extra, with `threads` threads).
        images: Batches of one image, float32 [1, H, W, C].

    Returns:
        {name: stats}: "mean_ms", "median_ms", "p90_ms", each exit path's mean and median
        (`by_exit`), "exit_stages" (int array, the model's own exit for each image) and
        "predictions" (int array, the arg max of its logits for each image: what an int8
        model's accuracy is measured from).

    Raises:
        ValueError: An unknown kind, or no images.
        ImportError: A TFLite model without ai-edge-litert installed.
    """
    calls = {}
    for name, (kind, path) in models.items():
        if kind == SAVED_MODEL:
            calls[name] = _saved_model_call(path)
        elif kind == TFLITE:
            calls[name] = _tflite_call(path, threads)
        else:
            raise ValueError(
                f"Expected model kinds {SAVED_MODEL!r} or {TFLITE!r}. Received: {kind!r} "
                f"for {name!r}"
            )
    timed = time_interleaved(calls, images, warmup, chunk)
    result = {}
    for name, (stats, outs, ms) in timed.items():
        exit_stages = np.concatenate(
            [np.asarray(o["exit_stage"]).reshape([-1]) for o in outs]
        ).astype(np.int64)
        stats.update(by_exit(ms, exit_stages))
        stats["exit_stages"] = exit_stages
        stats["predictions"] = np.concatenate(
            [np.asarray(o["logits"]).reshape([-1, np.shape(o["logits"])[-1]]).argmax(-1)
             for o in outs]
        ).astype(np.int64)
        result[name] = stats
    return result


def time_saved_model_batches(
    models: dict[str, str],
    x: np.ndarray,
    batch_size: int = 64,
    warmup: int = 2,
) -> dict[str, dict[str, Any]]:
    """Times SavedModels' `serving_default` on whole batches of `batch_size` images of `x`
    (the images past the last whole batch are left out), the models in turns
    (`time_interleaved`, one batch per call and per turn): a server's time per image.

    Args:
        models: {name: SavedModel directory of `export`}.
        x: Images, [N, H, W, C], N >= batch_size.
        batch_size: Images per call.
        warmup: Untimed calls before timing.

    Returns:
        {name: {"batch_size", "num_images", "mean_ms_per_image", "median_ms_per_image",
        "exit_stages" (int array, each timed image's exit)}}.

    Raises:
        ValueError: If `batch_size` < 1 or `x` holds fewer images than one batch.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1. Received: {batch_size!r}")
    count = (len(x) // batch_size) * batch_size
    if count == 0:
        raise ValueError(
            f"Expected at least batch_size={batch_size} images to time. Received: {len(x)}"
        )
    batches = [np.asarray(x[i : i + batch_size], np.float32) for i in range(0, count, batch_size)]
    calls = {name: _saved_model_call(path, export.SERVING_DEFAULT)
             for name, path in models.items()}
    # One batch per turn: a batch takes long enough that rotating after each one spreads a
    # disturbance of the machine over every model.
    timed = time_interleaved(calls, batches, warmup, chunk=1)
    result = {}
    for name, (_, outs, ms) in timed.items():
        per_image = ms / batch_size
        result[name] = {
            "batch_size": batch_size,
            "num_images": count,
            "mean_ms_per_image": float(per_image.mean()),
            "median_ms_per_image": float(np.median(per_image)),
            "exit_stages": np.concatenate(
                [np.asarray(o["exit_stage"]).reshape([-1]) for o in outs]).astype(np.int64),
        }
    return result
