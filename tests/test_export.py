"""Tests for `s2dnas_tf.export` (docs/design.md §7) on the real digits images.

The exported SavedModel is loaded in a fresh process that imports TensorFlow only, and the
TFLite models in one that imports the LiteRT runtime (`ai_edge_litert`) only; their answers
are compared with the Keras multi-stage network plus `calibration.exit_stages`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import s2dnas_tf as s2d
from s2dnas_tf import calibration, data, export
from s2dnas_tf.export import serving as serving_lib
from s2dnas_tf.models import build_model, with_input_normalization

NUM_STAGES = 3
# Exit fractions the thresholds aim at: mixed batches, and every stage reached.
EXIT_QUANTILES = (0.45, 0.5)
# Thresholds keep this distance from every test confidence, so float32 rounding
# differences between Keras, TF and TFLite (~1e-6) cannot flip an exit decision.
THRESHOLD_MARGIN = 1e-4
NEVER_EXIT = calibration.NEVER_EXIT
SUBPROCESS_TIMEOUT_S = 300


# --------------------------------------------------------------------------------------
# Fixtures: a small trained network, its thresholds and exports (built once per module).


@pytest.fixture(scope="module")
def digits() -> data.Splits:
    return data.load_dataset(data.DataConfig(name="digits"))


@pytest.fixture(scope="module")
def base(digits) -> keras.Model:
    """A tiny ResNet-8 trained for a few epochs (non-trivial confidences)."""
    keras.utils.set_random_seed(0)
    mean, variance = digits.channel_stats()
    model = with_input_normalization(
        build_model("resnet8", input_shape=(8, 8, 1), num_classes=10, width_multiplier=0.5),
        mean,
        variance,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(digits.x_train, digits.y_train, batch_size=64, epochs=10, verbose=0)
    return model


@pytest.fixture(scope="module")
def space(base):
    return s2d.SearchSpace.from_model(base, num_stages=NUM_STAGES)


@pytest.fixture(scope="module")
def net(base, space, digits) -> keras.Model:
    """The default arch, fine-tuned briefly so that every stage is fairly accurate."""
    net = s2d.transform(base, space.default_arch())
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # The inherited moving statistics no longer fit the sliced stages; a faster
            # moving average catches up within the few steps of this fine-tune.
            layer.momentum = 0.9
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    net.compile(optimizer=keras.optimizers.Adam(2e-3), loss=[ce] * NUM_STAGES)
    net.fit(digits.x_train, [digits.y_train] * NUM_STAGES, batch_size=64, epochs=3, verbose=0)
    return net


@pytest.fixture(scope="module")
def reference(net, digits) -> dict:
    """Keras stage logits on the test images and mixed thresholds for them."""
    logits = [np.asarray(o) for o in net(digits.x_test, training=False)]
    probs = [calibration.softmax(z) for z in logits]
    thresholds = [
        _threshold_between(probs[s].max(axis=1), EXIT_QUANTILES[s])
        for s in range(NUM_STAGES - 1)
    ]
    return {"logits": logits, "probs": probs, "thresholds": thresholds}


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def saved_model_dir(net, reference, export_root) -> str:
    return export.export_saved_model(
        net, reference["thresholds"], export_root, name="digits_dynamic", version=1
    )


@pytest.fixture(scope="module")
def static_dir(base, export_root) -> str:
    return export.export_static(base, export_root, name="digits_static", version=1)


@pytest.fixture(scope="module")
def served(saved_model_dir, static_dir, digits, tmp_path_factory) -> dict:
    """Everything the SavedModels answer, computed in a fresh TensorFlow-only process."""
    work = tmp_path_factory.mktemp("served")
    np.save(work / "images.npy", digits.x_test)
    out = work / "out.npz"
    _run_fresh(
        _SAVED_MODEL_SCRIPT, saved_model_dir, static_dir, str(work / "images.npy"), str(out)
    )
    with np.load(out) as npz:
        results = {k: npz[k] for k in npz.files}
    results["info"] = json.loads(str(results.pop("info")))
    return results


@pytest.fixture(scope="module")
def tflite_paths(saved_model_dir, export_root, digits) -> dict:
    return {
        "float": export.convert_to_tflite(saved_model_dir, export_root / "digits.tflite"),
        "int8": export.convert_to_tflite(
            saved_model_dir,
            export_root / "digits_int8.tflite",
            quantize="int8",
            representative_images=digits.x_val,
        ),
    }


@pytest.fixture(scope="module")
def tflite_results(tflite_paths, digits, tmp_path_factory) -> dict:
    """The TFLite models' answers, one image at a time, in a LiteRT-only process."""
    pytest.importorskip(
        "ai_edge_litert",
        reason="the LiteRT runtime is not installed (pip install ai-edge-litert)",
    )
    work = tmp_path_factory.mktemp("tflite")
    np.save(work / "images.npy", digits.x_test)
    out = work / "out.npz"
    _run_fresh(
        _TFLITE_SCRIPT, tflite_paths["float"], tflite_paths["int8"],
        str(work / "images.npy"), str(out),
    )
    with np.load(out) as npz:
        results = {k: npz[k] for k in npz.files}
    results["info"] = json.loads(str(results.pop("info")))
    return results


