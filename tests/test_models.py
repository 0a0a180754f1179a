"""Tests of the reference model zoo (`s2dnas_tf.models`).

Models are built once per (name, num_classes) and shared (`_built`); nothing is
trained, and forward passes use a batch of 2, so the file runs in seconds on CPU.
"""

from __future__ import annotations

import functools
import math
import re

import keras
import numpy as np
import pytest

from s2dnas_tf.models import InputPreprocessing, build_model, list_models, register_model
from s2dnas_tf.models import registry
from s2dnas_tf.models.mobilenetv2_cifar import make_divisible
from s2dnas_tf.models.resnet_cifar import resnet_cifar

ALL_MODELS = list_models()
RESNET_BLOCKS_PER_STAGE = {"resnet8": 1, "resnet20": 3, "resnet32": 5, "resnet56": 9, "resnet110": 18}
# The layer types the graph rewriter knows; a model using anything else breaks it.
ALLOWED_LAYER_TYPES = (
    keras.layers.InputLayer,
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
    keras.layers.BatchNormalization,
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.Add,
    keras.layers.MaxPooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.Flatten,
    keras.layers.Dropout,
)


def _built(name: str, num_classes: int = 10, **kwargs) -> keras.Model:
    """Builds a model once per argument set; tests only read it, never train it."""
    return _build_cached(name, num_classes, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _build_cached(name: str, num_classes: int, kwargs: tuple) -> keras.Model:
    # Keyed on normalised arguments: _built("x") and _built("x", 10) share a model.
    return build_model(name, num_classes=num_classes, **dict(kwargs))


def _trainable_params(model: keras.Model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def _layers_of(model: keras.Model, layer_type: type) -> list[keras.layers.Layer]:
    # DepthwiseConv2D is not a Conv2D subclass in Keras 3, but check exact types
    # anyway so a future subclass cannot inflate the counts.
    return [layer for layer in model.layers if type(layer) is layer_type]


def _random_images(batch_size: int = 2, shape=(32, 32, 3)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (batch_size, *shape)).astype("float32")


# --- Every model -------------------------------------------------------------------


def test_registry_holds_the_reference_zoo():
    assert ALL_MODELS == [
        "mobilenetv2_cifar",
        "resnet110",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet8",
        "vgg16_bn",
    ]


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_builds_and_outputs_logits(name, num_classes):
    model = _built(name, num_classes)
    assert isinstance(model, keras.Model)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, num_classes)
    logits = np.asarray(model(_random_images(), training=False))
    assert logits.shape == (2, num_classes)
    assert np.all(np.isfinite(logits))
    # Logits, not probabilities: the head is a linear Dense layer.
    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense) and head.name == "logits"
    assert head.get_config()["activation"] == "linear"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_uses_only_supported_layers_with_readable_names(name):
    model = _built(name)
    unsupported = [
        (layer.name, type(layer).__name__)
        for layer in model.layers
        if not isinstance(layer, ALLOWED_LAYER_TYPES)
    ]
    assert unsupported == []
    # No Keras auto-generated names such as "conv2d_3" or "batch_normalization".
    auto_named = re.compile(
        r"^(input_layer|conv2d|depthwise_conv2d|dense|batch_normalization|re_lu|"
        r"activation|add|max_pooling2d|global_average_pooling2d|flatten|dropout)"
        r"(_\d+)?$"
    )
    assert [layer.name for layer in model.layers if auto_named.match(layer.name)] == []
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenetv2_cifar"])
def test_config_round_trip_reproduces_logits(name):
    # The graph rewriter and the exporters rebuild models from their configs.
    model = _built(name)
    rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    images = _random_images()
    np.testing.assert_allclose(
        np.asarray(rebuilt(images, training=False)),
        np.asarray(model(images, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


# --- ResNet --------------------------------------------------------------------------


def test_resnet20_exact_trainable_parameters():
    # By hand, 10 classes, option-B shortcuts, bias-free convs; each BN has 2C trainable
    # (gamma, beta) and 2C non-trainable (moving mean, variance) weights:
    #   stem:    3*3*3*16 = 432                          + BN 32               =     464
    #   stage 1: 3 blocks * (2 * 3*3*16*16 = 4,608       + 2 BN * 32)          =  14,016
    #   stage 2: block 1: 3*3*16*32 + 3*3*32*32 = 13,824 + 2 BN * 64
    #                     + projection 1*1*16*32 = 512   + BN 64               =  14,528
    #            blocks 2-3: 2 * (2 * 3*3*32*32 = 18,432 + 2 BN * 64)          =  37,120
    #   stage 3: block 1: 3*3*32*64 + 3*3*64*64 = 55,296 + 2 BN * 128
    #                     + projection 1*1*32*64 = 2,048 + BN 128              =  57,728
    #            blocks 2-3: 2 * (2 * 3*3*64*64 = 73,728 + 2 BN * 128)         = 147,968
    #   logits:  64*10 + 10                                                    =     650
    #   total                                                                  = 272,474
    # The paper's option A (parameter-free shortcuts) gives 272,474 - 512 - 64 - 2,048
    # - 128 = 269,722, the "0.27M" of its Table 6; option B stays at 0.27M.
    # Non-trainable: 2 * (16 + 6*16 + 32*3 + 4*32 + 64*3 + 4*64) = 2 * 784 = 1,568.
    model = _built("resnet20")
    assert _trainable_params(model) == 272_474
    assert model.count_params() == 272_474 + 1_568


@pytest.mark.parametrize("name", sorted(RESNET_BLOCKS_PER_STAGE))
def test_resnet_trainable_parameters_follow_depth(name):
    # Summing the per-block counts above for n blocks per stage (10 classes):
    # 464 + 4,672n + (14,528 + 18,560(n-1)) + (57,728 + 73,984(n-1)) + 650
    # = 97,216n - 19,174.
    n = RESNET_BLOCKS_PER_STAGE[name]
    assert _trainable_params(_built(name)) == 97_216 * n - 19_174


def test_resnet56_parameters_match_the_paper():
    # Table 6 of the paper: ResNet-56 has 0.85M parameters (853,018 with option A).
    trainable = _trainable_params(_built("resnet56"))
    assert trainable == 855_770
    assert trainable == pytest.approx(0.85e6, rel=0.01)


@pytest.mark.parametrize("name", sorted(RESNET_BLOCKS_PER_STAGE))
def test_resnet_layer_structure(name):
    # Depth 6n + 2 counts the weighted layers on the main path: the stem conv, 2 convs
    # in each of the 3n blocks, and the classifier = (1 + 6n) 3x3 convs + 1 Dense.
    # Option B adds 2 projection 1x1 convs off the main path (ResNet-20: 19 3x3 convs
    # + 2 1x1 convs = 21 Conv2D, 21 BatchNorm, 9 Add, 19 ReLU, 1 Dense).
    n = RESNET_BLOCKS_PER_STAGE[name]
    model = _built(name)
    convs = _layers_of(model, keras.layers.Conv2D)
    convs_3x3 = [c for c in convs if tuple(c.kernel_size) == (3, 3)]
    convs_1x1 = [c for c in convs if tuple(c.kernel_size) == (1, 1)]
    dense = _layers_of(model, keras.layers.Dense)
    assert len(convs_3x3) == 6 * n + 1
    assert len(convs_1x1) == 2
    assert len(convs) == 6 * n + 3
    assert len(convs_3x3) + len(dense) == 6 * n + 2 == int(name.removeprefix("resnet"))
    assert [c.name for c in convs_1x1] == [
        "stage2_block1_shortcut_conv",
        "stage3_block1_shortcut_conv",
    ]
    assert all(tuple(c.strides) == (2, 2) for c in convs_1x1)
    assert all(not c.use_bias for c in convs)
    assert len(_layers_of(model, keras.layers.BatchNormalization)) == 6 * n + 3
    assert len(_layers_of(model, keras.layers.Add)) == 3 * n
    assert len(_layers_of(model, keras.layers.ReLU)) == 6 * n + 1
    # Feature maps: 32x32x16, 16x16x32, 8x8x64.
    assert model.get_layer(f"stage1_block{n}_relu2").output.shape == (None, 32, 32, 16)
    assert model.get_layer(f"stage2_block{n}_relu2").output.shape == (None, 16, 16, 32)
    assert model.get_layer(f"stage3_block{n}_relu2").output.shape == (None, 8, 8, 64)


def test_resnet20_layer_names():
    model = _built("resnet20")
    names = {layer.name for layer in model.layers}
    for expected in [
        "stem_conv",
        "stem_bn",
        "stem_relu",
        "stage2_block1_conv1",
        "stage2_block1_bn1",
        "stage2_block1_relu1",
        "stage2_block1_conv2",
        "stage2_block1_bn2",
        "stage2_block1_shortcut_bn",
        "stage2_block1_add",
        "stage2_block1_relu2",
        "avg_pool",
        "logits",
    ]:
        assert expected in names


@pytest.mark.parametrize(
    "depth", [0, 6, 7, 19, 21, 20.0, True, "20"], ids=lambda d: repr(d)
)
def test_resnet_rejects_depth_not_6n_plus_2(depth):
    with pytest.raises(ValueError, match=re.escape(f"Received: depth={depth!r}")):
        resnet_cifar(depth)


def test_weight_decay_regularizes_kernels():
    # ResNet-20: 21 conv kernels + 1 dense kernel.
    assert len(_built("resnet20").losses) == 22
    assert _built("resnet20", weight_decay=0.0).losses == []
    # MobileNetV2: 35 (stem, 16 expand, 17 project, head) conv kernels + 1 dense
    # kernel; the 17 depthwise kernels are not regularised.
    assert len(_built("mobilenetv2_cifar").losses) == 36
    regularizer = _built("resnet20").get_layer("stem_conv").kernel_regularizer
    assert regularizer.get_config() == {"l2": pytest.approx(1e-4)}


# --- VGG-16-BN -----------------------------------------------------------------------


def test_vgg16_bn_structure_and_parameters():
    # Convs (bias-free): 3*3*(3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256
    #   + 256*512 + 5*512*512) = 14,710,464; 14 BNs (13 convs + fc1):
    #   2 * (2*64 + 2*128 + 3*256 + 6*512 + 512) = 9,472; fc1 (bias-free) 512*512 =
    #   262,144; logits 512*10 + 10 = 5,130. Total 14,987,210.
    model = _built("vgg16_bn")
    assert _trainable_params(model) == 14_987_210
    convs = _layers_of(model, keras.layers.Conv2D)
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert all(tuple(c.kernel_size) == (3, 3) for c in convs)
    assert len(_layers_of(model, keras.layers.MaxPooling2D)) == 5
    assert len(_layers_of(model, keras.layers.BatchNormalization)) == 14
    assert [d.name for d in _layers_of(model, keras.layers.Dense)] == ["fc1", "logits"]
    assert model.get_layer("features_flatten").output.shape == (None, 512)
    assert model.get_layer("fc1_dropout").rate == 0.5


def test_vgg16_bn_dropout_is_optional():
    model = _built("vgg16_bn", dropout_rate=0.0)
    assert _layers_of(model, keras.layers.Dropout) == []
    assert _trainable_params(model) == 14_987_210


def test_vgg16_bn_rejects_inputs_smaller_than_32():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(16, 16, 3\)"):
        build_model("vgg16_bn", input_shape=(16, 16, 3))


# --- MobileNetV2 ---------------------------------------------------------------------


def test_mobilenetv2_cifar_structure_and_parameters():
    # 2,236,682 trainable = the keras.applications MobileNetV2 (alpha 1) backbone's
    # 2,223,872 (strides do not change weight shapes) + a 1280*10 + 10 dense head.
    model = _built("mobilenetv2_cifar")
    assert _trainable_params(model) == 2_236_682
    # Stem and the 24-channel stage at stride 1: 32x32 -> 4x4 before the head.
    assert model.get_layer("stem_conv").output.shape == (None, 32, 32, 32)
    assert model.get_layer("stage2_block2_add").output.shape == (None, 32, 32, 24)
    assert model.get_layer("head_conv").input.shape == (None, 4, 4, 320)
    assert model.get_layer("head_conv").filters == 1280
    assert len(_layers_of(model, keras.layers.DepthwiseConv2D)) == 17
    # Adds where stride 1 and channels unchanged, per stage: 0+1+2+3+2+2+0.
    assert len(_layers_of(model, keras.layers.Add)) == 10
    # Stage 1 has expansion 1, so no expand conv.
    assert "stage1_block1_expand_conv" not in {layer.name for layer in model.layers}
    relus = _layers_of(model, keras.layers.ReLU)
    assert relus and all(r.max_value == 6.0 for r in relus)
    assert model.get_layer("head_dropout").rate == 0.2


@pytest.mark.parametrize(
    "value, expected",
    [(32, 32), (16, 16), (12, 16), (8.4, 8), (5.6, 8), (48, 48), (960, 960), (20, 24)],
)
def test_make_divisible(value, expected):
    result = make_divisible(value)
    assert result == expected
    assert result % 8 == 0 and result >= 0.9 * value


# --- Width multiplier ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn"])
def test_width_multiplier_half_halves_channels(name):
    full = _built(name)
    half = _built(name, width_multiplier=0.5)
    assert [layer.name for layer in half.layers] == [
        layer.name for layer in full.layers
    ]
    for full_layer, half_layer in zip(full.layers, half.layers):
        if isinstance(full_layer, keras.layers.Conv2D):
            assert half_layer.filters * 2 == full_layer.filters, full_layer.name
        elif isinstance(full_layer, keras.layers.Dense) and full_layer.name != "logits":
            assert half_layer.units * 2 == full_layer.units, full_layer.name
    assert half.output_shape == full.output_shape


def test_half_width_resnet20_parameters():
    # Channels 8/16/32, counted as in test_resnet20_exact_trainable_parameters:
    #   stem:    3*3*3*8 + BN 16                                         =    232
    #   stage 1: 3 * (2 * 3*3*8*8 + 2 BN * 16)                           =  3,552
    #   stage 2: 3*3*8*16 + 3*3*16*16 + 1*1*8*16 + 3 BN * 32 = 3,680
    #            + 2 * (2 * 3*3*16*16 + 2 BN * 32) = 9,344               = 13,024
    #   stage 3: 3*3*16*32 + 3*3*32*32 + 1*1*16*32 + 3 BN * 64 = 14,528
    #            + 2 * (2 * 3*3*32*32 + 2 BN * 64) = 37,120              = 51,648
    #   logits:  32*10 + 10                                              =    330
    #   total                                                            = 68,786
    model = _built("resnet20", width_multiplier=0.5)
    assert _trainable_params(model) == 68_786


def test_mobilenetv2_width_multiplier_uses_make_divisible():
    model = _built("mobilenetv2_cifar", width_multiplier=0.5)
    assert model.get_layer("stem_conv").filters == 16
    assert model.get_layer("stage1_block1_project_conv").filters == 8
    assert model.get_layer("stage2_block1_project_conv").filters == 16  # 12 -> 16
    assert model.get_layer("stage7_block1_project_conv").filters == 160
    # The paper keeps the 1280-channel head for multipliers below 1.
    assert model.get_layer("head_conv").filters == 1280
    wide = _built("mobilenetv2_cifar", width_multiplier=1.5)
    assert wide.get_layer("head_conv").filters == 1920


# --- Registry and argument checks ----------------------------------------------------


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'resnet20' is already registered"):
        register_model("resnet20")
    assert list_models() == ALL_MODELS


def test_register_model_adds_a_buildable_name(monkeypatch):
    # A private copy of the registry, so the zoo seen by other tests is untouched.
    monkeypatch.setattr(registry, "_MODEL_REGISTRY", dict(registry._MODEL_REGISTRY))

    @register_model("tiny_test_model")
    def tiny(num_classes, input_shape):
        inputs = keras.Input(shape=input_shape, name="images")
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(inputs)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))

    assert "tiny_test_model" in list_models()
    assert build_model("tiny_test_model", num_classes=3).output_shape == (None, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_test_model")(tiny)


@pytest.mark.parametrize("name", ["", None, 20])
def test_register_model_rejects_bad_names(name):
    with pytest.raises(ValueError, match=re.escape(f"Received: name={name!r}")):
        register_model(name)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        build_model("resnet21")
    assert str(error.value) == (
        f"Unknown model name 'resnet21'. Available: {ALL_MODELS}. "
        "Received: name='resnet21'"
    )


def test_list_models_returns_a_copy():
    names = list_models()
    names.append("not_a_model")
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("num_classes", [0, -1, 2.0, True, "10", None])
def test_rejects_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match=re.escape(f"num_classes={num_classes!r}")):
        build_model("resnet20", num_classes=num_classes)


@pytest.mark.parametrize(
    "input_shape",
    [(32, 32), (32, 32, 3, 1), (32, 0, 3), (32, -1, 3), (32.0, 32, 3), "abc", 32],
)
def test_rejects_bad_input_shape(input_shape):
    with pytest.raises(ValueError, match=re.escape(f"input_shape={input_shape!r}")):
        build_model("resnet20", input_shape=input_shape)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_multiplier": 0},
        {"width_multiplier": -0.5},
        {"width_multiplier": float("nan")},
        {"weight_decay": -1e-4},
        {"dropout_rate": 1.0},
        {"dropout_rate": -0.1},
    ],
    ids=lambda kwargs: repr(kwargs),
)
@pytest.mark.parametrize("name", ["vgg16_bn", "mobilenetv2_cifar"])
def test_rejects_bad_hyperparameters(name, kwargs):
    ((arg, value),) = kwargs.items()
    with pytest.raises(ValueError, match=re.escape(f"Received: {arg}={value!r}")):
        build_model(name, **kwargs)


