"""The early-exit baseline (s2dnas_tf.early_exit): exits after resolution stages, same
interface as transform's networks (stage naming, stage_flops, split, export)."""

import keras
import numpy as np
import pytest

from s2dnas_tf import count_flops, early_exit, export, rewriter
from s2dnas_tf.models import build_model
from tests.helpers import images, randomize_normalization_stats


@pytest.fixture(scope="module")
def resnet8():
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


def test_split_and_dynamic_export_agree_with_the_net(resnet8, tmp_path):
    net = early_exit.attach_exits(resnet8)
    x = images(resnet8, n=4)
    split = export.split_stages(net)
    for a, b in zip(split.run_all(x), net(x)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    module = export.DynamicModule(net, [2.0, 2.0])  # no early exit: the last logits
    out = module.serve(x)
    np.testing.assert_allclose(out["logits"], net(x)[-1], atol=1e-4)
    assert set(out["exit_stage"].numpy()) == {3}


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
