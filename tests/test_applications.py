"""keras.applications families through `transform` (WORKSPACE.md, "keras.applications
support"), and the rules some of them need, on tiny hand-built models (fast tier).

Slow tier, one test per family at the smallest input size its constructor accepts: one stage
reproduces the original's outputs, three stages (default arch) build with every stage's
kernels live, and `count_flops` agrees with TensorFlow's profiler within 2 % (except on
NOT_PROFILED); for two families the SavedModel and TFLite exports answer what the Keras net
does.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

# keras.applications' own layer classes are not exported.
from keras.src.applications.convnext import LayerScale
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

import s2dnas_tf as s2d
from s2dnas_tf import calibration, conventions, export
from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rewriter
from s2dnas_tf import rules as rules_lib
from s2dnas_tf.supernet import Supernet
from tests import helpers
from tests.test_flops import _profiler_flops

# Family -> the smallest input side its constructor accepts (Inception 75, Xception 71; the
# others 32). include_top=True, 10 classes, logits out (classifier_activation=None), so one
# stage is compared with the original's logits (tests/test_transform.py covers the dropped
# softmax).
FAMILIES = {
    "VGG16": 32,
    "ResNet50": 32,
    "ResNet50V2": 32,
    "DenseNet121": 32,
    "MobileNet": 32,
    "MobileNetV2": 32,
    "MobileNetV3Small": 32,
    "MobileNetV3Large": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "NASNetMobile": 32,
    "ConvNeXtTiny": 32,
}

# The profiler counts convolutions and matmuls only (tests/test_flops.py::_profiler_flops);
# these two are built of the conv kinds the other families' profiles check already
# (InceptionResNetV2: InceptionV3's; NASNetMobile: Xception's separable convs and
# MobileNet's depthwise ones) and are the two largest graphs to profile (10-15 s each).
NOT_PROFILED = {"InceptionResNetV2", "NASNetMobile"}


def check_one_stage_reproduces(model, x):
    space = s2d.SearchSpace.from_model(model, num_stages=1)
    net = s2d.transform(model, space.default_arch())
    actual, expected = helpers.comparable_scores(model, net(x)[0], x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, atol=1e-4 * scale, rtol=0)
    assert s2d.stage_flops(net) == [s2d.count_flops(model)]


def check_stage_kernels_live(net, x):
    """Every kernel of every stage gets a nonzero gradient from some stage's logits; returns
    the stages' logits (one forward pass serves both checks)."""
    weights = {}
    for layer in net.layers:
        stage = conventions.stage_of_layer(layer.name)
        for w in layer.trainable_weights:
            if stage is not None and w.path.rsplit("/", 1)[-1].endswith("kernel"):
                weights.setdefault(stage, []).append(w)
    assert sorted(weights) == list(range(1, len(net.outputs) + 1)), sorted(weights)
    flat = [w for ws in weights.values() for w in ws]
    rng = np.random.default_rng(0)
    with tf.GradientTape() as tape:
        outs = net(x, training=False)
        loss = sum(
            tf.reduce_sum(o * rng.normal(size=o.shape).astype("float32")) for o in outs
        )
    grads = tape.gradient(loss, flat)
    dead = [w.path for w, g in zip(flat, grads) if g is None or not np.any(np.asarray(g))]
    assert not dead, dead
    return outs


def check_three_stages(model, x, num_stages=3):
    space = s2d.SearchSpace.from_model(model, num_stages=num_stages)
    net = s2d.transform(model, space.default_arch())
    outs = check_stage_kernels_live(net, x)
    num_classes = int(model.outputs[0].shape[-1])
    assert len(outs) == num_stages
    for o in outs:
        assert tuple(o.shape) == (x.shape[0], num_classes)
        assert np.all(np.isfinite(np.asarray(o)))
    flops = s2d.stage_flops(net)
    assert all(b > a for a, b in zip(flops, flops[1:])), flops
    return space, net