def test_rejects_unknown_keyword_arguments():
    with pytest.raises(TypeError):
        build_model("resnet20", dropout_rate=0.5)


def test_builds_for_other_input_shapes():
    model = _built("resnet20", input_shape=(8, 8, 1))
    assert model.input_shape == (None, 8, 8, 1)
    assert np.asarray(model(_random_images(shape=(8, 8, 1)))).shape == (2, 10)


def test_with_input_normalization_takes_raw_pixels():
    from s2dnas_tf.models import with_input_normalization

    core = build_model("resnet8")
    mean, variance = [120.0, 110.0, 100.0], [3600.0, 3500.0, 3400.0]
    model = with_input_normalization(core, mean, variance)
    raw = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    normalised = (raw - np.array(mean)) / np.sqrt(np.array(variance))
    np.testing.assert_allclose(
        np.asarray(model(raw)), np.asarray(core(normalised.astype("float32"))), atol=1e-4
    )
    with pytest.raises(ValueError, match="need 3 values"):
        with_input_normalization(core, [1.0], [1.0])


# ------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_input_preprocessing_is_keras_applications_preprocess_input(mode):
    from keras.applications import imagenet_utils

    from s2dnas_tf.models import with_preprocessing

    raw = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(InputPreprocessing(mode)(raw)),
        imagenet_utils.preprocess_input(raw.copy(), mode=mode), rtol=1e-5, atol=1e-4)
    inputs = keras.Input((8, 8, 3))
    core = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    np.testing.assert_allclose(
        np.asarray(with_preprocessing(core, mode)(raw)),
        np.asarray(core(imagenet_utils.preprocess_input(raw.copy(), mode=mode))),
        rtol=1e-4, atol=1e-4)


