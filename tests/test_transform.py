"""The invariants of docs/design.md §2 over the model zoo, keras.applications and a CNN of every
layer type."""

import json

import keras
import numpy as np
import pytest

import s2dnas_tf as s2d
from s2dnas_tf import rewriter
from s2dnas_tf.models import build_model
from tests import helpers

# The full-size ResNet-56 and VGG16-BN repeat ResNet-20's and the every-layer model's
# checks at full size, and MobileNetV2-CIFAR test_keras_applications' MobileNetV2 (the same
# inverted-residual rules; 20-67 s per run): extended tier.
ZOO = [
    "resnet20",
    pytest.param("resnet56", marks=[pytest.mark.slow, pytest.mark.extended]),
    pytest.param("vgg16_bn", marks=[pytest.mark.slow, pytest.mark.extended]),
    pytest.param("mobilenetv2_cifar", marks=[pytest.mark.slow, pytest.mark.extended]),
]


@pytest.mark.parametrize("name", ZOO)
def test_reference_models(name):
    model = helpers.randomize_normalization_stats(build_model(name))
    helpers.run_transform_invariants_test(model)


# The full invariants (stage independence included) on keras.applications families (and
# MobileNetV3Small below, with its conv classifier); all 15 families are transformed and
# checked for live weights in test_applications.py.
APPLICATIONS = ["MobileNetV2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_keras_applications(name):
    ctor = getattr(keras.applications, name)
    model = ctor(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    helpers.randomize_normalization_stats(model)
    helpers.run_transform_invariants_test(model)


def test_conv_classifier_with_flatten_and_softmax_tail():
    """MobileNetV3's head: a 1x1-conv classifier, Flatten, then softmax."""
    model = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=5, include_preprocessing=True
    )
    helpers.randomize_normalization_stats(model)
    helpers.run_transform_invariants_test(model)


def test_softmax_output_is_dropped_and_logits_returned():
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=5, alpha=0.35
    )
    helpers.randomize_normalization_stats(model)
    x = helpers.images(model)
    space = s2d.SearchSpace.from_model(model, num_stages=1)
    logits = np.asarray(s2d.transform(model, space.default_arch())(x)[0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.softmax(logits)), np.asarray(model(x)), atol=1e-5
    )


def every_layer_cnn(num_classes=7, channel_norm=keras.layers.LayerNormalization):
    """A functional CNN built from every layer type the rules support (`channel_norm`: the
    class of the normalisation after the grouped conv)."""
    L = keras.layers
    inputs = keras.Input((24, 24, 3), name="img")
    x = L.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = L.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.1, 0.2, 0.3], name="norm")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(16, 3, use_bias=True, name="stem")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="relu6")(x)
    y = L.Conv2D(16, 3, padding="same", groups=4, name="grouped")(x)
    y = channel_norm(name="ln")(y)
    y = L.Activation("hard_swish", name="hswish")(y)
    x = L.Add(name="add1")([x, y])
    # squeeze-excite with a broadcast Multiply
    se = L.GlobalAveragePooling2D(name="se_pool")(x)
    se = L.Dense(4, activation="swish", name="se_reduce")(se)
    se = L.Dense(16, activation="sigmoid", name="se_expand")(se)
    se = L.Reshape((1, 1, 16), name="se_reshape")(se)
    x = L.Multiply(name="se_mul")([x, se])
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw2")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu")(x)
    b1 = L.SeparableConv2D(12, 3, padding="same", dilation_rate=2, name="sep")(x)
    b2 = L.Conv2D(8, 1, activation="sigmoid", name="branch")(x)
    x = L.Concatenate(name="cat")([b1, b2])
    x = L.LeakyReLU(0.1, name="leaky")(x)
    x = L.Cropping2D(1, name="crop")(x)
    x = L.SpatialDropout2D(0.1, name="sdrop")(x)
    x = L.Conv2D(24, 3, padding="same", dilation_rate=2, name="dilated")(x)
    x = L.MaxPooling2D(name="maxpool")(x)
    x = L.ELU(name="elu")(x)
    x = L.AveragePooling2D(2, name="avgpool")(x)
    x = L.Conv2D(20, 1, name="pw")(x)
    g = L.GlobalMaxPooling2D(keepdims=True, name="gmax")(x)
    x = L.Multiply(name="gate")([x, L.Activation("sigmoid", name="sig")(g)])
    x = L.Flatten(name="flat")(x)
    x = L.Dropout(0.2, name="drop")(x)
    x = L.Dense(32, activation="relu", name="fc")(x)
    x = L.Dense(num_classes, name="logits")(x)
    outputs = L.Softmax(name="probs")(x)
    return keras.Model(inputs, outputs, name="every_layer")