# The default run builds these five (plain, residual, depthwise, SE gates with Rescaling,
# Flatten + Dense head); the other ten, whose rules tiny hand-built models check in the
# default run, are the extended tier (four minutes on a slow 2-core machine).
DEFAULT_RUN_FAMILIES = {"VGG16", "ResNet50", "MobileNet", "MobileNetV2", "EfficientNetB0"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    name if name in DEFAULT_RUN_FAMILIES else pytest.param(name, marks=pytest.mark.extended)
    for name in FAMILIES])
def test_family(name):
    size = FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None
    )
    helpers.randomize_normalization_stats(model)
    x = helpers.images(model, scale=255.0)
    check_one_stage_reproduces(model, x)
    check_three_stages(model, x)
    if name not in NOT_PROFILED:
        macs = s2d.count_flops(model)
        profiled = _profiler_flops(model, (size, size, 3)) / 2
        assert abs(profiled - macs) <= 0.02 * macs, (profiled, macs)


def check_exports(net, x, tmp_path):
    """The SavedModel (loaded in this process) answers every stage's logits of the Keras net
    when thresholds send all images there (random-weight families give nearly the same
    confidence for every image, so one threshold set would not spread them over stages);
    its float TFLite file answers the last stage's (every IF branch taken)."""
    logits = [np.asarray(o) for o in net(x)]
    atol = 1e-4 * max(1.0, max(float(np.abs(z).max()) for z in logits))
    num_stages = len(logits)
    never, always = calibration.NEVER_EXIT, 0.0
    saved = export.export_saved_model(net, [never] * (num_stages - 1), tmp_path, "family")
    serve = tf.saved_model.load(saved).signatures[export.SERVING_WITH_THRESHOLDS]
    for stage in range(1, num_stages + 1):
        thresholds = [never] * (stage - 1) + [always] * (num_stages - stage)
        served = serve(images=tf.constant(x), thresholds=tf.constant(thresholds, tf.float32))
        np.testing.assert_array_equal(served["exit_stage"].numpy(), [stage] * len(x))
        np.testing.assert_allclose(
            served["logits"].numpy(), logits[stage - 1], atol=atol, rtol=0
        )
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = export.convert_to_tflite(saved, tmp_path / "family.tflite")
    runner = litert.Interpreter(model_path=path).get_signature_runner("serving_default")
    answers = [runner(images=x[i : i + 1]) for i in range(len(x))]
    np.testing.assert_array_equal(
        np.concatenate([a["exit_stage"] for a in answers]), [num_stages] * len(x)
    )
    np.testing.assert_allclose(
        np.concatenate([a["logits"] for a in answers]), logits[-1], atol=atol, rtol=0
    )


# Exports take 1-4 minutes a family at the families' own sizes (NASNetMobile: 4, checked by
# hand, WORKSPACE.md; ConvNeXtTiny: 100 s), so the default run exports ConvNeXt, with
# keras.applications' own layers (LayerScale) and LayerNorm, built by the family's own
# constructor at one block per stage and narrow widths: the same graph, layers and rules as
# ConvNeXtTiny (whose transform test_family covers), in seconds. MobileNetV3Small's export
# (keras.ops calls) passed too (54 s) and was left out of the default run.
def _small_convnext():
    from keras.src.applications.convnext import ConvNeXt

    return ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[16, 32, 48, 64], name="convnext_s",
                    weights=None, input_shape=(32, 32, 3), classes=10,
                    classifier_activation=None)


EXPORTED = {"ConvNeXt": _small_convnext}


