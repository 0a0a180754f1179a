"""The weight-sharing supernet: every architecture's view computes what `transform` builds."""

import keras
import numpy as np
import pytest

import s2dnas_tf as s2d
from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rewriter
from s2dnas_tf import rules as rules_lib
from s2dnas_tf.models import build_model
from s2dnas_tf.supernet import Supernet
from tests import helpers
from tests.test_transform import every_layer_cnn


def _models():
    keras.utils.set_random_seed(0)
    return {
        "resnet8": build_model(
            "resnet8", input_shape=(16, 16, 3), num_classes=10, width_multiplier=0.5
        ),
        "mobilenetv2_cifar": build_model(
            "mobilenetv2_cifar",
            input_shape=(16, 16, 3),
            num_classes=10,
            width_multiplier=0.35,
            dropout_rate=0.0,
        ),
        "every_layer": every_layer_cnn(channel_norm=keras.layers.BatchNormalization),
    }


MODELS = _models()
# The depthwise family is the slowest to build (over 2 minutes over these tests on a slow
# machine): extended tier (every_layer holds depthwise convolutions for the default run).
NAMES = [
    pytest.param(name, marks=[pytest.mark.slow, pytest.mark.extended])
    if name == "mobilenetv2_cifar" else name
    for name in sorted(MODELS)
]


def _archs(space, count=4):
    """The default arch, the extremes and sampled ones (with block skipping: the thinnest
    skips every identity block it may, the widest none)."""
    archs = [space.default_arch()]
    groups, stages = space.num_groups, space.num_stages
    skip_all = list(space.skippable) * (stages - 1) if space.block_skipping else []
    thinnest = [0] * ((stages - 1) * groups) + [0] * (stages - 1) + skip_all
    widest_reuse = [space.grid - 1] * ((stages - 1) * groups) + [0] * (stages - 1) + [
        0] * len(skip_all)
    archs += [space.decode(thinnest), space.decode(widest_reuse)]
    archs += [space.sample(seed) for seed in range(count)]
    return archs


# Block skipping (stages skip identity blocks) on the models that have identity blocks.
SKIPPING = [False, True]


@pytest.mark.parametrize("skipping", SKIPPING)
@pytest.mark.parametrize("name", NAMES)
def test_plan_agrees_with_the_built_pieces(name, skipping):
    """`rewriter.plan` (no Keras layers) gives the channels `transform` builds, everywhere."""
    space = s2d.SearchSpace.from_model(MODELS[name], num_stages=3, block_skipping=skipping)
    graph = space.analysis.graph
    for arch in _archs(space, count=2):
        builder = rewriter._Builder(space, arch)
        (in_key,) = graph.inputs
        images = keras.Input(shape=graph.tensors[in_key].shape[1:])
        built = graph_lib.rebuild(graph, builder.step, {in_key: rules_lib.Shared(images)})
        planned = rewriter.plan(space, arch).values
        assert set(built) == set(planned)
        for key, value in built.items():
            if isinstance(value, rules_lib.Shared):
                assert isinstance(planned[key], rules_lib.Shared), key
                continue
            for stage, (piece, idx) in enumerate(zip(value, planned[key]), start=1):
                if piece is None:
                    assert idx is None, (arch.tokens, key, stage)
                else:
                    np.testing.assert_array_equal(piece.idx, idx, err_msg=f"{key} {stage}")


@pytest.mark.parametrize("skipping", SKIPPING)
@pytest.mark.parametrize("name", NAMES)
def test_every_view_is_the_transformed_network(name, skipping):
    """set_arch(arch) + model(x) == transform(to_static(), arch)(x), inference and training
    mode, for several archs of one supernet (no rebuild between them)."""
    model = helpers.randomize_normalization_stats(MODELS[name])
    space = s2d.SearchSpace.from_model(model, num_stages=3, block_skipping=skipping)
    supernet = Supernet(model, space)
    x = helpers.images(model, n=8, scale=255.0 if name == "every_layer" else 1.0)
    # Training mode (BatchNorm on batch statistics) where no dropout makes it random.
    random = any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    modes = (False,) if random or name == "every_layer" else (False, True)
    for arch in _archs(space, count=2):
        supernet.set_arch(arch)
        # (Taken per arch: a training-mode call moves the BatchNorm statistics.)
        net = s2d.transform(supernet.to_static(), arch)
        for training in modes:
            got = supernet.model(x, training=training)
            want = net(x, training=training)
            for stage, (a, b) in enumerate(zip(got, want), start=1):
                a, b = np.asarray(a), np.asarray(b)
                scale = max(1.0, float(np.abs(b).max()))
                np.testing.assert_allclose(
                    a, b, atol=2e-4 * scale, rtol=0,
                    err_msg=f"{name} {arch.tokens} stage {stage} training={training}",
                )


def test_training_a_view_trains_the_shared_weights_only_where_the_view_reads():
    """A gradient step on one view changes kernel entries the view reads and no others."""
    model = MODELS["resnet8"]
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    supernet = Supernet(model, space)
    arch = space.decode([0] * space.num_tokens)  # the thinnest: most entries unread
    supernet.set_arch(arch)
    x = helpers.images(model, n=4)
    conv = next(
        layer for layer in supernet.model.layers if type(layer).__name__ == "MaskedConv2D"
        and float(np.min(layer.kernel_mask.numpy())) == 0.0
    )
    before = conv.kernel.numpy().copy()
    optimizer = keras.optimizers.SGD(0.1)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = sum(tf.reduce_sum(tf.square(o)) for o in supernet.model(x, training=True))
    grads = tape.gradient(loss, supernet.model.trainable_variables)
    optimizer.apply(grads, supernet.model.trainable_variables)
    changed = np.abs(conv.kernel.numpy() - before).max(axis=(0, 1)) > 0
    read = conv.kernel_mask.numpy() > 0
    assert changed.any()
    assert not (changed & ~read).any()


