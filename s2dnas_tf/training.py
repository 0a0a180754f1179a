"""Training of static and multi-stage networks under a tf.distribute strategy (docs/design.md §6).

- `make_strategy(name)`: "default", "mirrored" (all local devices) or "multi_worker"
  (MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG).
- `train(model_fn, splits, config)`: builds the model inside `strategy.scope()` and fits it.
  A multi-stage net (a list of S logits) is trained with sum_s w_s * CE(stage s), plus an
  optional distillation term from the original model: T^2 * KL(softmax(teacher/T) ||
  softmax(stage/T)) per stage.
- Keras callbacks carry the progress bar, TensorBoard logs, a per-epoch checkpoint of the last
  *good* epoch and `BackupAndRestore`: a training killed mid-epoch and started again with the
  same `output_dir` resumes from the last finished epoch.
- A diverging run (a NaN/inf loss) stops at once and raises `TrainingDivergedError`; the last
  good checkpoint stays in place.

Files in `config.output_dir`: `checkpoint.keras` (last good epoch), `backup/` (resume state,
removed when training finishes), `logs/` (TensorBoard), `history.csv`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from s2dnas_tf import conventions
from s2dnas_tf import data as data_lib
from s2dnas_tf import fileio

STRATEGIES = ("default", "mirrored", "multi_worker")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


@dataclasses.dataclass
class TrainConfig:
    """How to train.

    Attributes:
        output_dir: Checkpoints, resume state and logs go here. May stay None for an
            `ephemeral` run, and in a config handed to a run of `s2dnas_tf.runs`, which
            sets it to its own layout.
        epochs: Passes over the training split.
        batch_size: Global batch size (split over replicas).
        learning_rate: Peak SGD learning rate (cosine decay to 0 over all steps).
        momentum: SGD momentum (Nesterov).
        augment: CIFAR augmentation (pad 4 + random crop, flip) on the training split.
        strategy: One of STRATEGIES.
        stage_weights: w_s of each stage's cross-entropy (None: all 1).
        distill_weight: Weight of the distillation term (0: off).
        distill_temperature: T of the distillation term.
        steps_per_epoch: Cap on steps per epoch (None: the whole split), for quick runs.
        seed: Seeds shuffling, augmentation and weight init.
        verbose: Keras progress-bar verbosity (0, 1, 2).
        bn_momentum: If set, the momentum of every BatchNormalization's moving statistics
            during this training. A freshly split network's statistics no longer match its
            (fewer) channels; a short fine-tune (a search candidate) needs them to catch up
            within a few dozen steps (0.9: 1 - 0.9^60 > 99.8% renewed in 60 steps), where
            the usual 0.99 keeps them stale and the validation accuracy meaningless.
        ephemeral: A short run whose model is used once and thrown away (a search
            candidate): no validation pass inside `fit` (the caller evaluates the net
            itself), no TensorBoard logs, no per-epoch checkpoint and no resume state, so
            nothing is written to `output_dir` and a killed run starts over. Tracing and
            running those extras costs a candidate of 60 steps about as much as a third of
            its training.
    """

    output_dir: str | None = None
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    augment: bool = True
    strategy: str = "default"
    stage_weights: Sequence[float] | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    steps_per_epoch: int | None = None
    seed: int = 0
    verbose: int = 2
    bn_momentum: float | None = None
    ephemeral: bool = False

    def validate(self) -> None:
        if self.output_dir is None and not self.ephemeral:
            raise ValueError(
                "output_dir is needed (for the checkpoints and resume state) unless ephemeral "
                f"is set. Received: output_dir={self.output_dir!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1. Received: {name}={value!r}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise ValueError(
                "distill_weight must be >= 0 and distill_temperature > 0. Received: "
                f"distill_weight={self.distill_weight!r}, "
                f"distill_temperature={self.distill_temperature!r}"
            )
        if self.bn_momentum is not None and not 0 <= self.bn_momentum < 1:
            raise ValueError(
                f"bn_momentum must be in [0, 1) or None. Received: {self.bn_momentum!r}"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1 or None. Received: {self.steps_per_epoch!r}"
            )


_MULTI_WORKER = None


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for a flag value.

    Args:
        name: "default" (no distribution), "mirrored" (all local devices, e.g. GPUs or
            logical CPUs) or "multi_worker" (workers listed in the TF_CONFIG variable).

    Raises:
        ValueError: For another name, or "multi_worker" without TF_CONFIG.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' needs the TF_CONFIG environment variable describing "
                "the cluster (see tf.distribute.MultiWorkerMirroredStrategy)."
            )
        # TensorFlow configures the collectives once, before its first op: one strategy per
        # process, made before anything else runs (`runs` makes it before loading data).
        global _MULTI_WORKER
        if _MULTI_WORKER is None:
            _patch_keras_for_multi_worker()
            _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER
    raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")


def _patch_keras_for_multi_worker() -> None:
    """Works around keras-team/keras#20585 (open): Keras 3's `fit` fails under
    MultiWorkerMirroredStrategy in two places, both in its TensorFlow trainer:

    1. `_maybe_symbolic_build` averages the first input batch across workers with an eager
       collective that cannot take PerReplica values ("Attempt to convert a value
       (PerReplica...)"), only to learn the input shapes. This worker's local batch has the
       same shapes, so the patched build uses it.
    2. `reduce_per_replica(..., "mean")` reduces the (scalar) logged metrics across workers
       with `axis=0`, which scalars do not have. The patched version reduces scalars with
       `axis=None`.

    Private Keras API, touched here only; applied once, and only when a multi-worker strategy
    is made. Remove when the Keras issue is fixed (the multi-worker test will tell).
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_s2dnas_multi_worker_patch", False):
        return
    cls = tf_trainer.TensorFlowTrainer
    original_build = cls._maybe_symbolic_build

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues)
                else x,
                next(it),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):

            def mean(v):
                if v.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return strategy.reduce("MEAN", v, axis=0)

            return tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    cls._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer._s2dnas_multi_worker_patch = True


