"""Candidate evaluators of the architecture search (docs/design.md §5): arch -> reward record.

`search.run_search(space, evaluate, ...)` takes any callable `arch -> dict`; an `Evaluator` is
the one a search run builds once (from the base model, the data, how to train a candidate
and how to score it) and then calls once per architecture:

- `FinetuneEvaluator`: transforms the base model into the candidate's multi-stage net,
  fine-tunes it briefly from the inherited weights (distilling from the base model when
  the TrainConfig asks for it) and scores its stages' validation outputs
  (`search.compute_reward`).
- `SupernetEvaluator`: trains the space's weight-sharing supernet once
  (`supernet.train_supernet`, kept in its TrainConfig's output_dir and reused), then scores
  each candidate from the shared weights: its view, BatchNorm statistics recalibrated on a
  few hundred training images, its stages' validation outputs. Seconds per candidate.

Another way to evaluate is one more `Evaluator` subclass taking the same constructor
arguments, registered under a name (`@register_evaluator("name")`); a search run builds the
one its config names (`SearchRunConfig.evaluator`) with `make_evaluator`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Callable

import keras

import numpy as np

from s2dnas_tf import calibration
from s2dnas_tf import cost as cost_lib
from s2dnas_tf import data as data_lib
from s2dnas_tf import rewriter, search, training
from s2dnas_tf import supernet as supernet_lib
from s2dnas_tf.flops import count_flops
from s2dnas_tf.space import Arch, SearchSpace

__all__ = [
    "EVALUATORS",
    "Evaluator",
    "FinetuneEvaluator",
    "SupernetEvaluator",
    "make_evaluator",
    "register_evaluator",
]


class Evaluator(abc.ABC):
    """Scores architectures of one base model's space for the search.

    Subclasses take `(base_model, splits, train_config, reward_config, *, space)` and
    implement `__call__`; `start_weights(arch)` is the static model whose weights the chosen
    architecture's final training starts from (the base model unless overridden).
    """

    base: keras.Model
    splits: data_lib.Splits
    reward_config: search.RewardConfig
    static_flops: int

    def _set_up_cost(self) -> None:
        """The static model's cost and, for a time cost, the op-time table (this machine's
        cache; new ops are measured and saved as candidates need them)."""
        self.static_flops = count_flops(self.base)
        self.cost_table = None
        if self.reward_config.cost != "flops":
            self.cost_table = cost_lib.OpTimeTable(runtime=self.reward_config.cost)
            self.static_cost = cost_lib.static_cost(self.base, self.reward_config.cost,
                                                    self.cost_table)
            self.cost_table.save()

    def _reward(self, probs, stage_flops: list[int], net_fn: Callable[[], keras.Model]) -> dict:
        """`search.compute_reward` in the reward config's cost. With a time cost the budget
        and the reward count each exit path's predicted ms (`net_fn()` builds the candidate's
        net to time); the record keeps the FLOPs of the thresholds chosen (`avg_flops`,
        `flops_ratio`) and adds `cost`, `path_ms`, `avg_ms` and `ms_ratio`."""
        labels = self.splits.y_val
        if self.cost_table is None:
            return search.compute_reward(
                probs, labels, stage_flops, self.static_flops, self.reward_config)
        measured = self.cost_table.measured
        path_ms = cost_lib.exit_path_costs(net_fn(), self.reward_config.cost, self.cost_table)
        if self.cost_table.measured != measured:
            self.cost_table.save()
        record = search.compute_reward(
            probs, labels, path_ms, self.static_cost, self.reward_config)
        chosen = calibration.evaluate_policy(probs, labels, stage_flops, record["thresholds"])
        return {
            **record,
            "cost": self.reward_config.cost,
            "path_ms": path_ms,
            "avg_ms": record["avg_flops"],
            "ms_ratio": record["flops_ratio"],
            "avg_flops": float(chosen.avg_flops),
            "flops_ratio": float(chosen.avg_flops / self.static_flops),
        }

    def start_weights(self, arch: Arch) -> keras.Model:
        """The static model the chosen `arch`'s network inherits its weights from."""
        del arch
        return self.base

    @abc.abstractmethod
    def __call__(self, arch: Arch) -> dict:
        """The reward record of `arch`.

        Returns:
            `search.compute_reward`'s dict: {"reward", "val_accuracy", "avg_flops",
            "flops_ratio", "thresholds", "budget_met"}.
        """


