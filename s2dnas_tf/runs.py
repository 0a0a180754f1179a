"""The runs behind the experiments/ entry points, as library functions (docs/design.md §10).

- `train_base(TrainBaseConfig)`: a static reference model trained from scratch
  (experiments/train_base.py);
- `run_search(SearchRunConfig)`: S2DNAS end to end: the base model (given, or trained
  here) -> the architecture search -> the chosen net trained from the inherited weights ->
  calibration -> report -> export (experiments/search.py);
- `train_dynamic(TrainDynamicConfig)`: one given architecture, or the early-exit baseline,
  trained, calibrated, reported and exported without search (experiments/train_dynamic.py).

Each writes into `config.output_dir` (the files: WORKSPACE.md), resumes when called again on
the same directory (trainings from their last epoch, the search from its log and controller
state) and refuses a directory holding a finished run unless `config.overwrite`. The
trainings' `output_dir`s are the run's to set (its layout), whatever the given TrainConfigs
say.

A run checks its input first (settings, data, base model, architecture) and raises
`InputError` if it is unusable, before it writes anything; only a base model trained by the
run itself is checked once trained. How the run was made is written next to its outputs
(`config.json`; `base_report.json`'s "flags" for `train_base`): the `settings` the caller
passes (an entry point passes its resolved flags), else the config itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import keras
import tensorflow as tf

from s2dnas_tf import early_exit, fileio, pipeline, rewriter, training
from s2dnas_tf import data as data_lib
from s2dnas_tf import search as search_lib
from s2dnas_tf import cost as cost_lib
from s2dnas_tf import evaluators
from s2dnas_tf.flops import count_flops
from s2dnas_tf.models import (
    build_model,
    list_models,
    with_input_normalization,
    with_preprocessing,
)
from s2dnas_tf.space import Arch, SearchSpace

__all__ = [
    "FinishedRunError",
    "InputError",
    "SearchRunConfig",
    "TrainBaseConfig",
    "TrainDynamicConfig",
    "run_search",
    "train_base",
    "train_dynamic",
]

Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


class InputError(ValueError):
    """A run's input is unusable: its settings, data, base model or architecture."""


class FinishedRunError(InputError):
    """The output directory holds a finished run and `overwrite` is off."""


@dataclasses.dataclass
class TrainBaseConfig:
    """A static reference model trained from scratch.

    Attributes:
        output_dir: Gets `model.keras` (raw pixels in, logits out), `base_report.json` and
            the training state (`checkpoint.keras`, `backup/`, `logs/`, `history.csv`).
        data: The dataset.
        train: How to train (its `output_dir` is set to `output_dir`).
        model: A name of `s2dnas_tf.models.list_models()`.
        width_multiplier: Channel width multiplier of the model.
        overwrite: Train again although `output_dir` holds a finished run (`model.keras`).
    """

    output_dir: str
    data: data_lib.DataConfig = dataclasses.field(default_factory=data_lib.DataConfig)
    train: training.TrainConfig = dataclasses.field(default_factory=training.TrainConfig)
    model: str = "resnet20"
    width_multiplier: float = 1.0
    overwrite: bool = False