# --------------------------------------------------------------------------------------
# Splitting and the in-process module.


@pytest.mark.parametrize("which", ["default", "sampled"])
def test_split_stages_reproduces_the_net(which, base, space, digits):
    arch = space.default_arch() if which == "default" else space.sample(7)
    net = s2d.transform(base, arch)
    split = export.split_stages(net)
    x = digits.x_test[:64]

    expected = [np.asarray(o) for o in net(x, training=False)]
    actual = [np.asarray(o) for o in split.run_all(x)]
    assert len(actual) == NUM_STAGES
    for s, (a, e) in enumerate(zip(actual, expected), 1):
        np.testing.assert_array_equal(a, e, err_msg=f"stage {s}")

    assert split.stages[0].input_keys == (export.IMAGES_KEY,)
    produced = {export.IMAGES_KEY}
    for stage in split.stages:
        # A stage reads only the images and what earlier stages exported.
        assert set(stage.input_keys) <= produced, stage.stage
        produced |= set(stage.output_keys[1:])
    assert split.stages[-1].output_keys == (split.stages[-1].output_keys[0],)


def test_split_stages_with_keras_ops_calls():
    """keras.ops calls carry no stage name; they go with the latest stage they read."""
    inputs = keras.Input((12, 12, 3))
    x = inputs / 255.0 - 0.5
    x = keras.layers.Conv2D(8, 3, name="c1")(x)
    x = keras.ops.relu(x) * (1.0 / 6.0)
    x = x + keras.ops.sigmoid(keras.layers.Conv2D(8, 3, padding="same", name="c2")(x))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=NUM_STAGES)
                        .default_arch())
    x = np.random.default_rng(0).uniform(0, 255, (6, 12, 12, 3)).astype(np.float32)
    expected = [np.asarray(o) for o in net(x, training=False)]
    for a, e in zip(export.split_stages(net).run_all(x), expected):
        np.testing.assert_array_equal(np.asarray(a), e)
    out = export.DynamicModule(net, [NEVER_EXIT] * 2).serve(x)
    np.testing.assert_allclose(out["logits"].numpy(), expected[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["default", "sampled"])
def test_dynamic_module_follows_the_exit_rule(which, base, space, digits):
    arch = space.default_arch() if which == "default" else space.sample(7)
    net = s2d.transform(base, arch)
    x = digits.x_test[:96]
    logits = [np.asarray(o) for o in net(x, training=False)]
    probs = [calibration.softmax(z) for z in logits]
    thresholds = [_threshold_between(p.max(axis=1), 0.5) for p in probs[:-1]]
    module = export.DynamicModule(net, thresholds)

    out = module.serve(x)
    expected_exit = calibration.exit_stages(probs, thresholds)
    assert len(set(expected_exit.tolist())) == NUM_STAGES  # a mixed batch
    np.testing.assert_array_equal(out["exit_stage"].numpy(), expected_exit)
    np.testing.assert_allclose(
        out["logits"].numpy(), _exit_logits(logits, expected_exit), atol=1e-4, rtol=0
    )
    everyone_first = module.serve_with_thresholds(x, [0.0, 0.0])["exit_stage"].numpy()
    np.testing.assert_array_equal(everyone_first, np.ones(len(x)))
    nobody_early = module.serve_with_thresholds(x, [NEVER_EXIT] * 2)["exit_stage"].numpy()
    np.testing.assert_array_equal(nobody_early, np.full(len(x), NUM_STAGES))
    for i in (0, 1, 2):
        one = module.serve_batch1(x[i : i + 1])
        assert int(one["exit_stage"][0]) == expected_exit[i]
        np.testing.assert_allclose(one["logits"][0], out["logits"][i], atol=1e-5, rtol=0)


def test_later_stages_run_only_for_samples_left(base, space, digits, monkeypatch):
    """Counts, in the graph, the images each stage model is run on."""
    net = s2d.transform(base, space.default_arch())
    counters = [tf.Variable(0, dtype=tf.int32) for _ in range(NUM_STAGES)]
    call_stage = export.call_stage

    def counting_call_stage(stage, inputs):
        outputs = call_stage(stage, inputs)
        with tf.control_dependencies(outputs):
            counters[stage.stage - 1].assign_add(tf.shape(inputs[0])[0])
        return outputs

    # DynamicModule runs every stage through serving.call_stage.
    monkeypatch.setattr(serving_lib, "call_stage", counting_call_stage)
    x = digits.x_test[:80]
    probs = [calibration.softmax(np.asarray(z)) for z in net(x, training=False)]
    thresholds = [_threshold_between(p.max(axis=1), 0.5) for p in probs[:-1]]
    module = export.DynamicModule(net, thresholds)

    def run_counts(taus):
        for c in counters:
            c.assign(0)
        exit_stage = module.serve_with_thresholds(x, taus)["exit_stage"].numpy()
        return [int(c.numpy()) for c in counters], exit_stage

    counts, exit_stage = run_counts(thresholds)
    reached = [int(np.sum(exit_stage >= s)) for s in range(1, NUM_STAGES + 1)]
    assert counts == reached and reached[-1] < reached[0], (counts, reached)
    counts, _ = run_counts([0.0, 0.0])
    assert counts == [len(x), 0, 0]
    counts, _ = run_counts([NEVER_EXIT, NEVER_EXIT])
    assert counts == [len(x)] * NUM_STAGES


def _count_layers(model, cls):
    return sum(type(layer) is cls for layer in model._flatten_layers())


def test_fold_batchnorm_same_outputs_fewer_layers(net, base, digits):
    x = digits.x_test[:16]
    folded = export.fold_batchnorm(net)
    assert _count_layers(net, keras.layers.BatchNormalization) > 0
    assert _count_layers(folded, keras.layers.BatchNormalization) == 0
    for a, b in zip(folded(x), net(x, training=False)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # The stage split still holds on the folded copy; the original is untouched.
    assert export.split_stages(folded).num_stages == NUM_STAGES
    assert _count_layers(net, keras.layers.BatchNormalization) > 0
    # The static model is nested (normalisation + core): folded through the nesting.
    np.testing.assert_allclose(export.fold_batchnorm(base)(x), base(x), atol=1e-4)


def test_fold_batchnorm_depthwise_and_what_it_leaves():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(inputs)
    a = keras.layers.BatchNormalization(name="bn_dw")(a)
    b = keras.layers.Conv2D(6, 1, name="pw")(a)  # read by the BN and by the Add: kept
    c = keras.layers.BatchNormalization(name="bn_pw")(b)
    d = keras.layers.Conv2D(6, 1, activation="relu", name="relu_conv")(c)  # activation: kept
    e = keras.layers.BatchNormalization(name="bn_relu")(d)
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([e, b])))
    model = keras.Model(inputs, out)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(np.random.rand(*shape))
            layer.moving_variance.assign(np.random.rand(*shape) + 0.5)
            layer.gamma.assign(np.random.rand(*shape) + 0.5)
            layer.beta.assign(np.random.rand(*shape))
    folded = export.fold_batchnorm(model)
    names = {layer.name for layer in folded.layers}
    assert "bn_dw" not in names and {"bn_pw", "bn_relu", "dw", "pw"} <= names
    assert folded.get_layer("dw").use_bias
    x = np.random.rand(2, 8, 8, 3).astype("float32")
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)