def test_batchnorm_recalibration_in_chunks_averages_the_chunks(monkeypatch):
    """Large images are recalibrated in chunks: the first BatchNorm's moving mean is the
    whole sample's mean (size-weighted chunk means); deeper ones, which see activations
    normalised per chunk, and the variances are close to the one-batch statistics."""
    from s2dnas_tf import supernet as supernet_lib

    model = MODELS["resnet8"]
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    supernet = Supernet(model, space)
    supernet.set_arch(space.sample(1))
    x = helpers.images(model, n=40, seed=3)
    bns = [layer for layer in supernet.model.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    supernet.recalibrate_batchnorm(x)
    whole = [(b.moving_mean.numpy(), b.moving_variance.numpy()) for b in bns]
    momenta = [b.momentum for b in bns]
    height, width = x.shape[1:3]
    monkeypatch.setattr(supernet_lib, "RECALIBRATION_PIXELS", 16 * height * width)
    supernet.recalibrate_batchnorm(x)  # chunks of 16, 16 and 8 images
    assert [b.momentum for b in bns] == momenta
    np.testing.assert_allclose(bns[0].moving_mean.numpy(), whole[0][0], rtol=1e-5, atol=1e-5)
    for b, (mean, variance) in zip(bns, whole):
        scale = max(1.0, float(np.abs(mean).max()))
        np.testing.assert_allclose(b.moving_mean.numpy(), mean, atol=5e-3 * scale)
        np.testing.assert_allclose(b.moving_variance.numpy(), variance, rtol=0.2,
                                   atol=1e-3 * float(variance.max()))


def test_layer_normalization_over_channels_is_refused():
    model = every_layer_cnn()
    space = s2d.SearchSpace.from_model(model, num_stages=2)
    with pytest.raises(ValueError, match="LayerNormalization.*'ln'"):
        Supernet(model, space)


def test_to_static_leaves_the_original_alone():
    model = MODELS["resnet8"]
    before = helpers.weights_snapshot(model)
    space = s2d.SearchSpace.from_model(model, num_stages=2)
    supernet = Supernet(model, space)
    for variable in supernet.model.trainable_variables:
        variable.assign(variable + 1.0)
    static = supernet.to_static()
    for a, b in zip(before, helpers.weights_snapshot(model)):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, helpers.weights_snapshot(static))
    )


@pytest.mark.parametrize("skipping", SKIPPING)
@pytest.mark.parametrize("name", NAMES)
def test_plan_stage_flops_equal_the_built_networks(name, skipping):
    space = s2d.SearchSpace.from_model(MODELS[name], num_stages=3, block_skipping=skipping)
    for arch in _archs(space, count=2):
        expected = s2d.stage_flops(s2d.transform(MODELS[name], arch))
        assert rewriter.plan(space, arch).stage_flops() == expected, arch.tokens


def test_train_supernet_on_digits_and_score_from_it(tmp_path):
    """A few steps of supernet training on real digits: the shared weights move, every
    view still equals its transformed network, a repeated call loads the saved weights, and
    scoring an arch gives probabilities and the plan's FLOPs."""
    from s2dnas_tf import data, training
    from s2dnas_tf.supernet import WEIGHTS_FILE, train_supernet

    splits = data.load_dataset(data.DataConfig(name="digits"))
    keras.utils.set_random_seed(0)
    model = build_model("resnet8", input_shape=(8, 8, 1), num_classes=10, width_multiplier=0.5)
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    config = training.TrainConfig(
        output_dir=str(tmp_path), epochs=1, steps_per_epoch=8, batch_size=32,
        learning_rate=0.02, verbose=0, augment=False,
    )
    supernet = train_supernet(model, space, splits, config)
    assert (tmp_path / WEIGHTS_FILE).exists()
    trained = supernet.to_static()
    moved = [
        not np.allclose(a, b)
        for a, b in zip(helpers.weights_snapshot(model), helpers.weights_snapshot(trained))
    ]
    assert any(moved)
    again = train_supernet(model, space, splits, config)  # loads, does not train
    for a, b in zip(helpers.weights_snapshot(trained), helpers.weights_snapshot(again.to_static())):
        np.testing.assert_array_equal(a, b)

    arch = space.sample(3)
    probs, stage_flops = supernet.evaluate(arch, splits.x_train[:128], splits.x_val)
    assert probs.shape == (3, len(splits.x_val), 10)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    assert stage_flops == s2d.stage_flops(s2d.transform(model, arch))
    # The scored view is the transformed network of the supernet's weights.
    net = s2d.transform(supernet.to_static(), arch)
    want = np.stack([np.asarray(o) for o in net(splits.x_val[:16], training=False)])
    got = np.stack([np.asarray(o) for o in supernet.model(splits.x_val[:16], training=False)])
    np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, np.abs(want).max()))