@dataclasses.dataclass
class SearchRunConfig:
    """The S2DNAS pipeline: base model -> search -> train the best -> calibrate -> report.

    Attributes:
        output_dir: Gets config.json, search_log.jsonl, controller.json, arch.json,
            multistage.keras, report.json/.md, curve.png, saved_model/<name>/1/,
            model.tflite, and `base/` (a base model trained here), `final/` (the chosen
            net's training state).
        data: The dataset.
        base_model: A trained static model (`.keras`); None: train `model` here.
        preprocessing: keras.applications' preprocessing the base model expects
            ("tf", "torch", "caffe"), put in front of it as its first layer
            (`models.with_preprocessing`); the run's static model is then
            `<output_dir>/base/model.keras`. "none": it takes raw pixels already.
        model: The reference model to train when `base_model` is None.
        base_train: How to train it (state in `<output_dir>/base`).
        num_stages: Stages S of the multi-stage nets.
        channel_multiple: `SearchSpace.from_model`'s channel multiple.
        block_skipping: `SearchSpace.from_model`'s depth decision (stages may skip
            identity blocks).
        search: The search loop.
        reward: How a candidate is scored; its `flops_budget` is also the budget the
            chosen net's thresholds are calibrated for.
        max_first_stage_flops: Only search architectures whose first stage costs at most
            this fraction of the static FLOPs (`search.first_stage_flops_cap`); None: all.
        evaluator: How a candidate is evaluated: a name of `evaluators.EVALUATORS`
            ("finetune": `evaluators.FinetuneEvaluator`; "supernet":
            `evaluators.SupernetEvaluator`, whose trained supernet is kept in
            `<output_dir>/supernet/` and whose weights the chosen net starts from).
        candidate_train: The candidates' training (for "finetune", each one's short
            fine-tune; ephemeral).
        supernet_train: The supernet's training (for "supernet"; state and the trained
            `supernet.keras` in `<output_dir>/supernet`).
        final_train: The chosen net's training (state in `<output_dir>/final`).
        deterministic: Enable TensorFlow's op determinism (for the whole process), so the
            same seed gives the same candidates, rewards and result.
        overwrite: Start afresh in an `output_dir` holding a finished run.
        export_name: Model name of the exported SavedModel; None: the base model's name.
        stop_after_search: Stop once arch.json is written.
    """

    output_dir: str
    data: data_lib.DataConfig = dataclasses.field(default_factory=data_lib.DataConfig)
    base_model: str | None = None
    preprocessing: str = "none"
    model: str = "resnet20"
    base_train: training.TrainConfig = dataclasses.field(default_factory=training.TrainConfig)
    num_stages: int = 3
    channel_multiple: int = 1
    block_skipping: bool = False
    search: search_lib.SearchConfig = dataclasses.field(default_factory=search_lib.SearchConfig)
    reward: search_lib.RewardConfig = dataclasses.field(default_factory=search_lib.RewardConfig)
    max_first_stage_flops: float | None = None
    evaluator: str = "supernet"
    candidate_train: training.TrainConfig = dataclasses.field(
        default_factory=lambda: training.TrainConfig(
            epochs=1, learning_rate=0.01, bn_momentum=0.9, distill_weight=1.0, verbose=0,
            ephemeral=True,
        )
    )
    supernet_train: training.TrainConfig = dataclasses.field(
        default_factory=lambda: training.TrainConfig(
            epochs=5, learning_rate=0.02, distill_weight=1.0
        )
    )
    final_train: training.TrainConfig = dataclasses.field(
        default_factory=lambda: training.TrainConfig(distill_weight=1.0)
    )
    deterministic: bool = True
    overwrite: bool = False
    export_name: str | None = None
    stop_after_search: bool = False


@dataclasses.dataclass
class TrainDynamicConfig:
    """One architecture (or the early-exit baseline) trained, calibrated and reported.

    Attributes:
        output_dir: Gets config.json, arch.json (not for early exits), multistage.keras,
            report.json/.md, curve.png, saved_model/<name>/1/, model.tflite, `train/` (the
            training state) and, with `num_stages=1`, static.keras.
        base_model: The trained static model (`.keras`).
        preprocessing: As `SearchRunConfig.preprocessing`.
        data: The dataset.
        num_stages: Stages S (exits, with `early_exit`).
        channel_multiple: `SearchSpace.from_model`'s channel multiple (1 with early exits).
        block_skipping: `SearchSpace.from_model`'s depth decision (off with early exits);
            `tokens` then include the skips.
        tokens: The architecture's tokens; None: the space's default architecture.
        early_exit: The early-exit baseline (`early_exit.attach_exits`) instead of an S2DNAS
            architecture; `tokens` must then be None.
        flops_budget: The thresholds' budget, a fraction of the static model's cost.
        cost: What the budget counts (`cost.COSTS`): "flops", or "tflite" / "saved_model"
            (each exit path's predicted batch-1 time on that runtime; the report gains its
            "cost" entry).
        train: How to train (its `stage_weights` and distillation included; state in
            `<output_dir>/train`).
        overwrite: Redo a finished run in `output_dir`.
    """

    output_dir: str
    base_model: str
    preprocessing: str = "none"
    data: data_lib.DataConfig = dataclasses.field(default_factory=data_lib.DataConfig)
    num_stages: int = 3
    channel_multiple: int = 1
    block_skipping: bool = False
    tokens: Sequence[int] | None = None
    early_exit: bool = False
    flops_budget: float = 0.5
    cost: str = "flops"
    train: training.TrainConfig = dataclasses.field(
        default_factory=lambda: training.TrainConfig(distill_weight=1.0)
    )
    overwrite: bool = False