def test_folded_static_export_has_fewer_ops(base):
    def op_count(module):
        graph = module.serve_batch1.get_concrete_function().graph
        return len(graph.get_operations())

    folded, unfolded = export.StaticModule(base), export.StaticModule(base, fold_bn=False)
    assert op_count(folded) < 0.8 * op_count(unfolded)


def test_single_stage_module(base, digits):
    net = s2d.transform(base, s2d.SearchSpace.from_model(base, num_stages=1).default_arch())
    module = export.DynamicModule(net, [])
    x = digits.x_test[:8]
    out = module.serve(x)
    np.testing.assert_array_equal(out["exit_stage"].numpy(), np.ones(len(x), np.int32))
    np.testing.assert_allclose(
        out["logits"].numpy(), np.asarray(net(x, training=False)[0]), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match=r"Expected 0 non-NaN thresholds.*\[0\.5\]"):
        export.DynamicModule(net, [0.5])


# --------------------------------------------------------------------------------------
# The SavedModel, loaded with TensorFlow alone.


def test_saved_model_layout_and_signatures(saved_model_dir, export_root, served):
    assert pathlib.Path(saved_model_dir) == export_root / "digits_dynamic" / "1"
    assert (pathlib.Path(saved_model_dir) / "saved_model.pb").is_file()
    assert sorted(os.listdir(export_root / "digits_dynamic")) == ["1"]
    info = served["info"]
    assert info["imported_s2dnas_tf"] is False
    assert info["signatures"] == sorted(
        [export.SERVING_DEFAULT, export.SERVING_WITH_THRESHOLDS, export.SERVING_BATCH1,
         export.SERVING_ANY_SIZE]
    )
    assert info["outputs"] == sorted(export.OUTPUT_NAMES)
    assert served["exit_stage"].dtype == np.int32
    assert served["exit_stage"].shape == (len(served["logits"]),)