@pytest.mark.slow
@pytest.mark.extended  # a minute; the export's parity is checked on ResNets in the default run
@pytest.mark.parametrize("name", list(EXPORTED))
def test_family_exports(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = EXPORTED[name]()
    assert any(isinstance(layer, LayerScale) for layer in model.layers)
    helpers.randomize_normalization_stats(model)
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    net = s2d.transform(model, space.default_arch())
    check_exports(net, helpers.images(model, n=3, scale=255.0), tmp_path)


# --- fast tier: the new rules on tiny hand-built models -------------------------------------


def check_plan_agrees_with_build(model, seeds=(0, 1)):
    """`rewriter.plan` holds the channels `transform` builds, at every tensor."""
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    graph = space.analysis.graph
    for arch in [space.default_arch()] + [space.sample(seed) for seed in seeds]:
        builder = rewriter._Builder(space, arch)
        (in_key,) = graph.inputs
        images = keras.Input(shape=graph.tensors[in_key].shape[1:])
        built = graph_lib.rebuild(
            graph, builder.step, {in_key: rules_lib.Shared(images)}, nodes=builder.order
        )
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
        assert rewriter.plan(space, arch).stage_flops() == s2d.stage_flops(
            s2d.transform(model, arch)
        )


def _key_of(model, space, layer_name):
    node = next(n for n in space.analysis.graph.nodes if n.name == layer_name)
    return node.outputs[0]


def inception_se_cnn():
    """Inception-style concatenations joined with channel-mixing outputs: a squeeze-excite
    gate on a concatenation (Multiply) and a NASNet-style Add of a conv to one."""
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = L.Conv2D(6, 1, name="branch_a")(x)
    b = L.Conv2D(10, 3, padding="same", name="branch_b")(x)
    cat = L.Concatenate(name="cat")([a, b])
    cat = L.BatchNormalization(name="cat_bn")(cat)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(cat)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_mul")([cat, se])
    h = L.Conv2D(16, 1, name="h_conv")(L.ReLU(name="relu")(x))
    h = L.BatchNormalization(name="h_bn")(h)
    x = L.Add(name="nas_add")([L.AveragePooling2D(3, 1, "same", name="pool")(h), x])
    # A follower the graph's own order puts before the concatenation it follows.
    early = L.Conv2D(12, 1, name="early_conv")(x)
    late = L.Concatenate(name="late_cat")(
        [L.Conv2D(4, 1, name="c1")(x), L.Conv2D(8, 3, padding="same", name="c2")(x)]
    )
    x = L.Add(name="late_add")([early, late])
    x = L.Conv2D(12, 3, strides=2, name="down")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(5, name="logits")(x), name="inception_se")


def test_mixing_output_joined_with_a_concatenation_follows_its_layout():
    model = helpers.randomize_normalization_stats(inception_se_cnn())
    space, _ = helpers.run_transform_invariants_test(model)
    ana = space.analysis
    cat = _key_of(model, space, "cat")
    for name in ("se_expand", "h_conv", "early_conv"):
        key = _key_of(model, space, name)
        assert ana.follows(key) and ana.unit_of(key) is None
    nodes = space.analysis.graph.nodes
    position = {n.name: i for i, n in enumerate(nodes)}
    assert position["early_conv"] < position["late_cat"], "the order case is not exercised"
    assert not ana.follows(_key_of(model, space, "se_reduce"))
    # The followers hold, per stage, the concatenation's channels (here not contiguous).
    for arch in (space.default_arch(), space.sample(3)):
        values = rewriter.plan(space, arch).values
        for name in ("se_expand", "h_conv"):
            for held, expected in zip(values[_key_of(model, space, name)], values[cat]):
                np.testing.assert_array_equal(held, expected)
        assert any(
            idx is not None and np.any(np.diff(idx) != 1) for idx in values[cat]
        ), "the test should exercise a non-contiguous layout"
    check_plan_agrees_with_build(model)


def test_supernet_views_with_followers_are_the_transformed_networks():
    """The supernet masks what `rewriter.plan` says: followers included."""
    model = helpers.randomize_normalization_stats(inception_se_cnn())
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    supernet = Supernet(model, space)
    x = helpers.images(model)
    for arch in (space.default_arch(), space.sample(1)):
        supernet.set_arch(arch)
        views = supernet.model(x)
        for view, built in zip(views, s2d.transform(model, arch)(x)):
            np.testing.assert_allclose(np.asarray(view), np.asarray(built), atol=1e-5)


