"""Candidate evaluators of the architecture search (DESIGN §5): architecture -> reward record.

`search.run_search(space, evaluate, ...)` takes any callable `arch -> dict`; an `Evaluator` is
the one a search run builds once (from the base model, the data, how to train a candidate
and how to score it) and then calls once per architecture:

- `FinetuneEvaluator`: transforms the base model into the candidate's multi-stage net,
  fine-tunes it briefly from the inherited weights (distilling from the base model when
  the TrainConfig asks for it) and scores its stages' validation outputs
  (`search.compute_reward`).

Another way to evaluate (e.g. a weight-sharing supernet) is one more `Evaluator` subclass
taking the same constructor arguments, registered under a name
(`@register_evaluator("name")`); a search run builds the one its config names
(`SearchRunConfig.evaluator`) with `make_evaluator`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Callable

import keras

from s2dnas_tf import data as data_lib
from s2dnas_tf import rewriter, search, training
from s2dnas_tf.flops import count_flops
from s2dnas_tf.space import Arch

__all__ = [
    "EVALUATORS", "Evaluator", "FinetuneEvaluator", "make_evaluator", "register_evaluator",
]


class Evaluator(abc.ABC):
    """Scores architectures of one base model's space for the search.

    Subclasses take `(base_model, splits, train_config, reward_config)` and implement
    `__call__`.
    """

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
) -> Evaluator:
    """The evaluator registered as `name`, built from the common arguments.

    Raises:
        ValueError: For an unknown name (the message lists the registered ones), or what
            the evaluator's constructor raises.
    """
    if name not in EVALUATORS:
        raise ValueError(
            f"evaluator must be one of {sorted(EVALUATORS)}. Received: evaluator={name!r}"
        )
    return EVALUATORS[name](base_model, splits, train_config, reward_config)


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
        splits: The data: candidates train on `x_train`, are scored on `x_val`.
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
    ):
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
        self.static_flops = count_flops(self.base)

    def __call__(self, arch: Arch) -> dict:
        net, _ = training.train(
            lambda: rewriter.transform(self.base, arch),
            self.splits,
            self.train_config,
            teacher_fn=self._teacher_fn,
        )
        val_probs = training.predict_stage_probabilities(net, self.splits.x_val)
        return search.compute_reward(
            val_probs,
            self.splits.y_val,
            rewriter.stage_flops(net),
            self.static_flops,
            self.reward_config,
        )


def _copy_model(model: keras.Model) -> keras.Model:
    """A copy with the same weights, built where it is called (inside the training's
    strategy scope, unlike `model` itself)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
