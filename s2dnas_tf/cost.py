"""What an exit path costs: FLOPs, or time on the target runtime predicted from per-op times
measured once on this machine (an FBNet-style lookup table).

An exit path s is what an image that leaves at stage s runs: the shared layers and every
layer of stages 1..s, their classifiers included (each stage's exit is decided on its own
logits). `exit_path_costs(net, cost)` gives the S cumulative costs of a multi-stage net, in
the cost's unit; `static_cost(model, cost)` the static model's.

- `"flops"`: `rewriter.stage_flops` (the package's FLOPs: multiply-accumulates, docs/design.md §4).
- `"tflite"`: each layer of the BatchNorm-folded net (`export.fold_batchnorm`, as the export
  deploys it; read off the unfolded net: a BatchNormalization that folds costs nothing, its
  convolution is timed with a bias) is timed alone: a one-layer Keras model of its
  configuration and input shapes, converted to TFLite (built-in ops, XNNPACK) and invoked
  `repeats` times on one image, median wall time, minus the time of invoking an empty model (`OpTimeTable.invoke_ms`, counted once
  per path). Layers the converter fuses into the layer before them cost nothing (a ReLU or
  ReLU6 after a convolution, dense layer or addition that nothing else reads), and so do
  layers that only reshape or pass data through (Flatten, Reshape, Dropout, Identity,
  InputLayer). Times are cached per op signature (the layer's class, its configuration
  without names, initialisers and regularisers, the input shapes) in a JSON file per machine
  and thread count, so a search measures each distinct op once and a second search none.
- `"saved_model"`: the same per-layer sum for TensorFlow's own runtime, as a SavedModel
  signature runs it at batch 1 (a TF Serving request of one image): each one-layer model is
  traced into a concrete function holding its weights as variables (as the export leaves
  them) and called on one image; the same fusions are assumed (TensorFlow's CPU graph
  optimiser fuses a convolution's bias and ReLU). It leaves out what a batch-1 SavedModel
  call spends outside the layers (the signature call, every stage's captured variables,
  the cond's untaken branch, docs/design.md §7), which dominates on this runtime: a rough
  predictor (docs/design.md §4 gives its measured error). Cached per machine, TensorFlow
  version and op-pool threads like the TFLite table, in its own file.

Predicted, not measured: the sum leaves out what happens between ops (the dynamic model's IF
ops and the copies at stage boundaries). How close it comes to exit paths timed whole is a
measurement for a quiet machine (issue 17: within 10 % median, 20 % worst, on 20 sampled
architectures), never an assertion of a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (  # no public equivalent
    convert_variables_to_constants_v2,
)

from s2dnas_tf import conventions, fileio, rewriter
from s2dnas_tf import graph as graph_lib
from s2dnas_tf.export.folding import batchnorm_folds
from s2dnas_tf.flops import count_flops

try:  # POSIX: the op-time cache is merged under a file lock
    import fcntl
except ImportError:  # Windows: merged without one
    fcntl = None

__all__ = ["COSTS", "TIME_COSTS", "OpTimeTable", "exit_path_costs", "op_signature",
           "static_cost"]

# The time costs are runtimes an exit path's time is predicted for.
TIME_COSTS = ("tflite", "saved_model")
COSTS = ("flops",) + TIME_COSTS

# Layers that move or relabel data without arithmetic the runtime spends time on.
_FREE = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.Identity,
)
# Layers whose following ReLU/ReLU6 the TFLite converter fuses into them.
_FUSING = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
    keras.layers.Add,
)
_MIN_OP_MS = 1e-4
_CONFIG_SKIP = ("name", "trainable", "dtype", "dtype_policy")
_CONFIG_SKIP_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


def _is_relu(layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        cfg = layer.get_config()
        return not cfg.get("negative_slope") and not cfg.get("threshold")
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6")
    return False


def op_signature(layer, input_shapes: Sequence[Sequence[int]], **overrides) -> str:
    """The lookup key of `layer` called on inputs of `input_shapes` (batch axis excluded):
    its class and configuration (names, initialisers, regularisers and constraints left out;
    `overrides` replace entries, e.g. `use_bias=True` for a convolution a BatchNormalization
    folds into) and the shapes, as canonical JSON."""
    config = {
        k: v for k, v in {**layer.get_config(), **overrides}.items()
        if k not in _CONFIG_SKIP and not k.endswith(_CONFIG_SKIP_SUFFIXES)
    }
    return json.dumps(
        {"class": type(layer).__name__, "config": config,
         "inputs": [[int(d) for d in s] for s in input_shapes]},
        sort_keys=True, default=str,
    )


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def _tf_threads() -> int:
    """The size of TensorFlow's intra-op pool in this process (0: one thread per core)."""
    return tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


