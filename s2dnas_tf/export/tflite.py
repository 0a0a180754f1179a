"""TFLite conversion of the batch-1 serving function, and a reader of the flatbuffer's op names."""

from __future__ import annotations

import collections
import os
import pathlib
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf

from s2dnas_tf import conventions
from s2dnas_tf import fileio
from s2dnas_tf.export.saved_model import write_saved_model
from s2dnas_tf.export.serving import (
    OUTPUT_NAMES,
    SERVING_BATCH1,
    SERVING_DEFAULT,
    DynamicModule,
    StaticModule,
)

# TFLite ops that show the dynamic control flow survived conversion.
_CONTROL_FLOW_OPS = frozenset({"IF", "WHILE"})
# TFLite ops that mean a variable was kept as a variable instead of frozen into a constant
# (the runtime then fails to read it inside IF branches).
_VARIABLE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})
# TFLite ops that do the arithmetic; in an int8 model their inputs must be int8.
_COMPUTE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)


def convert_to_tflite(
    source: str | os.PathLike | DynamicModule | StaticModule,
    path: str | os.PathLike,
    quantize: str | None = None,
    representative_images: np.ndarray | Iterable[np.ndarray] | None = None,
) -> str:
    """Converts the batch-1 signature to a TFLite model with built-in ops only.

    The model takes one raw image float32 [1, H, W, C] (signature `serving_default`,
    input `images`) and returns `logits`, `probabilities` and `exit_stage` like the
    SavedModel. Each stage s >= 2 is an `IF` op whose branch runs only if the image has not
    exited; the thresholds are frozen into the model as constants, like every weight.
    Checked after conversion (RuntimeError otherwise): the `IF` ops are there for S > 1, no
    variable ops are left, and the output names survived.

    With `quantize="int8"`, weights and activations are int8 (post-training quantisation,
    `TFLITE_BUILTINS_INT8` only), calibrated on `representative_images`; the interface
    stays float32 (a QUANTIZE op after the input, DEQUANTIZE before the outputs). Stage s is
    calibrated on the images that reach it under the model's thresholds, the inputs it sees
    in deployment; a stage that no representative image reaches cannot be calibrated and
    is refused before converting (ValueError naming the stage).

    Args:
        source: A SavedModel directory written by `export_saved_model` / `export_static`,
            or a `DynamicModule` / `StaticModule`.
        path: Where to write the `.tflite` file (replaced if it exists; written to a
            temporary file first).
        quantize: None (float32) or "int8".
        representative_images: Raw images [M, H, W, C] (or an iterable of [H, W, C]
            images) for int8 calibration; a few hundred real images are plenty.

    Returns:
        `path` as a string.

    Raises:
        ValueError: On a bad `quantize` value, missing or misshapen representative images,
            representative images that do not reach every stage, or a SavedModel without
            `serving_batch1`.
        TypeError: If `source` is neither a path nor a module.
        RuntimeError: If the conversion lost the control flow, left variables, renamed the
            outputs or (int8) left float arithmetic.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"Expected quantize=None or 'int8'. Received: quantize={quantize!r}")
    if quantize is None and representative_images is not None:
        raise ValueError(
            "representative_images calibrate int8 quantisation; pass quantize='int8' with "
            "them. Received: quantize=None with representative_images"
        )
    if isinstance(source, (DynamicModule, StaticModule)):
        # Converted from a SavedModel signature, the variables become constants; converted
        # from the module's own function, those read inside IF branches stay variables that
        # the TFLite runtime cannot read there ("READ_VARIABLE failed to invoke", TF 2.21).
        with tempfile.TemporaryDirectory() as tmp:
            saved = write_saved_model(source, tmp, "model", 1, overwrite=False)
            return convert_to_tflite(saved, path, quantize, representative_images)
    batch1, batched, trackable, num_stages, image_shape = _conversion_source(source)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([batch1], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    reached = None
    if quantize == "int8":
        images = _representative_array(representative_images, image_shape)
        exit_stage = np.concatenate(
            [batched(images=tf.constant(images[i : i + 256]))["exit_stage"].numpy()
             for i in range(0, len(images), 256)]
        )
        reached = [int(np.sum(exit_stage >= s)) for s in range(1, num_stages + 1)]
        if min(reached) == 0:
            raise ValueError(_unquantised_message(
                [s for s, n in enumerate(reached, 1) if n == 0], len(images), reached
            ))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    content = converter.convert()
    _check_tflite(content, num_stages, reached)

    path = pathlib.Path(path)
    fileio.write_bytes(path, content)
    return str(path)


def _conversion_source(source):
    """(batch-1 fn, batched fn, loaded SavedModel, S, (H, W, C)) of a SavedModel dir."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "Expected a SavedModel directory or a DynamicModule/StaticModule. Received: "
            f"source of type {type(source).__name__}"
        )
    loaded = tf.saved_model.load(os.fspath(source))
    if SERVING_BATCH1 not in loaded.signatures:
        raise ValueError(
            f"Expected a SavedModel written by export_saved_model or export_static, with a "
            f"{SERVING_BATCH1!r} signature. Received: {os.fspath(source)!r} with signatures "
            f"{sorted(loaded.signatures)}"
        )
    batch1 = loaded.signatures[SERVING_BATCH1]
    batched = loaded.signatures[SERVING_DEFAULT]
    thresholds = getattr(loaded, "thresholds", None)
    num_stages = 1 if thresholds is None else int(thresholds.shape[0]) + 1
    args, kwargs = batch1.structured_input_signature
    spec = kwargs["images"] if kwargs else args[0]
    image_shape = tuple(int(d) for d in spec.shape[1:])
    return batch1, batched, loaded, num_stages, image_shape