def train_base(
    config: TrainBaseConfig, *, settings: Mapping[str, Any] | None = None, log: Log = _print
) -> dict:
    """Trains `config.model` from scratch and saves it with its test accuracy and FLOPs.

    Args:
        config: The run.
        settings: What base_report.json records as "flags" (an entry point's resolved
            flags); None: it records the config as "config".
        log: Progress output.

    Returns:
        base_report.json's dict.

    Raises:
        FinishedRunError: If `output_dir` holds `model.keras` and `overwrite` is off.
        InputError: For an unknown model name or unusable data.
        training.TrainingDivergedError: If training diverges.
    """
    out = config.output_dir
    model_path = os.path.join(out, "model.keras")
    if os.path.exists(model_path) and not config.overwrite:
        raise FinishedRunError(f"{model_path} exists (a finished run)")
    train_config = dataclasses.replace(config.train, output_dir=out)
    with _checking_input():
        _check_model_name(config.model)
        train_config.validate()
        _start_strategy(train_config)
        splits = data_lib.load_dataset(config.data)
    log(
        f"data: {splits.name} train {len(splits.train)} val {len(splits.val)} "
        f"test {len(splits.test)} classes {splits.num_classes} image {splits.image_shape}"
    )
    start = time.time()
    model, history = _train_reference_model(
        config.model, splits, train_config, width_multiplier=config.width_multiplier
    )
    seconds = time.time() - start
    accuracy = pipeline.static_accuracy(model, splits.test, splits.y_test)
    flops = count_flops(model)
    log(f"test accuracy {accuracy:.4f}  FLOPs {flops:,}  train wall time {seconds:.0f} s")
    with fileio.atomic_path(model_path, suffix=".keras") as tmp:
        model.save(tmp)
    report = {
        "dataset": splits.name,
        "model": config.model,
        "width_multiplier": config.width_multiplier,
        "test_accuracy": accuracy,
        "flops": flops,
        "train_seconds": seconds,
        "num_train": len(splits.train),
        "num_test": len(splits.test),
        "history": history,
    }
    if settings is not None:
        report["flags"] = dict(settings)
    else:
        report["config"] = dataclasses.asdict(config)
    fileio.write_json(os.path.join(out, "base_report.json"), report)
    return report


# What a finished search run leaves, removed when it is started afresh (`overwrite`).
_SEARCH_OUTPUTS = ("report.json", "report.md", "curve.png", "arch.json", "search_log.jsonl",
                   "controller.json", "multistage.keras", "config.json", "model.tflite")
_SEARCH_OUTPUT_DIRS = ("base", "candidates", "final", "saved_model", "supernet")