class OpTimeTable:
    """Batch-1 times of single ops on this machine in one runtime, measured on first use,
    cached.

    Args:
        path: The JSON cache file; None: `$S2DNAS_CACHE_DIR` (default
            `~/.cache/s2dnas_tf`)/`<runtime>_ops_<machine, TensorFlow version, threads>.json`.
        threads: The TFLite interpreter's threads (as the deployment runs it; None: 1). For
            "saved_model" the threads are TensorFlow's op pool's in this process (set by
            `tf.config.threading` before TensorFlow runs anything): None, or that number.
        repeats: Timed invocations per op (the median is kept), after `warmup` untimed ones.
        runtime: One of `TIME_COSTS`: "tflite" (the LiteRT interpreter, XNNPACK) or
            "saved_model" (TensorFlow's runtime calling a concrete function).

    Raises:
        ValueError: For an unknown runtime, or counts out of range.
    """

    def __init__(self, path: str | None = None, threads: int | None = None, repeats: int = 200,
                 warmup: int = 20, runtime: str = "tflite"):
        if runtime not in TIME_COSTS:
            raise ValueError(f"runtime must be one of {TIME_COSTS}. Received: {runtime!r}")
        if runtime == "tflite" and threads is None:
            threads = 1
        elif runtime == "saved_model":
            if threads is not None and threads != _tf_threads():
                raise ValueError(
                    "A saved_model table times ops on TensorFlow's op pool of this process "
                    f"({_tf_threads()} threads; tf.config.threading sets it). Received: "
                    f"threads={threads!r}")
            threads = _tf_threads()
        if not isinstance(threads, int) or threads < 1 or repeats < 1 or warmup < 0:
            raise ValueError(
                "threads and repeats must be >= 1 and warmup >= 0. Received: "
                f"threads={threads!r}, repeats={repeats!r}, warmup={warmup!r}"
            )
        self.runtime = runtime
        self.threads, self.repeats, self.warmup = threads, repeats, warmup
        self.machine = _machine()
        if path is None:
            tag = hashlib.sha256(
                f"{self.machine}|{tf.__version__}|{threads}".encode()
            ).hexdigest()[:12]
            root = os.environ.get("S2DNAS_CACHE_DIR",
                                  os.path.join(os.path.expanduser("~"), ".cache", "s2dnas_tf"))
            path = os.path.join(root, f"{runtime}_ops_{tag}.json")
        self.path = path
        self.ops: dict[str, float] = self._stored()
        self.measured = 0  # ops measured by this table (not read from the cache)
        self._invoke_ms = self.ops.get("__invoke__")

    def _stored(self) -> dict[str, float]:
        """The cache file's op times for this table's runtime and threads ({} if none)."""
        if not os.path.isfile(self.path):
            return {}
        with open(self.path) as f:
            stored = json.load(f)
        if (stored.get("threads") != self.threads
                or stored.get("runtime", "tflite") != self.runtime):
            return {}
        return {k: float(v) for k, v in stored.get("ops", {}).items()}

    @property
    def invoke_ms(self) -> float:
        """The time of invoking a model that does (almost) nothing: counted once per path."""
        if self._invoke_ms is None:
            images = keras.Input((1,))
            self._invoke_ms = self._time(keras.Model(images, keras.layers.Identity()(images)))
            self.ops["__invoke__"] = self._invoke_ms
        return self._invoke_ms

    def op_ms(self, layer, input_shapes: Sequence[Sequence[int]], **overrides) -> float:
        """`layer`'s own time on inputs of `input_shapes` (no batch axis), in ms: measured
        once (a fresh layer of its configuration with `overrides`, random weights), then
        looked up."""
        key = op_signature(layer, input_shapes, **overrides)
        if key not in self.ops:
            inputs = [keras.Input(tuple(s)) for s in input_shapes]
            fresh = type(layer).from_config({**layer.get_config(), **overrides})
            outputs = fresh(inputs if len(inputs) > 1 else inputs[0])
            total = self._time(keras.Model(inputs, outputs))
            # Floored just above 0: every op costs something, so exit paths stay increasing.
            self.ops[key] = max(_MIN_OP_MS, total - self.invoke_ms)
            self.measured += 1
        return self.ops[key]

    def save(self) -> None:
        """Writes the cache (atomically), merged with what other processes saved to it
        since this table read it: searches run side by side share one file, and an op both
        measured keeps the time saved first, so every later reader predicts the same."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".lock", "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # read, merge and write as one step
            try:
                self.ops.update(self._stored())
                fileio.write_json(self.path, {"machine": self.machine,
                                              "tensorflow": tf.__version__,
                                              "runtime": self.runtime, "threads": self.threads,
                                              "ops": self.ops})
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        self._invoke_ms = self.ops.get("__invoke__", self._invoke_ms)

    def _time(self, model: keras.Model) -> float:
        if self.runtime == "saved_model":
            return self._time_saved_model(model)
        return self._time_tflite(model)

    def _timed_median(self, call) -> float:
        for _ in range(self.warmup):
            call()
        seconds = np.empty(self.repeats)
        for i in range(self.repeats):
            start = time.perf_counter()
            call()
            seconds[i] = time.perf_counter() - start
        return float(np.median(seconds) * 1e3)

    def _time_saved_model(self, model: keras.Model) -> float:
        specs = [tf.TensorSpec((1,) + tuple(t.shape[1:]), tf.float32) for t in model.inputs]
        fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
        concrete = fn.get_concrete_function(*specs)
        rng = np.random.default_rng(0)
        inputs = [tf.constant(rng.random(tuple(s.shape), dtype=np.float32)) for s in specs]
        return self._timed_median(lambda: concrete(*inputs))

    def _time_tflite(self, model: keras.Model) -> float:
        from ai_edge_litert.interpreter import Interpreter

        specs = [tf.TensorSpec((1,) + tuple(t.shape[1:]), tf.float32) for t in model.inputs]
        fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False))
        # Weights as constants, as the export's SavedModel route leaves them: converted with
        # variables, TFLite keeps READ_VARIABLE ops and a conv is ~3x slower (measured).
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function(*specs))
        # The model as trackable_obj: without one the converter warns once per op timed.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
        interpreter = Interpreter(model_content=content, num_threads=self.threads)
        interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"],
                                   rng.random(detail["shape"], dtype=np.float32))
        return self._timed_median(interpreter.invoke)


def _node_stages(graph: graph_lib.Graph) -> dict[int, int]:
    """Each node's stage: from its layer's name (`stage{s}_` / `shared_`), else the latest
    stage among its inputs' producers (1 for what reads only the images)."""
    producer = {k: n for n in graph.nodes for k in n.outputs}
    stages: dict[int, int] = {}
    for node in graph.nodes:
        stage = conventions.stage_of_layer(getattr(node.layer, "name", ""))
        if stage is None:
            stage = max((stages[producer[k].index] for k in node.inputs if k in producer),
                        default=1)
        stages[node.index] = stage
    return stages