def _representative_array(images: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    if images is None:
        raise ValueError(
            "Expected representative_images (raw images [M, "
            f"{', '.join(map(str, image_shape))}]) to calibrate int8 quantisation. "
            "Received: representative_images=None"
        )
    array = np.asarray(images if isinstance(images, np.ndarray) else list(images))
    if array.ndim != 4 or tuple(array.shape[1:]) != image_shape or len(array) == 0:
        raise ValueError(
            f"Expected representative_images of shape [M, {', '.join(map(str, image_shape))}]"
            f" with M >= 1. Received: shape {array.shape!r}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"Expected numeric representative_images. Received: dtype {array.dtype!r}"
        )
    return array.astype(np.float32)


def _check_tflite(content: bytes, num_stages: int, reached: list[int] | None) -> None:
    model = _read_tflite(content)
    ops = {op for subgraph in model["subgraphs"] for op, _, _ in subgraph["ops"]}
    variables = sorted(ops & _VARIABLE_OPS)
    if variables:
        raise RuntimeError(
            f"The TFLite model still holds variable ops {variables}: the variables were not "
            "frozen into constants."
        )
    if num_stages > 1 and not ops & _CONTROL_FLOW_OPS:
        raise RuntimeError(
            "The TFLite converter removed the control flow (no IF/WHILE op): the model would "
            f"run every stage for every image. Ops: {sorted(ops)}"
        )
    for key, outputs in model["signatures"].items():
        if sorted(outputs) != sorted(OUTPUT_NAMES):
            raise RuntimeError(
                f"Expected the TFLite signature outputs {sorted(OUTPUT_NAMES)}. Received: "
                f"signature {key!r} with outputs {sorted(outputs)}"
            )
    if reached is None:
        return
    float_ops = collections.Counter()
    for subgraph in model["subgraphs"]:
        for op, input_type, names in subgraph["ops"]:
            if op in _COMPUTE_OPS and input_type != "INT8":
                stages = set().union(*map(conventions.stages_in_tensor_name, names))
                float_ops[(max(stages) if stages else "?", op, input_type)] += 1
    if float_ops:
        raise RuntimeError(
            "Expected every stage quantised to int8. Received: (stage, op, input type) -> "
            f"count {dict(float_ops)} left unquantised; representative images reaching "
            f"stages 1..{num_stages}: {reached}."
        )


def _unquantised_message(stages: list[int], num_images: int, reached: list[int]) -> str:
    return (
        f"Expected every stage quantised to int8. Received: stage(s) {stages} cannot be "
        f"calibrated: of {num_images} representative images, {reached} reach stages "
        f"1..{len(reached)} under the model's thresholds. Stage s is calibrated on the "
        "images that reach it (the inputs it sees in deployment): pass more, or more "
        "varied, representative images."
    )


def tflite_op_names(model_content: bytes) -> list[str]:
    """The distinct operator names (e.g. "CONV_2D", "IF") of all subgraphs of a model."""
    return sorted({op for subgraph in tflite_subgraphs(model_content) for op in subgraph["ops"]})


def tflite_subgraphs(model_content: bytes) -> list[dict[str, list]]:
    """What each subgraph of a TFLite model holds (subgraph 0 is the main graph).

    Returns:
        One dict per subgraph: "ops", its distinct operator names, and "stages", the
        stages whose convolutions / dense layers it computes (read from tensor names). In a
        converted `DynamicModule`, stages >= 2 appear only in `IF` branch subgraphs.
    """
    result = []
    for subgraph in _read_tflite(model_content)["subgraphs"]:
        stages = set()
        for op, _, names in subgraph["ops"]:
            if op in _COMPUTE_OPS:
                stages |= set().union(*map(conventions.stages_in_tensor_name, names))
        result.append({
            "ops": sorted({op for op, _, _ in subgraph["ops"]}),
            "stages": sorted(stages),
        })
    return result


def _read_tflite(content: bytes) -> dict[str, Any]:
    """Operators (name, type of first input, tensor names) per subgraph, and signatures."""
    # TFLite's flatbuffer schema as generated Python classes: TensorFlow's own converter
    # reads models with this module, and TensorFlow has no public model reader.
    from tensorflow.lite.python import schema_py_generated as schema_fb

    op_names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if k.isupper()}
    type_names = {v: k for k, v in vars(schema_fb.TensorType).items() if k.isupper()}
    model = schema_fb.Model.GetRootAsModel(bytearray(content), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes < 127 live in the deprecated field, newer ones in the int32 field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema_fb.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(op_names.get(builtin, str(builtin)))
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        ops = []
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            tensors = [
                subgraph.Tensors(int(t))
                for t in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy())
                if t >= 0
            ]
            first = type_names.get(tensors[0].Type()) if tensors else None
            names = [t.Name().decode() for t in tensors if t.Name()]
            ops.append((codes[op.OpcodeIndex()], first, names))
        subgraphs.append({"ops": ops})
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        key = signature.SignatureKey().decode()
        signatures[key] = [
            signature.Outputs(j).Name().decode() for j in range(signature.OutputsLength())
        ]
    return {"subgraphs": subgraphs, "signatures": signatures}