def run_search(
    config: SearchRunConfig, *, settings: Mapping[str, Any] | None = None, log: Log = _print
) -> dict:
    """S2DNAS end to end; resumes from `config.output_dir` where a previous call stopped.

    Args:
        config: The run.
        settings: What config.json records (an entry point's resolved flags); None: the
            config.
        log: Progress output.

    Returns:
        report.json's dict; with `stop_after_search`, arch.json's.

    Raises:
        FinishedRunError: If `output_dir` holds report.json and `overwrite` is off.
        InputError: For unusable settings, data or base model, or a first-stage cap below
            the space's thinnest first stage.
        training.TrainingDivergedError: If a training diverges.
        RuntimeError: If the search finds no admissible architecture.
    """
    out = config.output_dir
    if os.path.exists(os.path.join(out, "report.json")):
        if not config.overwrite:
            raise FinishedRunError(f"{out} holds a finished run (report.json)")
        for name in _SEARCH_OUTPUTS:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        for name in _SEARCH_OUTPUT_DIRS:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    base_train = dataclasses.replace(config.base_train, output_dir=os.path.join(out, "base"))
    final_train = dataclasses.replace(config.final_train, output_dir=os.path.join(out, "final"))
    supernet_train = dataclasses.replace(
        config.supernet_train, output_dir=os.path.join(out, "supernet")
    )
    with _checking_input():
        if config.base_model is None:
            _check_model_name(config.model)
            if config.preprocessing != "none":
                raise InputError(
                    "preprocessing goes in front of a given base_model; the reference model "
                    "trained here normalises raw pixels itself. Received: preprocessing="
                    f"{config.preprocessing!r} with base_model=None"
                )
        config.search.validate()
        config.reward.validate()
        if config.evaluator not in evaluators.EVALUATORS:
            raise InputError(
                f"evaluator must be one of {sorted(evaluators.EVALUATORS)}. Received: "
                f"evaluator={config.evaluator!r}"
            )
        base_train.validate()
        final_train.validate()
        dataclasses.replace(config.candidate_train, ephemeral=True).validate()
        supernet_train.validate()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    run_start = time.time()
    base = None
    with _checking_input():
        _start_strategy(base_train, final_train, supernet_train, config.candidate_train)
        if config.base_model is not None:
            base = _load_static_model(config.base_model, config.preprocessing)
            load_start = time.time()
            splits = data_lib.load_dataset_for(config.data, base)
            space = _space(base, splits, config.num_stages, config.channel_multiple,
                           config.block_skipping)
        else:
            load_start = time.time()
            splits = data_lib.load_dataset(config.data)
    os.makedirs(out, exist_ok=True)
    _write_settings(out, settings, config)
    # A streamed set's load includes a scan that decodes every image once.
    log(f"data: {splits!r}, loaded in {time.time() - load_start:.0f} s")

    # 1. The base model: the user's, or a reference model trained here (resumable).
    base_path = _save_prepared_base(base, config, out) or os.path.join(
        out, "base", "model.keras")
    if base is None:
        if not os.path.exists(base_path):
            log(f"training the base model {config.model} ({config.base_train.epochs} epochs) ...")
            trained, _ = _train_reference_model(config.model, splits, base_train)
            with fileio.atomic_path(base_path, suffix=".keras") as tmp:
                trained.save(tmp)
        with _checking_input():
            base = _load_static_model(base_path)
            space = _space(base, splits, config.num_stages, config.channel_multiple,
                           config.block_skipping)
    log(space.describe())

    # 2. The search.
    admissible = None
    if config.max_first_stage_flops is not None:
        with _checking_input():
            admissible = search_lib.first_stage_flops_cap(base, config.max_first_stage_flops)
        if not admissible(space.decode([0] * space.num_tokens)):  # the thinnest stage 1
            raise InputError(
                f"max_first_stage_flops={config.max_first_stage_flops}: even the space's "
                "thinnest first stage costs more "
                f"({min(admissible.ratios.values()):.3f} of the static FLOPs); raise it."
            )
        log(f"searching only architectures whose first stage costs <= "
            f"{config.max_first_stage_flops} of the static FLOPs")
    if config.evaluator == "supernet":
        log(f"the supernet ({supernet_train.epochs} epochs; kept in {out}/supernet) ...")
    with _checking_input():
        evaluator = evaluators.make_evaluator(
            config.evaluator,
            base_path,
            splits,
            supernet_train if config.evaluator == "supernet" else config.candidate_train,
            config.reward,
            space=space,
        )
    summary = search_lib.run_search(
        space, evaluator, config.search, out, log=log, admissible=admissible
    )
    best = summary["best"]
    arch = space.decode(best["tokens"])
    log(
        f"search done: {summary['evaluated']} architectures in {summary['seconds']:.0f} s; "
        f"best reward {best['reward']:.4f}:\n{arch}\n{space.channel_table(arch)}"
    )
    chosen = {**arch.to_dict(), "search": best,
              "summary": {k: v for k, v in summary.items() if k != "best"}}
    fileio.write_json(os.path.join(out, "arch.json"), chosen)
    if config.stop_after_search:
        log(f"stop_after_search: wrote {out}/arch.json")
        return chosen

    # 3.-5. Train the best architecture, calibrate, report, export.
    result = pipeline.train_and_report(
        base=base,
        teacher_fn=lambda: keras.saving.load_model(base_path),
        arch=arch,
        splits=splits,
        train_config=final_train,
        flops_budget_ratio=config.reward.flops_budget,
        output_dir=out,
        search={
            "searcher": config.search.searcher,
            "evaluated": summary["evaluated"],
            "samples": summary["samples"],
            "seconds": summary["seconds"],
            "best_reward": best["reward"],
            "max_first_stage_flops": config.max_first_stage_flops,
            "seconds_per_candidate": summary["seconds"] / max(1, summary["evaluated"]),
        },
        log=log,
        export_name=config.export_name or base.name,
        start_from=evaluator.start_weights(arch),
        cost=config.reward.cost,
    )
    log(f"total wall time {time.time() - run_start:.0f} s, peak resident memory "
        f"{_peak_rss_gb():.2f} GB")
    return result