def test_preprocessed_model_saves_and_transforms_with_the_layer_shared(tmp_path):
    """A model with the caffe preprocessing (the one that reorders channels) in front saves,
    loads, and transforms into stages that compute the layer once, shared."""
    import s2dnas_tf as s2d
    from s2dnas_tf.models import with_preprocessing

    from tests import helpers

    core = build_model("resnet20", num_classes=10, input_shape=(8, 8, 3), width_multiplier=0.25)
    model = with_preprocessing(core, "caffe")
    assert model.name == core.name
    raw = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(raw)), np.asarray(model(raw)), atol=1e-5)
    helpers.run_transform_invariants_test(loaded, num_stages=2)
    net = s2d.transform(loaded, s2d.SearchSpace.from_model(loaded, num_stages=2).default_arch())
    assert [l.name for l in net.layers if isinstance(l, InputPreprocessing)] == [
        "shared_preprocess_caffe"]
    with pytest.raises(ValueError, match="preprocess twice"):
        with_preprocessing(model, "tf")


def test_preprocessing_refuses_bad_modes_and_grey_images_for_rgb_modes():
    from s2dnas_tf.models import with_preprocessing

    core = build_model("resnet20", num_classes=10, input_shape=(8, 8, 1), width_multiplier=0.25)
    assert with_preprocessing(core, "none") is core
    with pytest.raises(ValueError, match=r"\['none', 'tf', 'torch', 'caffe'\]"):
        with_preprocessing(core, "inception")
    with pytest.raises(ValueError, match="RGB images"):
        with_preprocessing(core, "caffe")