def test_every_supported_layer_type():
    model = helpers.randomize_normalization_stats(every_layer_cnn())
    space, _ = helpers.run_transform_invariants_test(model, num_stages=3)
    assert space.group_labels == ("24x24", "12x12", "10x10", "2x2")


@pytest.mark.slow  # three full-size transforms
def test_sequential_and_nested_models():
    L = keras.layers
    seq = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            L.Conv2D(8, 3, name="c1"),
            L.BatchNormalization(name="b1"),
            L.ReLU(name="r1"),
            L.Conv2D(16, 3, strides=2, name="c2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(4, name="out"),
        ],
        name="seq",
    )
    helpers.run_transform_invariants_test(helpers.randomize_normalization_stats(seq))
    backbone = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35
    )
    wrapped = keras.Sequential(
        [keras.Input((32, 32, 3)), backbone, L.GlobalAveragePooling2D(name="gap"), L.Dense(3)]
    )
    helpers.run_transform_invariants_test(helpers.randomize_normalization_stats(wrapped))


# --- the space ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20():
    return build_model("resnet20")


def test_space_of_resnet20(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    assert space.group_labels == ("32x32", "16x16", "8x8")
    assert space.num_tokens == 8
    assert space.token_kinds() == ["fraction"] * 6 + ["concat"] * 2
    # 36 non-decreasing pairs of eighths per group, cubed, times 3 concat choices squared.
    assert space.size == 36**3 * 3**2 == 419_904
    assert "419,904" in space.describe()


def test_sample_is_deterministic_and_valid(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=4)
    samples = [space.sample(seed).tokens for seed in range(20)]
    assert samples == [space.sample(seed).tokens for seed in range(20)]
    assert len({tuple(t) for t in samples}) > 15
    for tokens in samples:
        assert space.decode(tokens).tokens == tokens
        prefix = []
        for tok in tokens:
            assert tok in space.valid_choices(prefix)
            prefix.append(tok)


def test_arch_json_round_trip_and_readable(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    arch = space.sample(3)
    again = s2d.Arch.from_json(arch.to_json())
    assert again == arch
    data = json.loads(arch.to_json())
    assert data["tokens"] == arch.tokens
    text = str(arch)
    assert "stage 1: sees" in text and "reuses" in text and "32x32" in text


def test_decode_refuses_bad_tokens(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    with pytest.raises(ValueError, match="takes 8 tokens"):
        space.decode([0, 0, 0])
    with pytest.raises(ValueError, match=r"must be in \[0, 7\]"):
        space.decode([8, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"must be in \[0, 2\]"):
        space.decode([0, 0, 0, 1, 1, 1, 3, 0])
    with pytest.raises(ValueError, match="at least the channels"):
        space.decode([4, 4, 4, 3, 5, 5, 0, 0])


def test_arch_of_another_space_is_refused(resnet20):
    other = s2d.SearchSpace.from_model(resnet20, num_stages=2).default_arch()
    with pytest.raises(ValueError, match="2 stages"):
        s2d.SearchSpace.from_model(resnet20, num_stages=3).check_arch(other)
    with pytest.raises(TypeError, match="Arch"):
        s2d.transform(resnet20, other.tokens)


@pytest.mark.parametrize("bad", [0, -1])
def test_num_stages_must_be_positive(resnet20, bad):
    with pytest.raises(ValueError, match=f"Received: num_stages={bad}"):
        s2d.SearchSpace.from_model(resnet20, num_stages=bad)


def test_num_stages_must_be_int(resnet20):
    with pytest.raises(TypeError, match="num_stages must be an int"):
        s2d.SearchSpace.from_model(resnet20, num_stages=2.0)


# --- the channel multiple -----------------------------------------------------------------


def _stage_conv_widths(net):
    """Output channels of every stage's convolution, by stage."""
    widths = {}
    for layer in net.layers:
        stage = rewriter.stage_of_layer(layer.name)
        if stage is not None and isinstance(layer, keras.layers.Conv2D):
            widths.setdefault(stage, []).append(int(layer.filters))
    return widths


def test_channel_multiple_keeps_every_stage_on_whole_blocks(resnet20):
    plain = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, channel_multiple=8)
    assert "in steps of [8]" in space.describe() and "in steps of" not in plain.describe()
    tokens = [4, 1, 0, 7, 6, 3, 0, 0]  # 5/8 of 16 channels is 10 without the multiple
    unaligned = _stage_conv_widths(s2d.transform(resnet20, plain.decode(tokens)))
    assert any(w % 8 for ws in unaligned.values() for w in ws)
    for arch in [space.decode(tokens), space.default_arch()] + [space.sample(i) for i in range(4)]:
        assert arch.channel_multiple == 8
        for bounds in space.unit_bounds(arch).values():
            assert all(b % 8 == 0 for b in bounds), bounds
        net = s2d.transform(resnet20, arch)
        widths = _stage_conv_widths(net)
        assert widths and all(w % 8 == 0 for ws in widths.values() for w in ws), widths
    x = helpers.images(resnet20)
    helpers.check_stage_independence(net, x)
    flops = s2d.stage_flops(net)
    assert all(b > a for a, b in zip(flops, flops[1:])), flops


def test_channel_multiple_falls_back_to_the_common_divisor():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(12, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    space = s2d.SearchSpace.from_model(model, num_stages=2, channel_multiple=8)
    units = {u.channels: u for u in space.analysis.units}
    assert space.unit_quantum(units[12]) == 4 and space.unit_quantum(units[16]) == 8
    for seed in range(6):
        arch = space.sample(seed)
        bounds = space.unit_bounds(arch)
        assert all(b % 4 == 0 for b in bounds[units[12].index])
        assert all(b % 8 == 0 for b in bounds[units[16].index])
        net = s2d.transform(model, arch)
        assert [tuple(o.shape) for o in net(np.zeros((1, 8, 8, 3), "float32"))] == [(1, 4)] * 2


def test_tokens_that_round_alike_share_a_network_key(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, channel_multiple=8)
    plain = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    a, b = [4, 1, 0, 7, 6, 3, 0, 0], [3, 1, 0, 7, 6, 3, 0, 0]  # 10 or 8 channels -> 8
    assert space.network_key(a) == space.network_key(b)
    assert plain.network_key(a) != plain.network_key(b)
    assert space.network_key(a) != space.network_key(a[:-1] + [1])  # another concat position


def test_channel_multiple_in_arch_json_and_space_checks(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, channel_multiple=8)
    arch = space.sample(5)
    data = json.loads(arch.to_json())
    assert data["channel_multiple"] == 8 and "multiples of 8" in data["readable"]
    assert s2d.Arch.from_json(arch.to_json()) == arch
    del data["channel_multiple"]  # an arch.json written before the option existed
    assert s2d.Arch.from_dict(data).channel_multiple == 1
    with pytest.raises(ValueError, match="channel multiple 8"):
        s2d.SearchSpace.from_model(resnet20, num_stages=3).check_arch(arch)
    with pytest.raises(ValueError, match="channel_multiple must be >= 1"):
        s2d.Arch.from_dict({**data, "channel_multiple": 0})


# --- depth: stages skipping identity blocks ------------------------------------------------


def test_identity_blocks_are_found_where_the_shortcut_is_the_identity(resnet20):
    """ResNet-20: every block but the first of groups 2 and 3 (1x1-conv shortcuts);
    MobileNetV2: the stride-1 blocks whose channels stay; none in a plain CNN."""
    analysis = s2d.SearchSpace.from_model(resnet20, block_skipping=True).analysis
    names = [analysis.graph.nodes[b.add].name for b in analysis.identity_blocks]
    assert names == ["stage1_block1_add", "stage1_block2_add", "stage1_block3_add",
                     "stage2_block2_add", "stage2_block3_add", "stage3_block2_add",
                     "stage3_block3_add"]
    block = analysis.identity_blocks[3]
    branch = {analysis.graph.nodes[i].name for i in block.nodes}
    assert branch == {f"stage2_block2_{n}" for n in ("conv1", "bn1", "relu1", "conv2", "bn2")}
    mobilenet = build_model("mobilenetv2_cifar", input_shape=(16, 16, 3), width_multiplier=0.35)
    assert s2d.SearchSpace.from_model(mobilenet, block_skipping=True).skippable == (2, 2, 5, 2)
    vgg = build_model("vgg16_bn", width_multiplier=0.125)
    assert s2d.SearchSpace.from_model(vgg, block_skipping=True).skippable == (0,) * 5


def test_a_branch_reading_another_tensor_is_not_an_identity_block():
    """add(x, f(x, z)): skipping f would lose z's contribution, so it is not skippable."""
    inputs = keras.Input((8, 8, 3))
    z = keras.layers.Conv2D(4, 3, padding="same", name="z")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="x")(z)
    f = keras.layers.Conv2D(4, 3, padding="same", name="f")(x)
    f = keras.layers.Add(name="mix")([f, z])
    y = keras.layers.Add(name="join")([x, f])
    g = keras.layers.Conv2D(4, 3, padding="same", name="g")(y)
    y = keras.layers.Add(name="ok")([y, g])
    head = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(y))
    analysis = s2d.SearchSpace.from_model(keras.Model(inputs, head)).analysis
    names = [analysis.graph.nodes[b.add].name for b in analysis.identity_blocks]
    assert names == ["ok"]


def test_block_skipping_space_of_resnet20(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, block_skipping=True)
    assert space.skippable == (3, 2, 2)
    assert space.num_tokens == 14
    assert space.token_kinds() == ["fraction"] * 6 + ["concat"] * 2 + ["depth"] * 6
    assert space.token_choices()[8:] == [4, 3, 3, 4, 3, 3]
    # Non-increasing skip pairs per group: 10, 6, 6 of them.
    assert space.size == 419_904 * 10 * 6 * 6
    assert "block skipping over 7 identity blocks" in space.describe()
    assert space.default_arch().skips == ((0, 0, 0), (0, 0, 0))
    plain = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    for seed in range(10):  # the same seed draws the same widths with or without depth
        assert space.sample(seed).tokens[:8] == plain.sample(seed).tokens
    assert len({space.sample(seed).skips for seed in range(20)}) > 10
    with pytest.raises(ValueError, match="no more identity blocks than stage 1"):
        space.decode([0] * 8 + [1, 0, 0, 2, 0, 0])
    with pytest.raises(ValueError, match=r"must be in \[0, 2\]"):
        space.decode([0] * 8 + [0, 3, 0, 0, 0, 0])
    assert space.valid_choices([0] * 8 + [2, 1, 0]) == [0, 1, 2]
    assert space.valid_choices([0] * 8 + [2, 1, 0, 2]) == [0, 1]
    with pytest.raises(TypeError, match="block_skipping must be a bool"):
        s2d.SearchSpace.from_model(resnet20, block_skipping="yes")


def test_arch_with_skips_round_trips_and_is_checked_against_the_space(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, block_skipping=True)
    plain = s2d.SearchSpace.from_model(resnet20, num_stages=3)
    arch = space.decode([2, 2, 2, 5, 5, 5, 0, 1, 3, 2, 1, 1, 1, 0])
    assert arch.skips == ((3, 2, 1), (1, 1, 0))
    assert arch.skipped_blocks(1, 0) == 3 and arch.skipped_blocks(3, 0) == 0
    assert s2d.Arch.from_json(arch.to_json()) == arch
    assert "skips the last 3 block(s) of 32x32" in str(arch)
    data = json.loads(arch.to_json())
    del data["skips"]  # an arch.json written before block skipping existed
    assert s2d.Arch.from_dict(data).skips == ()
    with pytest.raises(ValueError, match="with block skipping"):
        plain.check_arch(arch)
    with pytest.raises(ValueError, match="without block skipping"):
        space.check_arch(plain.default_arch())
    assert space.network_key(arch.tokens) != space.network_key(arch.tokens[:8] + [0] * 6)


def _zero_branch_ends(model, names):
    """A copy of `model` whose BatchNormalizations `names` output zeros (gamma = beta = 0):
    those blocks add nothing to their shortcut."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name in names:
        layer = copy.get_layer(name)
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([0 * gamma, 0 * beta, mean, var])
    return copy


def test_a_skipped_block_passes_its_input_through(resnet20):
    """Stages 1 and 2 skipping blocks compute what the plain transformed network computes
    when those blocks' branches output zeros; stage 3, which skips none, differs. The
    skipped stages have fewer layers and FLOPs."""
    model = helpers.randomize_normalization_stats(resnet20)
    space = s2d.SearchSpace.from_model(model, num_stages=3, block_skipping=True)
    plain = s2d.SearchSpace.from_model(model, num_stages=3)
    widths = [2, 3, 1, 4, 5, 3, 1, 0]
    skipping = space.decode(widths + [2, 1, 2, 2, 1, 2])
    zeroed = _zero_branch_ends(model, [
        "stage1_block2_bn2", "stage1_block3_bn2", "stage2_block3_bn2", "stage3_block2_bn2",
        "stage3_block3_bn2"])
    x = helpers.images(model, n=4, scale=255.0)
    got = s2d.transform(model, skipping)(x)
    want = s2d.transform(zeroed, plain.decode(widths))(x)
    for stage in (0, 1):
        scale = max(1.0, float(np.abs(want[stage]).max()))
        np.testing.assert_allclose(got[stage], want[stage], atol=1e-5 * scale, rtol=0)
    assert not np.allclose(got[2], want[2], atol=1e-3)
    net, full = s2d.transform(model, skipping), s2d.transform(model, plain.decode(widths))
    convs = _stage_conv_widths(net)
    assert len(convs[1]) == len(_stage_conv_widths(full)[1]) - 10  # 5 blocks of 2 convs
    assert s2d.stage_flops(net)[0] < s2d.stage_flops(full)[0]
    assert s2d.stage_flops(net)[2] < s2d.stage_flops(full)[2]


def test_idle_stages_repeat_an_earlier_exit(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=3, channel_multiple=8)
    # Stage 2 already sees 64 of the 64 channels the classifier reads: stage 3 adds none.
    idle = space.decode([5, 2, 0, 5, 6, 7, 1, 2])
    assert space.idle_stages(idle) == [3]
    assert space.idle_stages(space.decode([4, 1, 0, 7, 6, 3, 0, 0])) == []
    assert "note: stage(s) [3] add no channels" in space.channel_table(idle)
    assert "note:" not in space.channel_table(space.decode([4, 1, 0, 7, 6, 3, 0, 0]))
    net = s2d.transform(resnet20, idle)
    x = helpers.images(resnet20)
    outs = [np.asarray(o) for o in net(x)]
    # Its exit reads stage 2's features, with a classifier of its own (inherited alike).
    np.testing.assert_allclose(outs[2], outs[1], rtol=1e-5, atol=1e-5)
    flops = s2d.stage_flops(net)
    assert flops[2] - flops[1] == int(resnet20.layers[-1].kernel.shape[0]) * 10


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_channel_multiple_must_be_a_positive_int(resnet20, bad):
    with pytest.raises(ValueError, match="channel_multiple must be an int >= 1"):
        s2d.SearchSpace.from_model(resnet20, num_stages=3, channel_multiple=bad)


def test_partition_boundaries():
    from s2dnas_tf.space import partition_boundaries

    assert partition_boundaries(16, 1, [3, 5], 8) == [0, 6, 10, 16]
    assert partition_boundaries(16, 1, [8, 8], 8) == [0, 16, 16, 16]
    assert partition_boundaries(16, 4, [3, 5], 8) == [0, 8, 12, 16]
    # too few channels: stage 1 still gets one, growth is kept where possible
    assert partition_boundaries(2, 1, [1, 2], 8) == [0, 1, 1, 2]
    b = partition_boundaries(64, 1, [1, 1, 1, 1], 8)
    assert b[0] == 0 and b[1] == 8 and b[-1] == 64 and b == sorted(b)


# --- refusals ---------------------------------------------------------------------------------


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match="subclassed model"):
        s2d.SearchSpace.from_model(net)


def test_not_a_model_is_refused():
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        s2d.SearchSpace.from_model("resnet20")


def test_unsupported_layer_is_named_with_its_class():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = keras.layers.Lambda(lambda t: t * 2, name="double")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError) as err:
        s2d.SearchSpace.from_model(model)
    message = str(err.value)
    assert "'double'" in message and "Lambda" in message
    assert "Supported layer classes" in message and "Conv2D" in message


def test_elementwise_keras_ops_calls_are_supported():
    inputs = keras.Input((12, 12, 3))
    x = inputs / 255.0 - 0.5  # shared: computed once on the image
    x = keras.layers.Conv2D(8, 3, name="c1")(x)
    x = keras.ops.relu(x) * (1.0 / 6.0)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = x + keras.ops.sigmoid(y)  # two operands, one unit
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    helpers.run_transform_invariants_test(model)


def test_keras_ops_call_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = keras.ops.cumsum(x, axis=-1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="keras.ops call"):
        s2d.SearchSpace.from_model(model)


def test_softmax_inside_the_network_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Softmax(name="mid_softmax")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="mid_softmax"):
        s2d.SearchSpace.from_model(model)


def test_output_without_classifier_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x))
    with pytest.raises(ValueError, match="Dense classifier"):
        s2d.SearchSpace.from_model(model)


def test_multi_input_model_is_refused():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(ValueError, match="exactly one input"):
        s2d.SearchSpace.from_model(model)


def test_channels_first_is_refused():
    inputs = keras.Input((3, 8, 8))
    x = keras.layers.Conv2D(4, 3, data_format="channels_first", name="cf")(inputs)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="'cf'.*channels_last"):
        s2d.SearchSpace.from_model(model)


def test_shared_layer_is_refused():
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="twice")
    x = conv(conv(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="'twice' is called more than once"):
        s2d.SearchSpace.from_model(model)


def test_transformed_net_saves_and_loads(tmp_path, resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=2)
    net = s2d.transform(resnet20, space.default_arch())
    path = tmp_path / "net.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    x = helpers.images(resnet20)
    for a, b in zip(net(x), loaded(x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert s2d.stage_flops(loaded) == s2d.stage_flops(net)


def test_input_normalization_is_shared_by_all_stages():
    from s2dnas_tf.models import with_input_normalization

    model = with_input_normalization(build_model("resnet8"), [125.0] * 3, [4000.0] * 3)
    helpers.randomize_normalization_stats(model)
    space, net = helpers.run_transform_invariants_test(model)
    names = [layer.name for layer in net.layers]
    assert "shared_input_norm" in names
    assert not any(n.startswith("stage") and n.endswith("input_norm") for n in names)


def test_partition_boundaries_properties():
    from s2dnas_tf.space import partition_boundaries

    rng = np.random.default_rng(0)
    for _ in range(500):
        stages = int(rng.integers(1, 6))
        quantum = int(rng.choice([1, 2, 4]))
        channels = quantum * int(rng.integers(1, 40))
        fractions = sorted(int(v) for v in rng.integers(1, 9, size=stages - 1))
        b = partition_boundaries(channels, quantum, fractions, 8)
        assert len(b) == stages + 1 and b[0] == 0 and b[-1] == channels
        assert b == sorted(b) and all(v % quantum == 0 for v in b)
        assert b[1] >= quantum, (channels, quantum, fractions, b)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_cifar"])
def test_to_static_puts_a_one_stage_nets_weights_back(name):
    """A one-stage net trained on (here: its weights perturbed) gives its weights back to a
    copy of the static model, which then computes what the net does."""
    model = build_model(name)
    helpers.randomize_normalization_stats(model)
    x = helpers.images(model)
    before = np.asarray(model(x, training=False))
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=1).default_arch())
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if layer.weights:
            layer.set_weights([w + 0.05 * rng.standard_normal(w.shape).astype(w.dtype)
                               for w in layer.get_weights()])
    static = rewriter.to_static(net, model)
    assert [layer.name for layer in static.layers] == [layer.name for layer in model.layers]
    expected = np.asarray(net(x, training=False)[0])
    np.testing.assert_allclose(np.asarray(static(x, training=False)), expected, atol=1e-4,
                               rtol=1e-4)
    assert np.abs(expected - before).max() > 1e-3  # the perturbation did change the output
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), before)  # untouched


def test_to_static_refuses_what_it_cannot_invert(resnet20):
    space = s2d.SearchSpace.from_model(resnet20, num_stages=2)
    with pytest.raises(ValueError, match="Expected a one-stage network"):
        rewriter.to_static(s2d.transform(resnet20, space.default_arch()), resnet20)
    other = build_model("resnet8")
    net = s2d.transform(other, s2d.SearchSpace.from_model(other, num_stages=1).default_arch())
    with pytest.raises(ValueError, match="one-stage network built from"):
        rewriter.to_static(net, resnet20)
    with pytest.raises(TypeError, match="net must be a keras.Model"):
        rewriter.to_static("net", resnet20)
    # A layer the rewriter computes as two (SeparableConv2D: depthwise + pointwise).
    cnn = every_layer_cnn()
    net = s2d.transform(cnn, s2d.SearchSpace.from_model(cnn, num_stages=1).default_arch())
    with pytest.raises(ValueError, match="layer 'sep'"):
        rewriter.to_static(net, cnn)