def train_dynamic(
    config: TrainDynamicConfig,
    *,
    settings: Mapping[str, Any] | None = None,
    log: Log = _print,
    start_from: Callable[[Arch], keras.Model] | None = None,
) -> dict:
    """Trains one architecture's multi-stage net (or early exits) from the base model's
    weights with its distillation, calibrates the exits on validation and reports on test.

    With `num_stages=1` (and no early exits) also writes `static.keras`: the one-stage net
    trained here, as the static model again (`rewriter.to_static`), a base for other runs.

    Args:
        config: The run.
        settings: What config.json records (an entry point's resolved flags); None: the
            config.
        log: Progress output.
        start_from: Given the architecture (an `Arch`), a static model of the base's
            architecture whose weights the net inherits instead of the base's (e.g.
            `evaluators.SupernetEvaluator.start_weights`, as a search with the supernet
            evaluator trains its chosen net); not with early exits.

    Returns:
        report.json's dict.

    Raises:
        FinishedRunError: If `output_dir` holds report.json and `overwrite` is off.
        InputError: For unusable settings, data, base model or tokens.
        training.TrainingDivergedError: If training diverges.
    """
    out = config.output_dir
    if config.early_exit and start_from is not None:
        raise InputError("start_from applies to S2DNAS architectures, not to early exits.")
    if config.early_exit and config.channel_multiple != 1:
        raise InputError(
            "channel_multiple applies to S2DNAS architectures; the early-exit baseline "
            f"keeps the static model's channels. Received: channel_multiple="
            f"{config.channel_multiple!r} with early_exit=True"
        )
    if config.early_exit and config.block_skipping:
        raise InputError(
            "block_skipping applies to S2DNAS architectures; the early-exit baseline runs "
            "the static model's blocks. Received: block_skipping=True with early_exit=True"
        )
    if os.path.exists(os.path.join(out, "report.json")) and not config.overwrite:
        raise FinishedRunError(f"{out} holds a finished run (report.json)")
    train_config = dataclasses.replace(config.train, output_dir=os.path.join(out, "train"))
    space = arch = None
    with _checking_input():
        train_config.validate()
        if config.cost not in cost_lib.COSTS:
            raise InputError(
                f"cost must be one of {cost_lib.COSTS}. Received: cost={config.cost!r}")
        weights = config.train.stage_weights
        if weights is not None and len(weights) != config.num_stages:
            raise InputError(
                f"stage_weights needs one weight per stage ({config.num_stages}). Received: "
                f"stage_weights={list(weights)!r}"
            )
        _start_strategy(train_config)
        base = _load_static_model(config.base_model, config.preprocessing)
        splits = data_lib.load_dataset_for(config.data, base)
        if config.early_exit:
            if config.tokens:
                raise InputError("tokens and early_exit exclude each other.")
            early_exit.attach_exits(base, config.num_stages)  # checks the model up front
        else:
            space = SearchSpace.from_model(
                base, num_stages=config.num_stages, channel_multiple=config.channel_multiple,
                block_skipping=config.block_skipping,
            )
            arch = space.decode(list(config.tokens)) if config.tokens else space.default_arch()
    os.makedirs(out, exist_ok=True)
    _write_settings(out, settings, config)
    base_path = _save_prepared_base(base, config, out)
    if arch is not None:
        log(space.describe())
        log(str(arch))
        log(space.channel_table(arch))
        fileio.write_json(os.path.join(out, "arch.json"), arch.to_dict())
    else:
        log(f"early exits after {config.num_stages} resolution stages of {base.name}")

    result = pipeline.train_and_report(
        base=base,
        teacher_fn=lambda: keras.saving.load_model(base_path),
        arch=arch,
        splits=splits,
        train_config=train_config,
        flops_budget_ratio=config.flops_budget,
        output_dir=out,
        log=log,
        export_name=base.name,
        cost=config.cost,
        start_from=None if start_from is None else start_from(arch),
        build_net=(
            (lambda: early_exit.attach_exits(base, config.num_stages))
            if config.early_exit else None
        ),
    )
    if config.num_stages == 1 and not config.early_exit:
        # The static model trained with this recipe, as a static model again: a base for
        # train_dynamic / run_search (the benchmark's --dynamic_from=static_ft).
        net = keras.saving.load_model(os.path.join(out, "multistage.keras"))
        with fileio.atomic_path(os.path.join(out, "static.keras"), suffix=".keras") as tmp:
            rewriter.to_static(net, base).save(tmp)
        log(f"wrote {out}/static.keras (the trained one-stage net as {base.name})")
    return result


