"""One helper per test kind (keras-hub style): model invariants of docs/design.md §2."""

from __future__ import annotations

import keras
import numpy as np

import s2dnas_tf as s2d
from s2dnas_tf import conventions


def randomize_normalization_stats(model: keras.Model, seed: int = 0) -> keras.Model:
    """Gives BatchNorm layers non-trivial statistics, so a wrongly sliced BN shows."""
    rng = np.random.default_rng(seed)
    for layer in conventions.leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            values = []
            for w in layer.weights:
                shape = tuple(w.shape)
                if "variance" in w.path:
                    values.append(rng.uniform(0.5, 2.0, shape))
                elif "gamma" in w.path:
                    values.append(rng.uniform(0.5, 1.5, shape))
                else:
                    values.append(rng.normal(0.0, 0.2, shape))
            layer.set_weights(values)
    return model



def images(model: keras.Model, n: int = 2, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    shape = (n,) + tuple(model.inputs[0].shape[1:])
    return (np.random.default_rng(seed).random(shape) * scale).astype("float32")


def comparable_scores(model: keras.Model, stage_logits, x: np.ndarray):
    """(stage scores, original scores) on one scale: logits, or log-probabilities when the
    original ends in a softmax (which transform drops)."""
    y = np.asarray(model(x, training=False))
    z = np.asarray(stage_logits)
    if conventions.ends_in_softmax(model):
        return np.asarray(keras.ops.log_softmax(z)), np.log(np.clip(y, 1e-30, None))
    return z, y


def weights_snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def run_transform_invariants_test(model: keras.Model, num_stages: int = 3, seed: int = 0):
    """Checks docs/design.md §2's invariants on `model` and returns (space, net) for more checks.

    - S = 1 reproduces the original logits (max abs diff <= 1e-4 x the logits' scale);
    - with S = `num_stages`, the default arch and a sampled arch build, every stage returns
      [N, K] logits, cumulative FLOPs strictly rise and the last stage costs no more than the
      original plus the extra heads;
    - stage s's logits do not change when every weight of stages > s is changed;
    - the original model is not mutated.
    """
    x = images(model, scale=1.0)
    before = weights_snapshot(model)
    reference = np.asarray(model(x, training=False))
    num_classes = reference.shape[-1]

    space1 = s2d.SearchSpace.from_model(model, num_stages=1)
    out1 = s2d.transform(model, space1.default_arch())(x)
    assert isinstance(out1, list) and len(out1) == 1
    actual, expected = comparable_scores(model, out1[0], x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, atol=1e-4 * scale, rtol=0)

    space = s2d.SearchSpace.from_model(model, num_stages=num_stages)
    static_flops = s2d.count_flops(model)
    classifier = space.analysis.classifier.layer
    head_in = int(classifier.kernel.shape[-2])
    for arch in (space.default_arch(), space.sample(seed)):
        net = s2d.transform(model, arch)
        outs = net(x)
        assert len(outs) == num_stages
        for o in outs:
            assert tuple(o.shape) == (x.shape[0], num_classes)
            assert np.all(np.isfinite(np.asarray(o)))
        flops = s2d.stage_flops(net)
        assert len(flops) == num_stages
        assert all(b > a for a, b in zip(flops, flops[1:])), flops
        extra_heads = (num_stages - 1) * head_in * num_classes
        assert flops[-1] <= static_flops + extra_heads, (flops, static_flops)
        check_stage_independence(net, x)

    # The original is untouched: same weights, same outputs.
    after = weights_snapshot(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), reference)
    return space, net


def check_stage_independence(net: keras.Model, x: np.ndarray) -> None:
    """Stage s's logits are unchanged when all layers of stages > s get new weights, and
    (so the check can fail) stage s+1's logits do change."""
    num_stages = len(net.outputs)
    base = [np.asarray(o) for o in net(x)]
    saved = {layer.name: layer.get_weights() for layer in net.layers}
    rng = np.random.default_rng(1)
    for s in range(1, num_stages):
        for layer in net.layers:
            stage = conventions.stage_of_layer(layer.name)
            if stage is not None and stage > s and layer.weights:
                layer.set_weights(
                    [w + rng.normal(0, 0.5, w.shape).astype(w.dtype) for w in layer.get_weights()]
                )
        outs = [np.asarray(o) for o in net(x)]
        for k in range(s):
            np.testing.assert_array_equal(outs[k], base[k], err_msg=f"stage {k + 1} moved")
        assert not np.allclose(outs[s], base[s]), f"stage {s + 1} did not depend on its weights"
        for layer in net.layers:
            layer.set_weights(saved[layer.name])
        # Structure: the sub-graph of output s holds no layer of a later stage.
        sub = keras.Model(net.inputs, net.outputs[s - 1])
        stages = {conventions.stage_of_layer(l.name) for l in sub.layers} - {None}
        assert max(stages) == s, stages


def save_tiny_digits_base(path) -> keras.Model:
    """An untrained half-width ResNet-8 for the built-in digits, with its input normalisation,
    saved at `path` (the base model of the scripts' tiny end-to-end runs)."""
    from s2dnas_tf import data
    from s2dnas_tf.models import build_model, with_input_normalization

    splits = data.load_dataset(data.DataConfig(name="digits"))
    mean, variance = splits.channel_stats()
    base = with_input_normalization(
        build_model("resnet8", input_shape=splits.image_shape, width_multiplier=0.5),
        mean, variance,
    )
    base.save(path)
    return base