EVALUATORS: dict[str, type[Evaluator]] = {}


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator: registers an `Evaluator` subclass under `name`.

    Raises:
        ValueError: If `name` is taken.
    """

    def register(cls: type[Evaluator]) -> type[Evaluator]:
        if name in EVALUATORS:
            raise ValueError(
                f"An evaluator named {name!r} is registered already ({EVALUATORS[name]!r}). "
                f"Received: {cls!r}"
            )
        EVALUATORS[name] = cls
        return cls

    return register


def make_evaluator(
    name: str,
    base_model: keras.Model | str | os.PathLike,
    splits: data_lib.Splits,
    train_config: training.TrainConfig,
    reward_config: search.RewardConfig,
    *,
    space: SearchSpace | None = None,
) -> Evaluator:
    """The evaluator registered as `name`, built from the common arguments (`space`: the
    space searched, which the supernet evaluator needs).

    Raises:
        ValueError: For an unknown name (the message lists the registered ones), or what
            the evaluator's constructor raises.
    """
    if name not in EVALUATORS:
        raise ValueError(
            f"evaluator must be one of {sorted(EVALUATORS)}. Received: evaluator={name!r}"
        )
    return EVALUATORS[name](base_model, splits, train_config, reward_config, space=space)


@register_evaluator("finetune")
class FinetuneEvaluator(Evaluator):
    """Fine-tunes each candidate from the inherited weights, then scores it on validation.

    The fine-tune is ephemeral: it writes nothing and a killed one is redone from the
    start. Everything it depends on is seeded by `train_config.seed`, so the same
    architecture gets the same reward (with TensorFlow's op determinism enabled).

    Args:
        base_model: The trained static model, or the path of its `.keras` file. With a
            path the distillation teacher is loaded from it for every candidate; with a
            model, a copy of it is.
        splits: The data: candidates train on `train`, are scored on `val`.
        train_config: The candidates' fine-tune (its `ephemeral` is always set, its
            `output_dir` unused).
        reward_config: How validation outputs become the reward.

    Raises:
        ValueError: If a config is invalid or the base model does not fit the data.
    """

    def __init__(
        self,
        base_model: keras.Model | str | os.PathLike,
        splits: data_lib.Splits,
        train_config: training.TrainConfig,
        reward_config: search.RewardConfig,
        *,
        space: SearchSpace | None = None,
    ):
        del space  # each candidate is transformed from the base model itself
        if isinstance(base_model, (str, os.PathLike)):
            path = os.fspath(base_model)
            self.base = keras.saving.load_model(path)
            self._teacher_fn: Callable[[], keras.Model] = lambda: keras.saving.load_model(path)
        else:
            self.base = base_model
            self._teacher_fn = lambda: _copy_model(base_model)
        self.splits = splits
        self.train_config = dataclasses.replace(train_config, ephemeral=True)
        self.train_config.validate()
        self.reward_config = reward_config
        reward_config.validate()
        data_lib.check_num_classes(splits, self.base)
        self._set_up_cost()

    def __call__(self, arch: Arch) -> dict:
        net, _ = training.train(
            lambda: rewriter.transform(self.base, arch),
            self.splits,
            self.train_config,
            teacher_fn=self._teacher_fn,
        )
        val_probs = training.predict_stage_probabilities(net, self.splits.val)
        return self._reward(val_probs, rewriter.stage_flops(net), lambda: net)


@register_evaluator("supernet")
class SupernetEvaluator(Evaluator):
    """Scores each candidate from the space's weight-sharing supernet (trained once).

    Args:
        base_model: The trained static model, or the path of its `.keras` file (also the
            distillation teacher of the supernet's training).
        splits: The data: the supernet trains on `train`, BatchNorm statistics come from
            `bn_images` of its images (a seeded sample, held in memory), candidates are scored
            on `val`.
        train_config: The supernet's training. With an `output_dir` the trained supernet is
            kept there (`supernet.keras`) and a resumed or repeated search reuses it (a
            killed training resumes from its last epoch).
        reward_config: How validation outputs become the reward.
        space: The space searched.
        bn_images: Training images per candidate's BatchNorm recalibration.

    Raises:
        ValueError: If a config is invalid, the base model does not fit the data, or the
            model has a layer the supernet cannot share (see `supernet.Supernet`).
    """

    def __init__(
        self,
        base_model: keras.Model | str | os.PathLike,
        splits: data_lib.Splits,
        train_config: training.TrainConfig,
        reward_config: search.RewardConfig,
        *,
        space: SearchSpace | None = None,
        bn_images: int = 512,
    ):
        if not isinstance(space, SearchSpace):
            raise ValueError(
                "The supernet evaluator needs the SearchSpace searched (space=...). "
                f"Received: space={space!r}"
            )
        if isinstance(base_model, (str, os.PathLike)):
            path = os.fspath(base_model)
            self.base = keras.saving.load_model(path)
            teacher_fn = lambda: keras.saving.load_model(path)  # noqa: E731
        else:
            self.base = base_model
            teacher_fn = lambda: _copy_model(base_model)  # noqa: E731
        train_config.validate()
        reward_config.validate()
        data_lib.check_num_classes(splits, self.base)
        self.splits = splits
        self.reward_config = reward_config
        self._set_up_cost()
        self.supernet = supernet_lib.train_supernet(
            self.base, space, splits, train_config, teacher_fn=teacher_fn
        )
        rng = np.random.default_rng(train_config.seed)
        count = min(bn_images, len(splits.train))
        sample = np.sort(rng.choice(len(splits.train), count, False))
        self.bn_images, _ = splits.train.select(sample).arrays()

    def __call__(self, arch: Arch) -> dict:
        probs, stage_flops = self.supernet.evaluate(arch, self.bn_images, self.splits.val)
        return self._reward(probs, stage_flops, lambda: rewriter.transform(self.base, arch))

    def start_weights(self, arch: Arch) -> keras.Model:
        """The supernet's weights with `arch`'s BatchNorm statistics, as a static model."""
        self.supernet.set_arch(arch)
        self.supernet.recalibrate_batchnorm(self.bn_images)
        return self.supernet.to_static()


def _copy_model(model: keras.Model) -> keras.Model:
    """A copy with the same weights, built where it is called (inside the training's
    strategy scope, unlike `model` itself)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