def se_cnn():
    """Squeeze-and-excite blocks three ways (1x1 convs, Dense with a Reshape, on a
    concatenation), and a Dense after global pooling that is not one (its output feeds the
    classifier, not a gate)."""
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, padding="same", name="stem")(inputs)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se1_pool")(x)
    se = L.Conv2D(4, 1, activation="relu", name="se1_reduce")(se)
    se = L.Conv2D(16, 1, activation="hard_sigmoid", name="se1_expand")(se)
    x = L.Multiply(name="se1_mul")([x, se])
    x = L.Conv2D(24, 3, strides=2, padding="same", name="down")(x)
    se = L.GlobalMaxPooling2D(name="se2_pool")(x)
    se = L.Dense(8, activation="relu", name="se2_reduce")(se)
    se = L.Dense(24, activation="sigmoid", name="se2_expand")(se)
    x = L.Multiply(name="se2_mul")([x, L.Reshape((1, 1, 24), name="se2_reshape")(se)])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(12, activation="relu", name="fc")(x)
    return keras.Model(inputs, L.Dense(5, name="logits")(x), name="se_cnn")


def test_squeeze_excite_bottlenecks_are_stage_ones_whole():
    """A squeeze-and-excite bottleneck is a gate unit: stage 1 computes all of it from the
    pooled channels it holds, every stage's excitation reads all of it (no stage gets a
    narrow slice that can be dead); other units are split as before."""
    model = helpers.randomize_normalization_stats(se_cnn())
    space, _ = helpers.run_transform_invariants_test(model)
    ana = space.analysis
    gates = {name for name in ("se1_reduce", "se2_reduce", "se1_expand", "fc", "stem")
             if (unit := ana.unit_of(_key_of(model, space, name))) is not None and unit.gate}
    assert gates == {"se1_reduce", "se2_reduce"}
    on_concat = inception_se_cnn()  # ... also when the excitation follows a concatenation
    concat_space = s2d.SearchSpace.from_model(on_concat, num_stages=3)
    assert concat_space.analysis.unit_of(_key_of(on_concat, concat_space, "se_reduce")).gate
    for arch in (space.default_arch(), space.sample(2)):
        plan = rewriter.plan(space, arch)
        for name, channels in (("se1_reduce", 4), ("se2_reduce", 8)):
            key = _key_of(model, space, name)
            held = plan.values[key]
            np.testing.assert_array_equal(held[0], np.arange(channels))
            assert held[1] is None and held[2] is None
        expand = next(n for n in ana.graph.nodes if n.name == "se2_expand")
        for stage in (1, 2, 3):
            np.testing.assert_array_equal(plan.visible_inputs(expand, stage), np.arange(8))
    check_plan_agrees_with_build(model)
    # The supernet's views are the transformed networks, gates included.
    supernet = Supernet(model, space)
    x = helpers.images(model)
    for arch in (space.default_arch(), space.sample(1)):
        supernet.set_arch(arch)
        for view, built in zip(supernet.model(x), s2d.transform(model, arch)(x)):
            np.testing.assert_allclose(np.asarray(view), np.asarray(built), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 4])