class DistillingModel(keras.Model):
    """Wraps a multi-stage net for training: each stage's loss gets a distillation term from a
    frozen teacher (the original model), computed on the same (augmented) images.

    The teacher is frozen (`trainable = False`) while the wrapper trains; `train` restores its
    flag afterwards, so a caller's model is left as it was given."""

    def __init__(self, net, teacher, weight: float, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.teacher = teacher
        self.teacher.trainable = False
        self.weight = weight
        self.temperature = temperature

    def call(self, inputs, training=None):
        return self.net(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight=sample_weight, training=training)
        t = self.temperature
        teacher = keras.ops.softmax(self.teacher(x, training=False) / t)
        kl = 0.0
        for logits in y_pred:
            log_student = keras.ops.log_softmax(logits / t)
            kl = kl + keras.ops.mean(
                keras.ops.sum(teacher * (keras.ops.log(teacher + 1e-12) - log_student), axis=-1)
            )
        # Keras divides the compiled loss by the number of replicas (their gradients are
        # summed); a term added here must be divided too, or it counts once per replica.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss + self.weight * (t**2) * kl / replicas


class _DivergenceGuard(keras.callbacks.Callback):
    """Stops at the first non-finite batch loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


class _GoodCheckpoint(keras.callbacks.Callback):
    """Saves the model at the end of each epoch whose logs are all finite, atomically
    (write to a temporary file, then rename), so a crash never leaves half a file."""

    def __init__(self, path: str, guard: _DivergenceGuard, to_save: keras.Model):
        super().__init__()
        self.path = path
        self.guard = guard
        self.to_save = to_save  # the net itself, not a training wrapper around it

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.diverged_at is not None:
            return
        if not all(math.isfinite(float(v)) for v in (logs or {}).values()):
            return
        if not _is_chief():
            return
        with fileio.atomic_path(self.path, suffix=".keras") as tmp:
            self.to_save.save(tmp)


def _is_chief() -> bool:
    cfg = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cfg.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cfg.get(
            "cluster", {}
        )
    )


def _worker_dir(path: str) -> str:
    """Non-chief workers write their (required) copies to a private folder."""
    if _is_chief():
        return path
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return os.path.join(path, f"worker_{task['type']}_{task['index']}")


def train(
    model_fn: Callable[[], keras.Model],
    splits: data_lib.Splits,
    config: TrainConfig,
    teacher_fn: Callable[[], keras.Model] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict]:
    """Trains the model `model_fn` builds (inside the strategy's scope).

    Args:
        model_fn: Builds the model to train: a static model (one logits output) or a
            multi-stage net (a list of S logits). Called inside `strategy.scope()`.
        splits: The data (raw pixel values; normalisation lives in the model).
        config: How to train.
        teacher_fn: Builds the frozen teacher for distillation (needed when
            `config.distill_weight > 0`).
        callbacks: More Keras callbacks, run after the package's own (e.g. the
            supernet's architecture sampler).

    Returns:
        (the trained model, the history dict of per-epoch metrics).

    Raises:
        ValueError: Bad config, or a model whose class count differs from the data's.
        TrainingDivergedError: The loss became NaN/inf; the last good checkpoint is kept.
    """
    config.validate()
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    if config.verbose:
        print(
            f"strategy {config.strategy}: {strategy.num_replicas_in_sync} replica(s)", flush=True
        )
    if not config.ephemeral:
        os.makedirs(config.output_dir, exist_ok=True)

    with strategy.scope():
        net = model_fn()
        data_lib.check_num_classes(splits, net)
        if config.bn_momentum is not None:
            for layer in conventions.leaf_layers(net):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = config.bn_momentum
        num_outputs = len(net.outputs)
        weights = list(config.stage_weights or [1.0] * num_outputs)
        if len(weights) != num_outputs:
            raise ValueError(
                f"stage_weights needs one weight per output ({num_outputs}). Received: "
                f"stage_weights={config.stage_weights!r}"
            )
        model = net
        if config.distill_weight > 0:
            if teacher_fn is None:
                raise ValueError("distill_weight > 0 needs a teacher_fn (the original model).")
            teacher = teacher_fn()
            teacher_was_trainable = teacher.trainable
            model = DistillingModel(
                net, teacher, config.distill_weight, config.distill_temperature
            )
            model(np.zeros((1,) + tuple(splits.image_shape), "float32"))  # build it
        train_ds = splits.train.dataset(
            config.batch_size, training=True, augment=config.augment, seed=config.seed
        )
        steps = config.steps_per_epoch or math.ceil(len(splits.train) / config.batch_size)
        if config.steps_per_epoch:
            train_ds = train_ds.repeat()
        schedule = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(1, steps * config.epochs)
        )
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, nesterov=True)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if num_outputs == 1:
            model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        else:
            model.compile(
                optimizer=optimizer,
                loss=[loss] * num_outputs,
                loss_weights=weights,
                metrics=[["accuracy"]] * num_outputs,
            )

    val_ds = None
    if len(splits.val) and not config.ephemeral:
        val_ds = splits.val.dataset(config.batch_size)
        if num_outputs > 1:
            val_ds = val_ds.map(lambda x, y: (x, tuple([y] * num_outputs)))
    if num_outputs > 1:
        train_ds = train_ds.map(lambda x, y: (x, tuple([y] * num_outputs)))

    extra_callbacks = list(callbacks)
    guard = _DivergenceGuard()
    callbacks = [guard]
    if not config.ephemeral:
        out = _worker_dir(config.output_dir)
        checkpoint_path = os.path.join(config.output_dir, "checkpoint.keras")
        callbacks += [
            # BackupAndRestore first among the state-carrying callbacks: on restart it
            # restores the model, optimizer and epoch counter before anything else runs.
            keras.callbacks.BackupAndRestore(os.path.join(out, "backup"), save_freq="epoch"),
            _GoodCheckpoint(checkpoint_path, guard, net),
            keras.callbacks.TensorBoard(os.path.join(out, "logs"), update_freq="epoch"),
            keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        ]
    callbacks += extra_callbacks
    try:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=steps if config.steps_per_epoch else None,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # train_ds shuffles itself (Keras would warn and ignore it)
        )
    finally:
        if model is not net:  # give the caller's teacher back as it came
            model.teacher.trainable = teacher_was_trainable
    if guard.diverged_at is not None:
        epoch, batch, value = guard.diverged_at
        if config.ephemeral:
            kept = "an ephemeral run keeps no checkpoint"
        elif os.path.exists(checkpoint_path):
            kept = f"the last good checkpoint is {checkpoint_path}"
        else:
            kept = "no epoch finished, so there is no checkpoint"
        raise TrainingDivergedError(
            f"Training diverged: the loss became {value} at epoch {epoch}, batch {batch}; "
            f"{kept}. Lower the learning rate (was {config.learning_rate}) and restart."
        )
    return net, {k: [float(v) for v in vals] for k, vals in history.history.items()}



def predict_stage_probabilities(
    net: keras.Model, x: np.ndarray | data_lib.Split, batch_size: int | None = None
):
    """Softmax outputs of every stage on `x` (images, or a `Split`, streamed if it is):
    an array [S, N, K] (a static model gives S=1). Only the outputs are held. Batches of
    `batch_size`, by default `data.predict_batch_size` (256 CIFAR images, 32 of 224x224)."""
    outputs = net.predict(data_lib.image_batches(x, batch_size), verbose=0)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return np.stack([_softmax(np.asarray(o, dtype=np.float64)) for o in outputs])


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