@contextlib.contextmanager
def _checking_input() -> Iterator[None]:
    """Turns the errors of reading and checking a run's input into `InputError`. Only
    around input checks: elsewhere such an error is a fault, and keeps its traceback."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:
        raise InputError(str(e)) from e


def _check_model_name(name: str) -> None:
    if name not in list_models():
        raise InputError(f"model must be one of {list_models()}. Received: model={name!r}")


def _start_strategy(*train_configs: training.TrainConfig) -> None:
    """Makes a multi-worker strategy before TensorFlow runs anything (loading data or a
    model does): TensorFlow configures its collectives only at start-up."""
    for config in train_configs:
        if config.strategy == "multi_worker":
            training.make_strategy("multi_worker")
            return


def _save_prepared_base(base: keras.Model | None, config, out: str) -> str | None:
    """The path of the run's static model: the user's file, or, when the run put
    preprocessing in front of it, that model saved as `<out>/base/model.keras`."""
    if base is None:
        return None
    if config.preprocessing == "none":
        return config.base_model
    path = os.path.join(out, "base", "model.keras")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with fileio.atomic_path(path, suffix=".keras") as tmp:
        base.save(tmp)
    return path


def _load_static_model(path: str, preprocessing: str = "none") -> keras.Model:
    """Loads a user's static model, with `preprocessing` in front; a file that is not a
    Keras model is an InputError naming the file (Keras would call it "File not found")."""
    model = _read_static_model(path)
    try:
        return with_preprocessing(model, preprocessing)
    except ValueError as e:
        raise InputError(f"base_model {path!r}: {e}") from e


def _read_static_model(path: str) -> keras.Model:
    if not os.path.isfile(path):
        raise InputError(f"base_model {path!r} does not exist (expected a .keras file).")
    if not (zipfile.is_zipfile(path) or path.endswith((".h5", ".hdf5"))):
        raise InputError(
            "base_model must be a Keras model file (a .keras zip archive). Received: "
            f"base_model={path!r}, which is not a zip archive."
        )
    try:
        return keras.saving.load_model(path)
    except Exception as e:  # any failure to read a user's file is a bad input
        raise InputError(
            f"base_model {path!r} could not be loaded as a Keras model: {e}"
        ) from e


def _space(
    base: keras.Model, splits: data_lib.Splits, num_stages: int, channel_multiple: int,
    block_skipping: bool,
) -> SearchSpace:
    data_lib.check_num_classes(splits, base)
    data_lib.check_image_shape(splits, base)
    return SearchSpace.from_model(
        base, num_stages=num_stages, channel_multiple=channel_multiple,
        block_skipping=block_skipping,
    )


def _train_reference_model(
    name: str, splits: data_lib.Splits, config: training.TrainConfig, **model_kwargs
) -> tuple[keras.Model, dict]:
    """A registered model with `with_input_normalization` (the train split's channel
    statistics) first, trained from scratch (resumable)."""
    mean, variance = splits.channel_stats()

    def model_fn():
        core = build_model(
            name, num_classes=splits.num_classes, input_shape=splits.image_shape,
            **model_kwargs,
        )
        return with_input_normalization(core, mean, variance)

    return training.train(model_fn, splits, config)


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports KiB, macOS bytes)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


def _write_settings(output_dir: str, settings: Mapping[str, Any] | None, config) -> None:
    record = dict(settings) if settings is not None else dataclasses.asdict(config)
    fileio.write_json(os.path.join(output_dir, "config.json"), record)
