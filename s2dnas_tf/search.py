"""The architecture search (docs/design.md §5): rewards, the evaluation cache, the resumable loop.

`run_search` drives either searcher through one code path:

- `"rl"`: the REINFORCE controller (`controller.Controller`) samples a batch of
  architectures, each is evaluated (or read from the cache), the controller is updated on
  the batch's rewards and its state checkpointed;
- `"random"`: uniform samples from the space (`SearchSpace.sample`), same loop, no update.

The search stops after `num_candidates` *distinct* architectures have been evaluated (a
cached architecture is never paid for twice and does not count; token lists that build the
same network, `SearchSpace.network_key`, are one architecture), or after
`max_samples_factor * num_candidates` samples.

Constraints: `run_search(..., admissible=...)` takes a predicate on architectures (e.g.
`first_stage_flops_cap`). An inadmissible sample is never evaluated and never logged: the
random searcher draws again, the controller is taught with `inadmissible_reward` for it (it
learns to avoid the region) and samples again. Rejections are cheap (no training) and are
not counted towards the sample limit; they have their own, `max_rejections_factor *
num_candidates`.

Resumption: every evaluation is appended to `search_log.jsonl` as soon as it is done, and the
controller state is written (atomically) after every update. A run killed at any moment and
started again restores the controller from its last update, samples the same batch again
(the sampling generator is part of the state) and finds the already-evaluated architectures
in the log: nothing evaluated is lost, nothing is paid for twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import numpy as np

from s2dnas_tf import calibration, fileio
from s2dnas_tf import controller as controller_lib
from s2dnas_tf import flops, rewriter
from s2dnas_tf.cost import COSTS
from s2dnas_tf.space import Arch, SearchSpace

SEARCHERS = ("rl", "random")
REWARDS = ("budget", "linear")


@dataclasses.dataclass
class RewardConfig:
    """How a candidate's validation outputs become a reward.

    Attributes:
        kind: "budget": validation accuracy at the FLOPs budget (thresholds calibrated for
            it), minus `budget_penalty * (cheapest / budget - 1)` when even exiting every
            sample at stage 1 exceeds the budget; "linear": the best accuracy - lambda *
            (average FLOPs / static FLOPs) over the calibrated accuracy-FLOPs curve.
        flops_budget: The budget as a fraction of the static model's cost, in (0, 1]: its
            FLOPs, or with a time `cost` its predicted time (the `--latency_budget`).
        flops_lambda: lambda of the linear reward.
        budget_penalty: Penalty per unit of relative budget overshoot.
        cost: What the budget and the reward count (`cost.COSTS`): "flops", or "tflite" /
            "saved_model" (each exit path's batch-1 time on that runtime predicted by
            `cost.exit_path_costs`).
    """

    kind: str = "budget"
    flops_budget: float = 0.5
    flops_lambda: float = 0.5
    budget_penalty: float = 1.0
    cost: str = "flops"

    def validate(self) -> None:
        if self.kind not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}. Received: {self.kind!r}")
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}. Received: cost={self.cost!r}")
        if not 0 < self.flops_budget <= 1:
            raise ValueError(
                f"flops_budget must be in (0, 1]. Received: flops_budget={self.flops_budget!r}"
            )
        if self.flops_lambda < 0 or self.budget_penalty < 0:
            raise ValueError(
                "flops_lambda and budget_penalty must be >= 0. Received: "
                f"flops_lambda={self.flops_lambda!r}, budget_penalty={self.budget_penalty!r}"
            )


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (how alike they rank; ties allowed),
    e.g. candidates' search rewards against their accuracies after full training.

    Raises:
        ValueError: For sequences of other lengths or shorter than 2.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(
            f"Expected two sequences of the same length >= 2. Received: lengths {a.shape}, "
            f"{b.shape}"
        )
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordant = float(np.sum(da * db))
    pairs = float(len(i))
    untied_a, untied_b = pairs - float(np.sum(da == 0)), pairs - float(np.sum(db == 0))
    return concordant / max(1e-12, (untied_a * untied_b) ** 0.5)


def compute_reward(
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    stage_flops: list[int],
    static_flops: int,
    config: RewardConfig,
) -> dict:
    """The reward of one candidate from its stages' validation softmax outputs.

    Returns:
        {"reward", "val_accuracy", "avg_flops", "flops_ratio", "thresholds", "budget_met"}.
    """
    if config.kind == "budget":
        budget = config.flops_budget * static_flops
        try:
            best = calibration.calibrate_for_budget(val_probs, val_labels, stage_flops, budget)
            reward, met = best.accuracy, True
        except calibration.BudgetNotMetError as e:
            cheapest = [0.0] * (len(stage_flops) - 1)
            best = calibration.evaluate_policy(val_probs, val_labels, stage_flops, cheapest)
            reward = best.accuracy - config.budget_penalty * (e.cheapest_flops / budget - 1)
            met = False
    else:
        front = calibration.accuracy_flops_curve(val_probs, val_labels, stage_flops)
        scores = [p.accuracy - config.flops_lambda * p.avg_flops / static_flops for p in front]
        best = front[int(np.argmax(scores))]
        reward, met = float(max(scores)), True
    return {
        "reward": float(reward),
        "val_accuracy": float(best.accuracy),
        "avg_flops": float(best.avg_flops),
        "flops_ratio": float(best.avg_flops / static_flops),
        "thresholds": [float(t) for t in best.thresholds],
        "budget_met": met,
    }


@dataclasses.dataclass
class SearchConfig:
    """The search loop.

    Attributes:
        searcher: "rl" or "random".
        num_candidates: Distinct architectures to evaluate (100: a few minutes scored from
            a CIFAR-10 ResNet-20 supernet).
        batch_size: Architectures per controller update.
        seed: Seeds the controller / the random samples.
        max_samples_factor: Stop after this many samples per candidate (a converged
            controller keeps re-sampling cached architectures; a constraint rejects some).
        inadmissible_reward: The controller's reward for a sample `admissible` rejects.
        max_rejections_factor: Stop after this many rejected samples per candidate.
        reject_idle_stages: Treat an arch with a stage that only repeats an earlier exit
            (`SearchSpace.idle_stages`) as inadmissible, so every stage of the chosen net
            adds channels.
        space_prior: rl: the controller starts from random search's distribution over the
            space (`SearchSpace.token_log_prior` added to its logits) instead of uniform
            tokens, which draw wide first stages far more often than the space holds them
            (many over a FLOPs budget). A run resumes only with the setting it began with.
    """

    searcher: str = "rl"
    num_candidates: int = 100
    batch_size: int = 4
    seed: int = 0
    max_samples_factor: int = 10
    inadmissible_reward: float = 0.0
    max_rejections_factor: int = 200
    reject_idle_stages: bool = False
    space_prior: bool = True

    def validate(self) -> None:
        if self.searcher not in SEARCHERS:
            raise ValueError(f"searcher must be one of {SEARCHERS}. Received: {self.searcher!r}")
        if self.num_candidates < 1 or self.batch_size < 1:
            raise ValueError(
                "num_candidates and batch_size must be >= 1. Received: "
                f"num_candidates={self.num_candidates!r}, batch_size={self.batch_size!r}"
            )
        if not isinstance(self.space_prior, bool):
            raise TypeError(
                f"space_prior must be True or False. Received: space_prior={self.space_prior!r}"
            )


class SearchLog:
    """`search_log.jsonl`: one JSON line per evaluated architecture, appended and flushed
    as each evaluation ends. A torn last line (killed mid-write) is ignored on reading.

    `cache` maps `key(tokens)` to the record: with `key=space.network_key`, token lists that
    build the same network share one record (default: the tokens themselves)."""

    def __init__(self, path: str, key: Callable[[Sequence[int]], tuple] = tuple):
        self.path = path
        self.key = key
        self.records: list[dict] = []
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().split("\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # the torn tail of a killed write; everything before it is good
            self._rewrite()
        self.cache = {}
        for r in self.records:
            self.cache.setdefault(key(r["tokens"]), r)

    def _rewrite(self):
        fileio.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self.cache.setdefault(self.key(record["tokens"]), record)

    def best(self) -> dict | None:
        return max(self.records, key=lambda r: r["reward"]) if self.records else None


def run_search(
    space: SearchSpace,
    evaluate: Callable[[Arch], dict],
    config: SearchConfig,
    output_dir: str,
    controller_config=None,
    log: Callable[[str], None] = print,
    admissible: Callable[[Arch], bool] | None = None,
) -> dict:
    """Searches `space`, resuming from `output_dir` if a previous run stopped there.

    Args:
        space: The architecture space.
        evaluate: arch -> dict with at least "reward", "val_accuracy", "avg_flops",
            "flops_ratio" (e.g. a short fine-tune + `compute_reward`).
        config: The loop's settings.
        output_dir: Holds `search_log.jsonl` and `controller.json`.
        controller_config: `controller.ControllerConfig` for the RL searcher.
        log: Progress output (one line per candidate).
        admissible: arch -> whether it may be evaluated (None: every arch may). See the
            module docstring.

    Returns:
        {"best": the best log record, "evaluated": int, "seconds": float, "samples": int,
        "rejected": samples `admissible` refused; both counts cover the whole
        search, a resumed one included; "updates": the RL controller's updates
        ({"evaluated", "mean_reward", "baseline", "entropy"} each; also in controller.json),
        empty for random search}.

    Raises:
        RuntimeError: If the sample limit is reached before any admissible architecture
            was evaluated (the constraint excludes (almost) the whole space).
    """
    config.validate()
    if config.reject_idle_stages:
        constraint = admissible

        def admissible(arch: Arch) -> bool:
            if space.idle_stages(arch):
                return False
            return constraint is None or bool(constraint(arch))

    os.makedirs(output_dir, exist_ok=True)
    search_log = SearchLog(os.path.join(output_dir, "search_log.jsonl"), key=space.network_key)
    state_path = os.path.join(output_dir, "controller.json")
    controller = None
    if config.searcher == "rl":
        cfg = controller_config or controller_lib.ControllerConfig(seed=config.seed)
        controller = controller_lib.Controller(
            space.token_kinds(), space.token_choices(), cfg,
            log_prior=space.token_log_prior() if config.space_prior else None,
        )
        if os.path.exists(state_path):
            with open(state_path) as f:
                saved = json.load(f)
            controller.set_state(saved["controller"])
            samples = saved["samples"]
            rejected = saved.get("rejected", 0)  # absent from states written before it was kept
            updates = saved.get("updates", [])  # likewise
        else:
            samples = rejected = 0
            updates = []
    else:
        # Random search redraws its (seeded) sequence from the start: logged architectures
        # come from the cache, and the rejections are counted again on the way.
        samples = rejected = 0
        updates = []
    if search_log.records:
        count = len(search_log.records)
        log(f"resuming: {count} architecture{'' if count == 1 else 's'} already evaluated")
    max_samples = config.max_samples_factor * config.num_candidates
    max_rejected = config.max_rejections_factor * config.num_candidates
    verdicts: dict[tuple, bool] = {}  # tokens -> admissible

    def more_samples():
        return samples - rejected < max_samples and rejected < max_rejected

    while len(search_log.records) < config.num_candidates and more_samples():
        batch = []
        while len(batch) < config.batch_size and more_samples():
            if controller is not None:
                tokens, _ = controller.sample(space.valid_choices)
            else:
                tokens = space.sample(config.seed * 1_000_003 + samples).tokens
            samples += 1
            tokens = list(tokens)
            if (
                admissible is not None
                and space.network_key(tokens) not in search_log.cache
                and tuple(tokens) not in verdicts
            ):
                verdicts[tuple(tokens)] = bool(admissible(space.decode(tokens)))
            if not verdicts.get(tuple(tokens), True):
                rejected += 1
                if controller is None:
                    continue  # random search: draw again
            batch.append(tokens)
        rewards = []
        for tokens in batch:
            if not verdicts.get(tuple(tokens), True):
                rewards.append(config.inadmissible_reward)
                continue
            record = search_log.cache.get(space.network_key(tokens))
            if record is None:
                if len(search_log.records) >= config.num_candidates:
                    break
                arch = space.decode(tokens)
                start = time.time()
                result = evaluate(arch)
                record = {
                    "step": len(search_log.records),
                    "tokens": tokens,
                    **result,
                    "seconds": time.time() - start,
                }
                search_log.append(record)
                log(
                    f"[{config.searcher}] candidate {record['step'] + 1}/"
                    f"{config.num_candidates}: reward {record['reward']:.4f}  val acc "
                    f"{record['val_accuracy']:.4f}  FLOPs ratio {record['flops_ratio']:.3f}  "
                    f"{record['seconds']:.0f} s  tokens {tokens}"
                )
            rewards.append(record["reward"])
        if controller is not None and batch and len(rewards) == len(batch):
            stats = controller.update(batch, rewards, space.valid_choices)
            updates.append({"evaluated": len(search_log.records),
                            **{k: float(stats[k]) for k in ("mean_reward", "baseline", "entropy")}})
            state = {"controller": controller.get_state(), "samples": samples,
                     "rejected": rejected, "updates": updates}
            fileio.write_text(state_path, json.dumps(state))
            refused = sum(not verdicts.get(tuple(t), True) for t in batch)
            log(
                f"[rl] update: mean reward {stats['mean_reward']:.4f}"
                + (f" ({refused} of {len(batch)} samples inadmissible, reward "
                   f"{config.inadmissible_reward:g} each)" if refused else "")
                + f"  baseline {stats['baseline']:.4f}  entropy {stats['entropy']:.3f}"
            )
    if rejected:
        log(f"[{config.searcher}] {rejected} of {samples} samples were inadmissible")
    best = search_log.best()
    if best is None:
        raise RuntimeError(
            f"The search drew {samples} samples and none was admissible ({rejected} "
            "rejected): the constraint leaves (almost) no architecture of this space. "
            "Relax it."
        )
    return {
        "best": best,
        "evaluated": len(search_log.records),
        "seconds": float(sum(r["seconds"] for r in search_log.records)),
        "samples": samples,
        "rejected": rejected,
        "updates": updates,
    }


def first_stage_flops_cap(model, max_ratio: float) -> Callable[[Arch], bool]:
    """A constraint for `run_search`: the first stage costs at most `max_ratio` of `model`.

    At a tight budget the thresholds send most images out of stage 1; an arch whose stage 1
    alone nearly fills the budget is a thin static model with extra exits, and a short
    fine-tune (the reward's proxy) favours such archs because a wide stage 1 loses the
    fewest inherited weights. Capping stage 1 (e.g. at half the budget) keeps the search
    among genuinely multi-stage networks.

    Args:
        model: The static model the space was made from.
        max_ratio: In (0, 1]: the cap, a fraction of `model`'s FLOPs.

    Returns:
        arch -> bool. Stage-1 FLOPs are measured on the transformed network (cached by
        the stage-1 fractions, the only tokens they depend on).
    """
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)):
        raise TypeError(f"max_ratio must be a number. Received: {type(max_ratio).__name__}")
    if not 0 < max_ratio <= 1:
        raise ValueError(f"max_ratio must be in (0, 1]. Received: {max_ratio!r}")
    static = flops.count_flops(model)
    cache: dict[tuple, float] = {}

    def admissible(arch: Arch) -> bool:
        key = tuple(arch.fraction(1, g) for g in range(arch.num_groups)) + (
            arch.channel_multiple,
        ) + (tuple(arch.skips[0]) if arch.skips else ())
        if key not in cache:
            cache[key] = rewriter.stage_flops(rewriter.transform(model, arch))[0] / static
        return cache[key] <= max_ratio

    admissible.ratios = cache  # stage-1 FLOPs ratio per stage-1 fractions (for reports)
    return admissible