def test_mobilenetv3_squeeze_excite_of_every_stage_is_live(seed):
    """Issue 19's case: MobileNetV3Small (64x64, 3 stages, default arch) built after these
    seeds gave stage 1 a 3-unit slice of the first SE bottleneck that was dead on every
    input; with the bottleneck stage 1's whole, every stage's kernels get gradients."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    assert sum(unit.gate for unit in space.analysis.units) == 9  # its nine SE blocks
    check_stage_kernels_live(s2d.transform(model, space.default_arch()),
                             helpers.images(model, scale=255.0))


def test_layout_computed_from_its_followers_is_refused():
    """The concatenation a conv output must follow is itself computed from that conv."""
    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    m = L.Conv2D(8, 3, padding="same", name="m")(inputs)
    cat = L.Concatenate(name="cat")([L.Conv2D(4, 1, name="a")(m), L.Conv2D(4, 1, name="b")(m)])
    x = L.Add(name="join")([cat, m])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(3)(x))
    space = s2d.SearchSpace.from_model(model, num_stages=2)
    with pytest.raises(ValueError, match="'m'.*'cat'.*computed from them"):
        s2d.transform(model, space.default_arch())


def convnext_like_cnn():
    """ConvNeXt's block: depthwise conv, LayerNorm, pointwise Dense, LayerScale, residual;
    and an Inception-ResNet residual through CustomScaleLayer on a concatenation."""
    L = keras.layers
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(16, 2, strides=2, name="stem")(inputs)
    x = L.LayerNormalization(epsilon=1e-6, name="stem_ln")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.LayerNormalization(epsilon=1e-6, name="ln")(y)
    y = L.Dense(32, name="pw1")(y)
    y = L.Activation("gelu", name="gelu")(y)
    y = L.Dense(16, name="pw2")(y)
    y = LayerScale(0.5, 16, name="layer_scale")(y)
    x = L.Add(name="res")([x, y])
    cat = L.Concatenate(name="cat")(
        [L.Conv2D(6, 1, name="b1")(x), L.Conv2D(10, 3, padding="same", name="b2")(x)]
    )
    up = L.Conv2D(16, 1, name="up")(L.Activation("relu", name="relu")(cat))
    x = CustomScaleLayer(0.2, name="scale_res")([cat, up])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.LayerNormalization(epsilon=1e-6, name="head_ln")(x)
    return keras.Model(inputs, L.Dense(4, name="logits")(x), name="convnext_like")


def _randomize_scales(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (LayerScale, keras.layers.LayerNormalization)):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
    return model


def test_layer_scale_custom_scale_layer_and_layer_norm():
    model = _randomize_scales(convnext_like_cnn())
    space, _ = helpers.run_transform_invariants_test(model)
    net = s2d.transform(model, space.default_arch())
    scales = [layer for layer in net.layers if isinstance(layer, LayerScale)]
    assert scales and all(
        layer.projection_dim == layer.gamma.shape[0] < 16 for layer in scales
    )
    check_plan_agrees_with_build(model)


def test_layer_norm_normalises_each_stage_over_its_own_channels():
    """The decision documented in rules.AxisChannelwiseRule: stage s's LayerNorm runs over
    the channels its slice holds, with their gamma and beta."""
    L = keras.layers
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(12, 3, name="conv")(inputs)
    x = L.LayerNormalization(epsilon=1e-8, center=False, scale=False, name="ln")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(3, name="logits")(x))
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    net = s2d.transform(model, space.default_arch())
    x = helpers.images(model, scale=255.0)
    widths = []
    for stage in (1, 2, 3):
        layer = net.get_layer(conventions.stage_layer_name(stage, "ln"))
        y = np.asarray(keras.Model(net.inputs, layer.output)(x))
        widths.append(y.shape[-1])
        np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
        np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-3)
    assert sum(widths) == 12 and max(widths) < 12, widths


def test_a_users_per_channel_layer_through_register_rule():
    """WORKSPACE.md's "Adding a layer rule", for a layer defined here."""

    class ChannelAffine(keras.layers.Layer):
        """x * scale + shift, one pair per channel (built from the input's channels)."""

        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")
            self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros")

        def call(self, x):
            return x * self.scale + self.shift

    L = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(12, 3, padding="same", name="conv")(inputs)
    x = ChannelAffine(name="affine")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(16, 3, strides=2, name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(4, name="logits")(x))
    rng = np.random.default_rng(0)
    affine = model.get_layer("affine")
    affine.set_weights([rng.uniform(0.5, 1.5, [12]), rng.normal(0, 0.5, [12])])
    with pytest.raises(ValueError, match="'affine' of class .*ChannelAffine has no rule"):
        s2d.SearchSpace.from_model(model, num_stages=2)

    class ChannelAffineRule(rules_lib.ChannelwiseRule):
        """Per-channel layer: ChannelwiseRule slices weights whose last dim is C."""

    s2d.register_rule(ChannelAffine)(ChannelAffineRule())
    space, _ = helpers.run_transform_invariants_test(model)
    net = s2d.transform(model, space.default_arch())
    copies = [layer for layer in net.layers if isinstance(layer, ChannelAffine)]
    assert len(copies) == 3
    assert sorted(int(c.scale.shape[0]) for c in copies) != [12, 12, 12]
    check_plan_agrees_with_build(model)
