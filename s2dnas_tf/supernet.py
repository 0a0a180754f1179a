"""The weight-sharing supernet of a model's S2DNAS space: every architecture is a view of one
set of weights, so candidates can be scored without training each.

In `transform(model, arch)` stage s computes, in every channel-mixing layer, its own output
channels g_s from the input channels it may read (its own before its concat position, those
of stages 1..s from there on): the kernel entries `W[in, g_s]` of the original layer. Those
entries of the S stages never overlap, so all stages of any architecture together use a
subset of ONE kernel of the original's shape. The supernet is that kernel, held once: the
static model rebuilt (`graph.rebuild`, like every model this package derives) so that

- each channel-mixing layer (Conv2D, Dense, SeparableConv2D's pointwise part) computes with
  its kernel multiplied by an architecture's mask M[in, out] (1 where the stage that owns
  output channel `out` reads input channel `in`): the block lower-triangular weights;
- a `ChannelMask` after every layer past the image-only part zeroes the channels no stage
  computes (a bias or BatchNorm offset would fill them otherwise);
- the classifier is called once per stage, on the channels stages 1..s hold.

Stages own disjoint channels, so one full-width tensor holds every stage's slice at once, and a
channel-wise layer (BatchNorm, activations, pooling, depthwise convs, adds) computes all
stages in one call. In training mode BatchNorm's per-channel batch statistics are then exactly
those of the stage owning the channel, as in the transformed network's per-stage slices.

Switching architectures assigns the masks (non-trainable variables): no retracing, so a
compiled train or predict function serves every architecture. `set_arch(arch)` followed by
`model(x)` computes what `transform(supernet.to_static(), arch)(x)` does.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from s2dnas_tf import conventions
from s2dnas_tf import data as data_lib
from s2dnas_tf import fileio
from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rewriter
from s2dnas_tf import space as space_lib
from s2dnas_tf import training

__all__ = [
    "ArchSampler",
    "ChannelMask",
    "Supernet",
    "largest_arch",
    "load_supernet",
    "smallest_arch",
    "train_supernet",
]

# Pixels (images x height x width) per BatchNorm recalibration pass: 512 CIFAR images.
RECALIBRATION_PIXELS = 512 * 32 * 32


def _add_mask(layer: keras.layers.Layer, shape: tuple) -> keras.Variable:
    return layer.add_weight(
        shape=shape, initializer="ones", trainable=False, name="kernel_mask"
    )


def _load_kernel_and_bias(layer, store) -> None:
    """Conv2D's and Dense's own saving writes kernel and bias only (the mask is state of
    the current architecture, set again by `set_arch`); their loading would count the mask
    too and refuse, so the masked layers load the two themselves."""
    if not layer.built:
        return
    variables = [layer._kernel] + ([layer.bias] if layer.use_bias else [])
    if len(store) != len(variables):
        raise ValueError(
            f"Layer {layer.name!r} expected {len(variables)} saved variables (kernel, bias). "
            f"Received: {len(store)}"
        )
    for i, variable in enumerate(variables):
        variable.assign(store[str(i)])


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class MaskedConv2D(keras.layers.Conv2D):
    """Conv2D (groups == 1) computing with `kernel * kernel_mask[in, out]`."""

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel_mask = _add_mask(self, (int(input_shape[-1]), self.filters))

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, kernel * self.kernel_mask)

    def load_own_variables(self, store):
        _load_kernel_and_bias(self, store)


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class MaskedDense(keras.layers.Dense):
    """Dense computing with `kernel * kernel_mask[in, out]`."""

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel_mask = _add_mask(self, (int(input_shape[-1]), self.units))

    def call(self, inputs, training=None):
        x = keras.ops.matmul(inputs, self.kernel * self.kernel_mask)
        if self.bias is not None:
            x = keras.ops.add(x, self.bias)
        return self.activation(x) if self.activation is not None else x

    def load_own_variables(self, store):
        _load_kernel_and_bias(self, store)


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class MaskedSeparableConv2D(keras.layers.SeparableConv2D):
    """SeparableConv2D whose pointwise kernel is multiplied by `kernel_mask[in * m, out]`."""

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel_mask = _add_mask(
            self, (int(input_shape[-1]) * self.depth_multiplier, self.filters)
        )

    def call(self, inputs):
        outputs = keras.ops.separable_conv(
            inputs,
            self.depthwise_kernel,
            self.pointwise_kernel * self.kernel_mask,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            outputs = keras.ops.add(outputs, keras.ops.reshape(self.bias, (1, 1, 1, -1)))
        return self.activation(outputs) if self.activation is not None else outputs


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class ChannelMask(keras.layers.Layer):
    """Multiplies the last axis by a non-trainable 0/1 mask (the channels a stage holds)."""

    def build(self, input_shape):
        self.mask = self.add_weight(
            shape=(int(input_shape[-1]),), initializer="ones", trainable=False, name="mask"
        )

    def call(self, inputs):
        return inputs * keras.ops.cast(self.mask, inputs.dtype)


_MASKED = {
    keras.layers.Conv2D: MaskedConv2D,
    keras.layers.Dense: MaskedDense,
    keras.layers.SeparableConv2D: MaskedSeparableConv2D,
}


class Supernet:
    """One set of weights for every architecture of a `SearchSpace`.

    Attributes:
        space: The space.
        model: A `MultiStageNet`: images -> S logits of the architecture last given to
            `set_arch` (the largest one, every mask 1, before any).
        arch: That architecture (None before any `set_arch`).
    """

    def __init__(self, model: keras.Model, space: space_lib.SearchSpace):
        """Builds the supernet of `space`, initialised with `model`'s weights.

        Args:
            model: The static model the space was built from (not modified).
            space: `SearchSpace.from_model(model, num_stages=...)`.

        Raises:
            TypeError: If `space` is not a SearchSpace.
            ValueError: If a channel-mixing layer's class has no masked counterpart (only
                Conv2D, Dense and SeparableConv2D do) or the model is not the space's.
        """
        if not isinstance(space, space_lib.SearchSpace):
            raise TypeError(
                f"Expected a SearchSpace. Received: space of type {type(space).__name__}"
            )
        self.space = space
        self.arch = None
        self._static = model
        ana = space.analysis
        self._graph = ana.graph
        # The weights come from `model`: the space's model or one of the same architecture
        # (e.g. a saved, trained supernet), matched node by node.
        own = graph_lib.trace(model)
        if [(n.name, type(n.layer)) for n in own.nodes] != [
            (n.name, type(n.layer)) for n in self._graph.nodes
        ]:
            raise ValueError(
                "Expected the model the space was built from, or one of its architecture. "
                f"Received: {model.name!r}, whose layers differ from {self._graph.model_name!r}'s"
            )
        self._weights_from = {n.index: n.layer for n in own.nodes}
        self._copies: dict[int, keras.layers.Layer] = {}  # node index -> its layer here
        self._kernel_masks: dict[int, keras.Variable] = {}  # mixing node index -> mask
        self._tensor_masks: dict[int, ChannelMask] = {}  # tensor key -> its ChannelMask
        self._head_masks: list[ChannelMask] = []
        self._shared: set[int] = set(self._graph.inputs)
        self._tail = {n.index for n in ana.tail}
        (in_key,) = self._graph.inputs
        images = keras.Input(shape=self._graph.tensors[in_key].shape[1:], name="images")
        values = graph_lib.rebuild(self._graph, self._step, {in_key: images})
        heads = values[self._graph.outputs[0]]
        self.model = rewriter.MultiStageNet(
            images, heads, name=f"{self._graph.model_name}_supernet{space.num_stages}"
        )

    # --- building -------------------------------------------------------------------------

    def _copy(self, node, inputs, cls=None, **overrides) -> list:
        """`node` replayed with a copy of its layer (of class `cls`, config `overrides`),
        weights copied by name (a masked copy has its mask besides)."""
        layer = node.layer
        if not isinstance(layer, keras.layers.Layer):
            return graph_lib.replay(node, inputs)
        config = layer.get_config()
        config.update(overrides)
        config["name"] = conventions.layer_name(node.name)
        copy = (cls or type(layer)).from_config(config)
        outputs = graph_lib.replay(node, inputs, copy)
        by_name = {w.name: w for w in copy.weights}
        for weight in self._weights_from[node.index].weights:
            by_name[weight.name].assign(weight)
        if hasattr(copy, "finalize_state") and copy.weights:
            copy.finalize_state()  # Normalization derives mean/variance from its weights
        self._copies[node.index] = copy
        return outputs

    def _masked(self, node, key: int, tensor):
        suffix = "" if len(node.outputs) == 1 else f"_{node.outputs.index(key)}"
        mask = ChannelMask(name=f"{conventions.layer_name(node.name)}_mask{suffix}")
        self._tensor_masks[key] = mask
        return mask(tensor)

    def _step(self, node, inputs: list) -> list:
        ana = self.space.analysis
        rule = ana.rules.get(node.index)  # the tail after the classifier has none
        if node is ana.classifier:
            (features,) = inputs
            classifier = None
            heads = []
            for stage in range(1, self.space.num_stages + 1):
                mask = ChannelMask(name=conventions.stage_layer_name(stage, "head_mask"))
                self._head_masks.append(mask)
                seen = mask(features)
                if classifier is None:
                    (logits,) = self._copy(node, [seen], activation="linear")
                    classifier = self._copies[node.index]
                else:
                    logits = classifier(seen)
                heads.append(logits)
            return [heads]
        if node.index in self._tail:
            (heads,) = inputs
            if conventions.is_softmax_layer(node.layer):
                return [heads]  # stages output logits
            copy = graph_lib.clone_layer(node.layer, conventions.layer_name(node.name))
            self._copies[node.index] = copy
            return [[copy(head) for head in heads]]
        if all(k in self._shared for k in node.inputs) and rule.kind != "mixing":
            self._shared.update(node.outputs)
            return self._copy(node, inputs)
        if isinstance(node.layer, keras.layers.LayerNormalization):
            raise ValueError(
                f"The supernet computes every stage in one full-width tensor, which a "
                f"LayerNormalization over channels would mix across stages. Received: "
                f"{node.name!r}; score this model's candidates with --evaluator=finetune."
            )
        if rule.kind == "mixing":
            cls = _MASKED.get(type(node.layer))
            if cls is None:
                raise ValueError(
                    f"The supernet masks the kernels of {sorted(c.__name__ for c in _MASKED)}. "
                    f"Received: channel-mixing layer {node.name!r} of class "
                    f"{type(node.layer).__name__}; score this model's candidates with "
                    "--evaluator=finetune."
                )
            outputs = self._copy(node, inputs, cls)
            self._kernel_masks[node.index] = self._copies[node.index].kernel_mask
        else:
            outputs = self._copy(node, inputs)
        return [self._masked(node, key, y) for key, y in zip(node.outputs, outputs)]

    # --- architectures --------------------------------------------------------------------

    def set_arch(self, arch: space_lib.Arch) -> None:
        """Makes `model` compute `arch` (assigns the masks; nothing is rebuilt or retraced).

        Raises:
            ValueError: If `arch` is not of the space or cannot be built.
        """
        plan = rewriter.plan(self.space, arch)
        graph = self._graph
        for index, variable in self._kernel_masks.items():
            node = graph.nodes[index]
            (out_key,) = node.outputs
            mask = np.zeros(tuple(variable.shape), np.float32)
            multiplier = getattr(node.layer, "depth_multiplier", 1)
            for stage in range(1, arch.num_stages + 1):
                out_idx = plan.values[out_key][stage - 1]
                if out_idx is None:
                    continue
                rows = plan.visible_inputs(node, stage)
                if rows is None:
                    rows = np.arange(mask.shape[0] // multiplier)
                if multiplier > 1:  # SeparableConv2D: depthwise output c * m + k
                    rows = (rows[:, None] * multiplier + np.arange(multiplier)).reshape(-1)
                mask[np.ix_(rows, out_idx)] = 1.0
            variable.assign(mask)
        for key, layer in self._tensor_masks.items():
            mask = np.zeros(tuple(layer.mask.shape), np.float32)
            mask[plan.live_channels(key)] = 1.0
            layer.mask.assign(mask)
        classifier = self.space.analysis.classifier
        for stage, layer in enumerate(self._head_masks, start=1):
            rows = plan.visible_inputs(classifier, stage)
            mask = np.zeros(tuple(layer.mask.shape), np.float32)
            mask[slice(None) if rows is None else rows] = 1.0
            layer.mask.assign(mask)
        self.arch = arch

    def recalibrate_batchnorm(self, images: np.ndarray) -> None:
        """Sets every BatchNormalization's moving statistics to the batch statistics of
        `images` under the current architecture.

        The shared weights are trained for many architectures at once, so no single set of
        moving statistics fits them all (BigNAS, once-for-all); a few hundred images fix
        them for the architecture being scored. Forward passes in training mode (eager, so
        the changed momentum is read): one batch of all the images when they hold at most
        `RECALIBRATION_PIXELS` pixels (512 CIFAR images), else chunks of that many pixels
        whose statistics are averaged, weighted by their sizes (momentum seen / (seen + n)),
        so that 512 images of 224x224 do not need 49 times the activation memory.
        """
        images = np.asarray(images, np.float32)
        per_chunk = max(1, RECALIBRATION_PIXELS // max(1, images.shape[1] * images.shape[2]))
        layers = [
            layer for layer in self.model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        momenta = [layer.momentum for layer in layers]
        try:
            for seen in range(0, len(images), per_chunk):
                chunk = images[seen:seen + per_chunk]
                for layer in layers:
                    layer.momentum = seen / (seen + len(chunk))
                self.model(chunk, training=True)
        finally:
            for layer, momentum in zip(layers, momenta):
                layer.momentum = momentum

    def evaluate(
        self, arch: space_lib.Arch, bn_images: np.ndarray,
        images: np.ndarray | data_lib.Split, batch_size: int | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """Scores `arch` from the shared weights: its view, BatchNorm statistics from
        `bn_images` (training images), then every stage's softmax on `images` (an array
        or a `Split`, streamed if it is).

        Returns:
            (probabilities [S, N, K] float64, the arch's cumulative stage FLOPs).
        """
        self.set_arch(arch)
        self.recalibrate_batchnorm(bn_images)
        outputs = self.model.predict(
            data_lib.image_batches(images, batch_size), verbose=0)
        logits = np.stack([np.asarray(o, np.float64) for o in outputs])
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        return probs, rewriter.plan(self.space, arch).stage_flops()

    def to_static(self) -> keras.Model:
        """A copy of the static model holding the supernet's weights (BatchNorm statistics
        included): `transform(supernet.to_static(), arch)` is the architecture's network
        as a deployable model of its own.

        Returns:
            A new keras.Model with the static model's architecture and layer names.
        """
        model = self._static
        copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        copy.set_weights(model.get_weights())
        for node in graph_lib.trace(copy).nodes:
            source = self._copies.get(node.index)
            if source is None or not node.layer.weights:
                continue
            by_name = {w.name: w for w in source.weights}
            for weight in node.layer.weights:
                weight.assign(by_name[weight.name])
        return copy


def largest_arch(space: space_lib.SearchSpace) -> space_lib.Arch:
    """Every stage sees all channels, reuses from the first group and skips no block (the
    richest view)."""
    fractions = [space.grid - 1] * ((space.num_stages - 1) * space.num_groups)
    tokens = fractions + [0] * (space.num_stages - 1)
    return space.decode(tokens + [0] * (space.num_tokens - len(tokens)))


def smallest_arch(space: space_lib.SearchSpace) -> space_lib.Arch:
    """Each stage adds the least it can, reuses only in the last group and skips every
    identity block it may."""
    fractions = [0] * ((space.num_stages - 1) * space.num_groups)
    tokens = fractions + [space.num_groups - 1] * (space.num_stages - 1)
    if space.block_skipping:
        tokens += list(space.skippable) * (space.num_stages - 1)
    return space.decode(tokens)


class ArchSampler(keras.callbacks.Callback):
    """Trains the supernet on a new architecture every step: the sandwich rule (BigNAS,
    slimmable networks) over consecutive steps: the largest, the smallest, then
    `num_random` sampled ones, in turn. The largest view is set for validation.

    The architecture of step k of epoch e depends only on (seed, e, k), so a resumed
    training samples what the killed one would have.
    """

    def __init__(self, supernet, seed: int = 0, num_random: int = 2):
        """Args:
            supernet: The `Supernet`, or a callable returning it once it exists (it is
                built inside `training.train`'s strategy scope).
            seed: Seeds the random architectures.
            num_random: Random architectures after each largest + smallest pair.
        """
        super().__init__()
        self._supernet = supernet
        self.seed = seed
        self.num_random = num_random
        self._epoch = 0

    @property
    def supernet(self) -> Supernet:
        if not isinstance(self._supernet, Supernet):
            self._supernet = self._supernet()
        return self._supernet

    def arch_for(self, epoch: int, step: int) -> space_lib.Arch:
        """The architecture of step `step` of epoch `epoch`."""
        turn = step % (2 + self.num_random)
        if turn == 0:
            return largest_arch(self.supernet.space)
        if turn == 1:
            return smallest_arch(self.supernet.space)
        seed = int(np.random.default_rng([self.seed, epoch, step]).integers(2**31))
        return self.supernet.space.sample(seed)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.supernet.set_arch(self.arch_for(self._epoch, batch))

    def on_test_begin(self, logs=None):
        self.supernet.set_arch(largest_arch(self.supernet.space))


# The trained supernet as a static model: the shared weights in the original architecture
# (a plain Keras model anyone can load, and what `load_supernet` builds the supernet from).
WEIGHTS_FILE = "supernet.keras"


def train_supernet(
    model: keras.Model,
    space: space_lib.SearchSpace,
    splits,
    config: training.TrainConfig,
    teacher_fn=None,
    num_random: int = 2,
) -> Supernet:
    """Trains the supernet of `space` from `model`'s weights (resumable, under the config's
    tf.distribute strategy), architectures sampled per step by `ArchSampler`; distilled from
    `teacher_fn()` (the static model) when `config.distill_weight > 0`.

    With `config.output_dir` set, a finished training leaves `WEIGHTS_FILE` there (the shared
    weights as a static model, `to_static()`) and a call that finds it loads it instead of
    training again (`load_supernet`).

    Args:
        model: The static model (not modified).
        space: Its `SearchSpace`.
        splits: The data (`s2dnas_tf.data.Splits`).
        config: A `training.TrainConfig`.
        teacher_fn: Builds the distillation teacher.
        num_random: Random architectures per largest + smallest pair.

    Returns:
        The trained `Supernet` (its model set to the largest architecture).
    """
    path = None if config.output_dir is None else os.path.join(config.output_dir, WEIGHTS_FILE)
    if path is not None and os.path.exists(path):
        return load_supernet(model, space, path)
    built = {}

    def model_fn():
        built["supernet"] = Supernet(model, space)
        return built["supernet"].model

    sampler = ArchSampler(lambda: built["supernet"], seed=config.seed, num_random=num_random)
    training.train(model_fn, splits, config, teacher_fn=teacher_fn, callbacks=[sampler])
    supernet = built["supernet"]
    supernet.set_arch(largest_arch(space))
    if path is not None:
        with fileio.atomic_path(path, suffix=".keras") as tmp:
            supernet.to_static().save(tmp)
    return supernet


def load_supernet(
    model: keras.Model, space: space_lib.SearchSpace, path: str
) -> Supernet:
    """The supernet of `space` (built from `model`) with the weights `train_supernet` saved
    at `path` (a static model of `model`'s architecture)."""
    del model  # the saved static model has its architecture and the trained weights
    supernet = Supernet(keras.saving.load_model(path), space)
    supernet.set_arch(largest_arch(space))
    return supernet