def _node_ms(graph: graph_lib.Graph, table: OpTimeTable) -> dict[int, float]:
    """Each node's time as the export deploys it: a convolution + BatchNormalization pair
    that `fold_batchnorm` folds is the convolution with a bias (the BatchNormalization costs
    nothing), read off the unfolded graph instead of rebuilding it folded (building the
    folded copy cost about as much as building the net)."""
    folds = batchnorm_folds(graph)
    by_index = {n.index: n for n in graph.nodes}
    folded_into = {bn.index: by_index[conv] for conv, bn in folds.items()}
    producer = {k: n for n in graph.nodes for k in n.outputs}
    times = {}
    for node in graph.nodes:
        layer = node.layer
        if (not isinstance(layer, keras.layers.Layer) or isinstance(layer, _FREE)
                or node.index in folded_into):
            times[node.index] = 0.0
            continue
        if _is_relu(layer) and len(node.inputs) == 1:
            source = producer.get(node.inputs[0])
            if source is not None and source.index in folded_into:
                source = folded_into[source.index]  # the convolution it folds into
            if (source is not None and isinstance(source.layer, _FUSING)
                    and len(graph.consumers(node.inputs[0])) == 1
                    and getattr(getattr(source.layer, "activation", None), "__name__",
                                "linear") == "linear"):
                times[node.index] = 0.0  # fused into the op before it
                continue
        shapes = [graph.tensors[k].shape[1:] for k in node.inputs]
        overrides = {"use_bias": True} if node.index in folds else {}
        times[node.index] = table.op_ms(layer, shapes, **overrides)
    return times


def exit_path_costs(net: keras.Model, cost: str = "flops",
                    table: OpTimeTable | None = None) -> list[float]:
    """The cumulative cost of leaving at each stage of a multi-stage net (`transform`'s
    output; a static model is one stage).

    Args:
        net: The net.
        cost: One of `COSTS`.
        table: The op times of a time cost, an `OpTimeTable` of that runtime (default: this
            machine's cached table).

    Returns:
        S floats: FLOPs, or predicted milliseconds.

    Raises:
        ValueError: For an unknown cost, or a table of another runtime.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}. Received: cost={cost!r}")
    if cost == "flops":
        if len(net.outputs) == 1:
            return [float(count_flops(net))]
        return [float(f) for f in rewriter.stage_flops(net)]
    table = table or OpTimeTable(runtime=cost)
    if table.runtime != cost:
        raise ValueError(f"cost={cost!r} needs an OpTimeTable of that runtime. Received: a "
                         f"table of runtime={table.runtime!r}")
    graph = graph_lib.trace(net, single_output=False)
    stages = _node_stages(graph)
    times = _node_ms(graph, table)
    num_stages = len(graph.outputs) if len(graph.outputs) > 1 else 1
    per_stage = np.zeros(num_stages)
    for node in graph.nodes:
        per_stage[min(stages[node.index], num_stages) - 1] += times[node.index]
    return [float(v) for v in table.invoke_ms + np.cumsum(per_stage)]


def static_cost(model: keras.Model, cost: str = "flops",
                table: OpTimeTable | None = None) -> float:
    """The static model's cost (its one path)."""
    return exit_path_costs(model, cost, table)[-1]
