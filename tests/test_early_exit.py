"""The early-exit baseline (s2dnas_tf.early_exit): exits after resolution stages, same
interface as transform's networks (stage naming, stage_flops, split, export)."""

import keras
import numpy as np
import pytest

from s2dnas_tf import calibration, count_flops, early_exit, export, rewriter
from s2dnas_tf.models import build_model
from tests.helpers import images, randomize_normalization_stats


@pytest.fixture(scope="module")
def resnet8():
    keras.utils.set_random_seed(0)  # the same weights every run, so the same exits
    return randomize_normalization_stats(build_model("resnet8", input_shape=(16, 16, 3)))


def test_final_exit_is_the_static_model_and_earlier_exits_are_cheaper(resnet8):
    net = early_exit.attach_exits(resnet8)
    x = images(resnet8, n=3)
    logits = net(x)
    assert len(logits) == 3 and all(tuple(l.shape) == (3, 10) for l in logits)
    np.testing.assert_allclose(logits[-1], resnet8(x), atol=1e-5)
    flops = rewriter.stage_flops(net)
    assert flops[0] < flops[1] < flops[2]
    static = count_flops(resnet8)
    heads = flops[2] - static  # the two exit heads, all a late sample pays on top
    assert 0 < heads < 0.01 * static
    # The exits read the end of the 16x16 and 8x8 stages: 4x4 pooled features.
    assert net.get_layer("stage1_exit_pool").output.shape[1:3] == (4, 4)
    assert net.get_layer("stage2_exit_pool").output.shape[1:3] == (4, 4)
    # The backbone weights are copies: training the net leaves the static model alone.
    assert net.get_layer("stage1_" + resnet8.layers[2].name) is not resnet8.layers[2]


def test_two_exits_on_three_resolutions(resnet8):
    net = early_exit.attach_exits(resnet8, num_stages=2)
    assert len(net.outputs) == 2
    flops = rewriter.stage_flops(net)
    # round(1 * 3 / 2) = 2: the first exit sits after the 16x16 and 8x8 stages.
    assert flops[0] > 0.5 * count_flops(resnet8)


def _threshold_in_widest_gap(confidence: np.ndarray, least: int, most: int):
    """A threshold letting between `least` and `most` of `confidence` pass, placed in the
    widest gap between consecutive values there, so that the export's rounding (BatchNorm
    folded, another kernel order) cannot move a sample across it.

    Returns:
        (threshold, margin): the gap's midpoint and half its width.
    """
    ranked = np.sort(confidence)[::-1]
    k = max(range(least, most + 1), key=lambda k: ranked[k - 1] - ranked[k])
    return (ranked[k - 1] + ranked[k]) / 2, (ranked[k - 1] - ranked[k]) / 2


def test_split_and_dynamic_export_agree_with_the_net(resnet8, tmp_path):
    """The split stages reproduce the net, and `DynamicModule` (batched and batch-1) answers
    each image with the logits of the stage the exit rule picks, with thresholds that make
    images exit at every stage."""
    net = early_exit.attach_exits(resnet8)
    x = images(resnet8, n=12)
    stage_logits = [np.asarray(o) for o in net(x)]
    split = export.split_stages(net)
    for a, b in zip(split.run_all(x), stage_logits):
        np.testing.assert_allclose(a, b, atol=1e-5)

    probs = calibration.softmax(np.stack(stage_logits).astype(np.float64))
    confidence = probs.max(-1)
    # 3..6 of the 12 images exit at stage 1; of the rest, at least 2 at stage 2 and 2 go on.
    tau1, margin1 = _threshold_in_widest_gap(confidence[0], 3, 6)
    remaining = confidence[1][confidence[0] < tau1]
    tau2, margin2 = _threshold_in_widest_gap(remaining, 2, len(remaining) - 2)
    assert min(margin1, margin2) > 1e-4, (margin1, margin2)
    expected_stage = calibration.exit_stages(probs, [tau1, tau2])
    assert sorted(set(expected_stage)) == [1, 2, 3]  # every stage answers some image
    expected_logits = np.stack(stage_logits)[expected_stage - 1, np.arange(len(x))]

    module = export.DynamicModule(net, [tau1, tau2])
    out = module.serve(x)
    np.testing.assert_array_equal(out["exit_stage"].numpy(), expected_stage)
    np.testing.assert_allclose(out["logits"], expected_logits, atol=1e-4)
    for i in range(len(x)):  # the batch-1 function (one nested tf.cond per stage)
        one = module.serve_batch1(x[i : i + 1])
        assert int(one["exit_stage"][0]) == expected_stage[i]
        np.testing.assert_allclose(one["logits"][0], expected_logits[i], atol=1e-4)


def test_softmax_output_becomes_logits():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    net = early_exit.attach_exits(model)
    x = np.random.RandomState(0).rand(2, 8, 8, 1).astype("float32")
    final = net(x)[-1]
    np.testing.assert_allclose(keras.ops.softmax(final), model(x), atol=1e-5)


def test_refuses_models_it_cannot_give_exits():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    flat = keras.Model(inputs, keras.layers.Dense(3)(x))
    with pytest.raises(ValueError, match="at least 2 resolution stages"):
        early_exit.attach_exits(flat)
    model = build_model("resnet8", input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="2 <= num_stages <= 3"):
        early_exit.attach_exits(model, num_stages=4)
    with pytest.raises(TypeError, match="num_stages to be an int"):
        early_exit.attach_exits(model, num_stages=2.0)