def test_saved_model_matches_keras_and_thresholds(served, reference, digits):
    assert len(digits.x_test) >= 100
    expected_exit = calibration.exit_stages(reference["probs"], reference["thresholds"])
    assert len(set(expected_exit.tolist())) == NUM_STAGES, np.bincount(expected_exit)
    np.testing.assert_allclose(served["thresholds"], reference["thresholds"], rtol=1e-6)
    np.testing.assert_array_equal(served["exit_stage"], expected_exit)
    expected_logits = _exit_logits(reference["logits"], expected_exit)
    np.testing.assert_allclose(served["logits"], expected_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        served["probabilities"], calibration.softmax(expected_logits), atol=1e-5, rtol=0
    )
    # The same thresholds given as an input, and the restored tf.function.
    np.testing.assert_array_equal(served["exit_given"], expected_exit)
    np.testing.assert_allclose(served["logits_given"], served["logits"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(served["exit_restored_fn"], expected_exit)
    # Raw images of another size, resized in the graph (cropped to the aspect ratio).
    for key in ("same", "wide"):
        np.testing.assert_array_equal(served[f"exit_any_{key}"], expected_exit)
        np.testing.assert_allclose(served[f"logits_any_{key}"], served["logits"], atol=1e-4)


def test_saved_model_threshold_extremes(served):
    n = len(served["exit_stage"])
    np.testing.assert_array_equal(served["exit_zero"], np.ones(n, np.int32))
    np.testing.assert_array_equal(served["exit_above_one"], np.full(n, NUM_STAGES, np.int32))


def test_saved_model_mixed_batch_agrees_with_one_at_a_time(served):
    n = len(served["exit_single"])
    assert n >= 100
    mixed = served["exit_stage"][:n]
    assert len(set(mixed.tolist())) == NUM_STAGES
    np.testing.assert_array_equal(served["exit_single"], mixed)
    np.testing.assert_allclose(served["logits_single"], served["logits"][:n], atol=1e-5, rtol=0)
    # The batch-1 signature (the one TFLite converts) agrees too.
    np.testing.assert_array_equal(served["exit_batch1"], mixed)
    np.testing.assert_allclose(served["logits_batch1"], served["logits"][:n], atol=1e-5, rtol=0)


def test_saved_model_empty_batch(served):
    assert served["info"]["empty_batch_shapes"] == [[0, 10], [0, 10], [0]]


def test_saved_model_input_errors_are_clear(served):
    errors = served["info"]["errors"]
    for key in ("wrong_size", "wrong_rank"):
        assert "Expected raw images, float32 of shape [N, 8, 8, 1]" in errors[key], errors[key]
    assert "[2 4 4 1]" in errors["wrong_size"]
    assert "[8 8 1]" in errors["wrong_rank"]
    # The signature's dtype is enforced by TensorFlow itself.
    assert "expected to be a float tensor but is a int32 tensor" in errors["wrong_dtype"]
    assert "Expected 2 thresholds" in errors["wrong_thresholds"], errors["wrong_thresholds"]
    assert "Received: thresholds of shape" in errors["wrong_thresholds"]
    assert "TensorSpec(shape=(None, 8, 8, 1), dtype=tf.float32" in errors["restored_fn_dtype"]


def test_static_export_has_the_same_interface(served, base, digits):
    expected = np.asarray(base(digits.x_test, training=False))
    np.testing.assert_allclose(served["static_logits"], expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(served["static_exit"], np.ones(len(expected), np.int32))
    assert served["info"]["static_signatures"] == sorted(
        [export.SERVING_DEFAULT, export.SERVING_BATCH1, export.SERVING_ANY_SIZE]
    )


def test_static_export_of_a_softmax_model_serves_log_probabilities(tmp_path):
    """keras.applications models end in a softmax (their default classifier_activation):
    the static export serves log-probabilities as logits, which have the same softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="probs")(x))
    path = export.export_static(model, tmp_path, name="softmax", version=1)
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    out = tf.saved_model.load(path).signatures[export.SERVING_DEFAULT](images=tf.constant(x))
    probabilities = np.asarray(model(x, training=False))
    np.testing.assert_allclose(out["logits"].numpy(), np.log(probabilities), atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), probabilities, atol=1e-6)


def test_existing_version_is_not_overwritten_unless_asked(
    saved_model_dir, net, reference, export_root
):
    version_dir = pathlib.Path(saved_model_dir)
    before = sorted(p.name for p in version_dir.iterdir())
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        export.export_saved_model(net, [0.5, 0.5], export_root, name="digits_dynamic")
    assert sorted(p.name for p in version_dir.iterdir()) == before

    # Version 2 (a copy of 1) is replaced when asked.
    shutil.copytree(version_dir, export_root / "digits_dynamic" / "2")
    path = export.export_saved_model(
        net, [0.5, 0.5], export_root, name="digits_dynamic", version=2, overwrite=True
    )
    np.testing.assert_allclose(tf.saved_model.load(path).thresholds.numpy(), [0.5, 0.5])
    # Nothing left over: no staging or replaced directories beside the versions.
    assert sorted(os.listdir(export_root / "digits_dynamic")) == ["1", "2"]


def test_failed_export_leaves_no_version_dir(base, tmp_path, monkeypatch):
    def failing_save(obj, export_dir, signatures=None, options=None):
        (pathlib.Path(export_dir) / "saved_model.pb").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export.export_static(base, tmp_path, name="m", version=3)
    assert os.listdir(tmp_path / "m") == []


def test_export_argument_errors(net, base, tmp_path):
    with pytest.raises(ValueError, match=r"Expected 2 non-NaN thresholds.*\[0\.5\]"):
        export.export_saved_model(net, [0.5], tmp_path, name="m")
    with pytest.raises(ValueError, match="non-NaN"):
        export.export_saved_model(net, [0.5, float("nan")], tmp_path, name="m")
    with pytest.raises(TypeError, match="Received: thresholds='0.5'"):
        export.export_saved_model(net, "0.5", tmp_path, name="m")
    with pytest.raises(ValueError, match="Received: thresholds=None"):
        export.export_saved_model(net, None, tmp_path, name="m")
    for version in (-1, "1", True, 1.0):
        with pytest.raises(ValueError, match="non-negative integer"):
            export.export_saved_model(net, [0.5, 0.5], tmp_path, name="m", version=version)
    with pytest.raises(ValueError, match="one path component.*'a/b'"):
        export.export_saved_model(net, [0.5, 0.5], tmp_path, name="a/b")
    with pytest.raises(ValueError, match="stage<s>_.*no such layer"):
        export.export_saved_model(base, [0.5, 0.5], tmp_path, name="m")
    with pytest.raises(ValueError, match="one output"):
        export.export_static(net, tmp_path, name="m")
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []


# --------------------------------------------------------------------------------------
# TFLite.


def test_tflite_keeps_the_control_flow(tflite_paths):
    for kind, path in tflite_paths.items():
        content = pathlib.Path(path).read_bytes()
        ops = export.tflite_op_names(content)
        assert "IF" in ops, (kind, ops)
        assert not set(ops) & {"VAR_HANDLE", "READ_VARIABLE", "CALL_ONCE"}, (kind, ops)
        assert not [op for op in ops if op.startswith(("CUSTOM", "FLEX"))], (kind, ops)
        # Stages 2 and 3 compute only inside IF branches: an image that exits skips them.
        main, *branches = export.tflite_subgraphs(content)
        assert main["stages"] == [1], (kind, main)
        assert {s for b in branches for s in b["stages"]} == {2, 3}, (kind, branches)
    int8_ops = export.tflite_op_names(pathlib.Path(tflite_paths["int8"]).read_bytes())
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(int8_ops)


def test_tflite_matches_saved_model(tflite_results, served):
    info = tflite_results["info"]
    assert info["imported_tensorflow"] is False
    assert info["signatures"]["float"] == {
        "serving_default": {"inputs": ["images"], "outputs": sorted(export.OUTPUT_NAMES)}
    }
    assert info["input_shape"] == [1, 8, 8, 1]
    n = len(tflite_results["float_exit"])
    assert n >= 100
    np.testing.assert_array_equal(tflite_results["float_exit"], served["exit_stage"][:n])
    np.testing.assert_allclose(
        tflite_results["float_logits"], served["logits"][:n], atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        tflite_results["float_probabilities"], served["probabilities"][:n], atol=1e-5, rtol=0
    )


def test_int8_accuracy_cost(tflite_results, served, digits, record_property):
    """int8 vs float on the digits test set, with the same (frozen) thresholds."""
    n = len(tflite_results["int8_exit"])
    labels = digits.y_test[:n]
    float_accuracy = float(np.mean(served["logits"][:n].argmax(axis=1) == labels))
    int8_accuracy = float(np.mean(tflite_results["int8_logits"].argmax(axis=1) == labels))
    same_exit = float(np.mean(tflite_results["int8_exit"] == served["exit_stage"][:n]))
    mean_exit = (float(np.mean(served["exit_stage"][:n])),
                 float(np.mean(tflite_results["int8_exit"])))
    record_property("float_accuracy", float_accuracy)
    record_property("int8_accuracy", int8_accuracy)
    record_property("int8_same_exit_fraction", same_exit)
    print(
        f"\ndigits test ({n} images): float {float_accuracy:.4f}, int8 {int8_accuracy:.4f}, "
        f"same exit stage {same_exit:.3f}, mean exit stage float/int8 {mean_exit}"
    )
    assert float_accuracy > 0.8
    assert int8_accuracy >= float_accuracy - 0.05
    assert same_exit >= 0.8


def test_tflite_input_errors_are_clear(tflite_results):
    errors = tflite_results["info"]["errors"]
    assert "Got value of type INT32 but expected type FLOAT32" in errors["int32"]
    assert "Got value of type FLOAT64 but expected type FLOAT32" in errors["float64"]
    # Through the plain tensor API; the signature runner resizes its inputs instead.
    assert "Dimension mismatch" in errors["wrong_size"], errors["wrong_size"]


def test_int8_refuses_a_stage_no_image_reaches(saved_model_dir, served, digits, tmp_path):
    first_exit = digits.x_test[served["exit_stage"] == 1][:3]
    with pytest.raises(ValueError, match=r"stage\(s\) \[2, 3\].*\[3, 0, 0\]"):
        export.convert_to_tflite(
            saved_model_dir, tmp_path / "m.tflite", quantize="int8",
            representative_images=first_exit,
        )
    assert not (tmp_path / "m.tflite").exists()


def test_tflite_argument_errors(saved_model_dir, tmp_path):
    with pytest.raises(ValueError, match="Received: quantize='int4'"):
        export.convert_to_tflite(saved_model_dir, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="representative_images=None"):
        export.convert_to_tflite(saved_model_dir, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(ValueError, match=r"\[M, 8, 8, 1\].*\(4, 8, 8\)"):
        export.convert_to_tflite(
            saved_model_dir, tmp_path / "m.tflite", quantize="int8",
            representative_images=np.zeros((4, 8, 8), np.float32),
        )
    with pytest.raises(ValueError, match="pass quantize='int8'"):
        export.convert_to_tflite(
            saved_model_dir, tmp_path / "m.tflite",
            representative_images=np.zeros((4, 8, 8, 1), np.float32),
        )
    with pytest.raises(TypeError, match="Received: source of type int"):
        export.convert_to_tflite(3, tmp_path / "m.tflite")


# --------------------------------------------------------------------------------------
# Helpers.


def _threshold_between(confidence: np.ndarray, exit_fraction: float) -> float:
    """A threshold letting about `exit_fraction` of the samples exit, at least
    THRESHOLD_MARGIN away from every confidence."""
    values = np.unique(confidence.astype(np.float64))
    gaps = np.diff(values)
    midpoints = (values[:-1] + values[1:]) / 2
    candidates = midpoints[gaps > 2 * THRESHOLD_MARGIN]
    assert candidates.size, "no room for a threshold between the confidences"
    target = np.quantile(confidence, 1.0 - exit_fraction)
    return float(candidates[np.argmin(np.abs(candidates - target))])


def _exit_logits(stage_logits: list[np.ndarray], exit_stage: np.ndarray) -> np.ndarray:
    stacked = np.stack(stage_logits)  # [S, N, K]
    return stacked[exit_stage - 1, np.arange(len(exit_stage))]


def _run_fresh(script: str, *args: str) -> None:
    """Runs `script` in a new Python process that cannot import s2dnas_tf."""
    work = pathlib.Path(args[-1]).parent
    path = work / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{path} failed:\n{result.stdout}\n{result.stderr[-5000:]}"


_SAVED_MODEL_SCRIPT = """
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    dynamic_dir, static_dir, images_path, out_path = sys.argv[1:5]
    x = np.load(images_path).astype(np.float32)
    loaded = tf.saved_model.load(dynamic_dir)
    serve = loaded.signatures["serving_default"]
    with_thresholds = loaded.signatures["serving_with_thresholds"]
    batch1 = loaded.signatures["serving_batch1"]
    thresholds = loaded.thresholds.numpy()
    num_thresholds = int(thresholds.shape[0])

    out = {"thresholds": thresholds}
    answer = serve(images=tf.constant(x))
    out["logits"] = answer["logits"].numpy()
    out["probabilities"] = answer["probabilities"].numpy()
    out["exit_stage"] = answer["exit_stage"].numpy()
    given = with_thresholds(images=tf.constant(x), thresholds=tf.constant(thresholds))
    out["logits_given"] = given["logits"].numpy()
    out["exit_given"] = given["exit_stage"].numpy()
    out["exit_zero"] = with_thresholds(
        images=tf.constant(x), thresholds=tf.zeros([num_thresholds]))["exit_stage"].numpy()
    out["exit_above_one"] = with_thresholds(
        images=tf.constant(x), thresholds=tf.fill([num_thresholds], 1.01)
    )["exit_stage"].numpy()
    out["exit_restored_fn"] = loaded.serve(x)["exit_stage"].numpy()

    singles = [serve(images=tf.constant(x[i : i + 1])) for i in range(120)]
    out["logits_single"] = np.concatenate([a["logits"].numpy() for a in singles])
    out["exit_single"] = np.concatenate([a["exit_stage"].numpy() for a in singles])
    ones = [batch1(images=tf.constant(x[i : i + 1])) for i in range(120)]
    out["logits_batch1"] = np.concatenate([a["logits"].numpy() for a in ones])
    out["exit_batch1"] = np.concatenate([a["exit_stage"].numpy() for a in ones])
    # Any size: each pixel doubled (a bilinear halving gives it back exactly), between
    # 4-pixel noise bands left and right that the centred square crop cuts off.
    doubled = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    noise = np.random.default_rng(0).uniform(0, 16, (len(x), doubled.shape[1], 4, 1))
    wide = np.concatenate([noise, doubled, noise], axis=2).astype(np.float32)
    any_size = loaded.signatures["serving_any_size"]
    for key, images in (("same", x), ("wide", wide)):
        answer = any_size(images=tf.constant(images))
        out[f"logits_any_{key}"] = answer["logits"].numpy()
        out[f"exit_any_{key}"] = answer["exit_stage"].numpy()

    errors = {}
    def error_of(name, fn):
        try:
            fn()
            errors[name] = "no error"
        except Exception as e:  # The message a client sees.
            errors[name] = f"{type(e).__name__}: {e}"
    error_of("wrong_size", lambda: serve(images=tf.zeros([2, 4, 4, 1])))
    error_of("wrong_rank", lambda: serve(images=tf.zeros([8, 8, 1])))
    error_of("wrong_dtype", lambda: serve(images=tf.zeros([2, 8, 8, 1], tf.int32)))
    error_of("wrong_thresholds", lambda: with_thresholds(
        images=tf.constant(x[:2]), thresholds=tf.zeros([num_thresholds + 1])))
    error_of("restored_fn_dtype", lambda: loaded.serve(tf.zeros([2, 8, 8, 1], tf.int32)))
    empty = serve(images=tf.zeros([0, 8, 8, 1]))

    static = tf.saved_model.load(static_dir)
    static_answer = static.signatures["serving_default"](images=tf.constant(x))
    out["static_logits"] = static_answer["logits"].numpy()
    out["static_exit"] = static_answer["exit_stage"].numpy()

    info = {
        "imported_s2dnas_tf": any(m.startswith("s2dnas_tf") for m in sys.modules),
        "signatures": sorted(loaded.signatures),
        "static_signatures": sorted(static.signatures),
        "outputs": sorted(serve.structured_outputs),
        "errors": errors,
        "empty_batch_shapes": [empty[k].shape.as_list()
                               for k in ("logits", "probabilities", "exit_stage")],
    }
    np.savez(out_path, info=json.dumps(info), **out)
"""

_TFLITE_SCRIPT = """
    import json
    import sys

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    float_path, int8_path, images_path, out_path = sys.argv[1:5]
    x = np.load(images_path).astype(np.float32)
    out, info = {}, {"signatures": {}, "errors": {}}
    for kind, path in (("float", float_path), ("int8", int8_path)):
        interpreter = Interpreter(model_path=path)
        signatures = interpreter.get_signature_list()
        info["signatures"][kind] = {
            k: {"inputs": sorted(v["inputs"]), "outputs": sorted(v["outputs"])}
            for k, v in signatures.items()
        }
        runner = interpreter.get_signature_runner("serving_default")
        answers = [runner(images=x[i : i + 1]) for i in range(len(x))]
        for name in ("logits", "probabilities", "exit_stage"):
            key = f"{kind}_exit" if name == "exit_stage" else f"{kind}_{name}"
            out[key] = np.concatenate([a[name] for a in answers])
        if kind == "float":
            info["input_shape"] = runner.get_input_details()["images"]["shape"].tolist()
            for name, bad in (("int32", x[:1].astype(np.int32)),
                              ("float64", x[:1].astype(np.float64))):
                try:
                    runner(images=bad)
                    info["errors"][name] = "no error"
                except Exception as e:
                    info["errors"][name] = f"{type(e).__name__}: {e}"
            plain = Interpreter(model_path=path)
            plain.allocate_tensors()
            try:
                plain.set_tensor(plain.get_input_details()[0]["index"],
                                 np.zeros([1, 4, 4, 1], np.float32))
                info["errors"]["wrong_size"] = "no error"
            except Exception as e:
                info["errors"]["wrong_size"] = f"{type(e).__name__}: {e}"
    info["imported_tensorflow"] = "tensorflow" in sys.modules
    np.savez(out_path, info=json.dumps(info), **out)
"""
