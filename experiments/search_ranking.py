"""How well the supernet ranks architectures: some searched architectures trained in full.

    python experiments/search_ranking.py --flagfile=experiments/configs/dynamic_cifar10_resnet20.flags \
        --search_dir=runs/search_cifar10_resnet20 --output_dir=runs/ranking_cifar10_resnet20

1. reads every `search_log.jsonl` under `--search_dir` (experiments/search_comparison.py's
   output: candidates scored from the supernet), keeps the architectures that met the
   budget, and picks `--num_archs` of them spread evenly over their reward range (for each
   of `--num_archs` evenly spaced reward values, the nearest architecture not yet picked);
2. trains each like train_dynamic.py would with the same flags (`s2dnas_tf.runs.
   train_dynamic`: from the static model's weights, its epochs and distillation, thresholds
   calibrated on validation for `--flops_budget`, test accuracy in report.json), in
   `<output_dir>/arch<k>/`;
3. writes `<output_dir>/trained_archs.json`: [{"tokens", "supernet_score",
   "trained_accuracy", "flops_ratio"}], and prints Kendall's tau between the supernet's
   scores and the trained accuracies (test accuracy at the budget).

With `--start_from=supernet` each architecture is trained the way `search.py
--evaluator=supernet` trains its chosen net: from the supernet's weights (its BatchNorm
statistics recalibrated for the architecture), not the static model's. The supernet
(`--supernet_epochs`, `--supernet_learning_rate`, `--bn_images`, as search_comparison.py
trains it) is trained once in `<output_dir>/supernet/` (or loaded from there), and every
architecture's `supernet_score` is its reward scored from that supernet, in the run's space
(`--block_skipping`: the space with depth decisions) and cost (`--cost=tflite
--latency_budget=F`: accuracy at a predicted time budget, as search_comparison.py scores
with those flags). Instead of
`--search_dir`, `--archs=FILE` takes the architectures of an earlier ranking (a
`trained_archs.json`, or search_comparison.py's results JSON and its `ranking.archs`), all
of them.

With `--results_name` the ranking also goes into the search results
(`<results_dir>/<results_name>.{json,md}`, experiments/search_results.py): as "ranking" when
trained from the supernet (how search.py trains its chosen net), as "ranking_from_static"
otherwise; the rest of the file is kept. Each training resumes where a killed one stopped;
a finished one is read back, not redone.
"""

import json
import os

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
import search_results
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_flags("supernet_epochs", "supernet_learning_rate")
cli_common.define_run_flags("train_dynamic", helps={
    "base_model": "The trained static model (.keras).",
    "output_dir": "Where the trained architectures and trained_archs.json go.",
    "overwrite": "Train again architectures already trained in output_dir.",
})
flags.DEFINE_string("search_dir", None,
                    "A search_comparison.py output directory (its */search_log.jsonl).")
flags.DEFINE_string("archs", None,
                    "Instead of --search_dir: a JSON file of the architectures to train (a "
                    "trained_archs.json, or search_comparison.py's results and their "
                    "ranking.archs); all of them.")
flags.DEFINE_integer("num_archs", 8, "Architectures to train.", lower_bound=2)
flags.DEFINE_enum("start_from", "static", ["static", "supernet"],
                  "Whose weights each architecture's training starts from: the static "
                  "model's (train_dynamic.py) or the supernet's (search.py "
                  "--evaluator=supernet's chosen net).")
flags.DEFINE_integer("bn_images", 512,
                     "With --start_from=supernet: training images per architecture's "
                     "BatchNorm statistics.", lower_bound=1)
flags.DEFINE_string("results_dir", "experiments/results", "Where the search results are.")
flags.DEFINE_string("results_name", None,
                    "Also write the ranking into these search results (e.g. "
                    "search_cifar10_resnet20); default: only trained_archs.json.")
flags.mark_flags_as_required(["base_model", "output_dir"])
flags.register_multi_flags_validator(
    ["search_dir", "archs"], lambda v: (v["search_dir"] is None) != (v["archs"] is None),
    "Give exactly one of --search_dir and --archs.")


def read_candidates(search_dir: str) -> list[dict]:
    """Every scored architecture that met the budget, once (the first record of its tokens),
    from the search logs directly under `search_dir`."""
    if not os.path.isdir(search_dir):
        raise ValueError(f"--search_dir {search_dir!r} is not a directory.")
    seen, candidates = set(), []
    for name in sorted(os.listdir(search_dir)):
        path = os.path.join(search_dir, name, "search_log.jsonl")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of a killed search
                key = tuple(record["tokens"])
                if record.get("budget_met") and key not in seen:
                    seen.add(key)
                    candidates.append(record)
    return candidates


def read_archs(path: str) -> list[dict]:
    """The architectures of an earlier ranking: a list of {"tokens", "supernet_score", ...},
    or search results whose "ranking" (or "ranking_from_static") holds "archs" of that form.
    Each comes back as a search-log-like record ({"tokens", "reward"})."""
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--archs {path!r} is not a readable JSON file ({e}).") from None
    if isinstance(content, dict):  # search results: their ranking's architectures
        ranking = content.get("ranking") or content.get("ranking_from_static") or {}
        archs = ranking.get("archs")
    else:
        archs = content
    if (not isinstance(archs, list) or not archs
            or not all(isinstance(a, dict) and isinstance(a.get("tokens"), list) for a in archs)):
        raise ValueError(
            f"--archs {path!r} holds no architectures: expected a non-empty list of "
            '{"tokens": [...], ...} or a results dict with ranking.archs.')
    return [{"tokens": a["tokens"], "reward": a.get("supernet_score")} for a in archs]


def pick_spread(candidates: list[dict], count: int) -> list[dict]:
    """`count` candidates spread over the reward range: for each of `count` evenly spaced
    reward values, the nearest candidate not picked yet (ties: the earlier one)."""
    if len(candidates) < count:
        raise ValueError(
            f"--num_archs={count} needs as many scored architectures within the budget; "
            f"the search logs hold {len(candidates)}."
        )
    rewards = [c["reward"] for c in candidates]
    low, high = min(rewards), max(rewards)
    picked: list[int] = []
    for k in range(count):
        target = low + (high - low) * k / (count - 1)
        best = min((i for i in range(len(candidates)) if i not in picked),
                   key=lambda i: abs(rewards[i] - target))
        picked.append(best)
    return [candidates[i] for i in sorted(picked, key=lambda i: rewards[i])]


def main(argv):
    del argv
    cli_common.start_tensorflow(FLAGS.logical_cpus)
    import dataclasses

    from s2dnas_tf import fileio, runs, search

    try:
        config = cli_common.train_dynamic_config(FLAGS.flag_values_dict())
        if config.tokens is not None or config.early_exit:
            raise ValueError("--tokens and --early_exit do not apply: the architectures come "
                             "from --search_dir or --archs.")
        if FLAGS.archs:
            chosen = read_archs(FLAGS.archs)
            if FLAGS.start_from == "static" and any(c["reward"] is None for c in chosen):
                raise ValueError(
                    f"--archs {FLAGS.archs!r} gives architectures without a supernet_score; "
                    "--start_from=supernet scores them from a supernet.")
        else:
            chosen = pick_spread(read_candidates(FLAGS.search_dir), FLAGS.num_archs)
    except ValueError as e:
        return cli_common.usage_error(str(e))
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    evaluator = None
    if FLAGS.start_from == "supernet":
        try:
            evaluator, space = _supernet_evaluator(config, out)
            for record in chosen:
                record["reward"] = evaluator(space.decode(record["tokens"]))["reward"]
        except ValueError as e:
            return cli_common.usage_error(str(e))
    trained = []
    for k, record in enumerate(chosen):
        run_dir = os.path.join(out, f"arch{k}")
        report_path = os.path.join(run_dir, "report.json")
        print(f"arch {k + 1}/{len(chosen)}: tokens {record['tokens']}, supernet score "
              f"{record['reward']:.4f}", flush=True)
        if FLAGS.overwrite or not os.path.isfile(report_path):
            arch_config = dataclasses.replace(
                config, output_dir=run_dir, tokens=list(record["tokens"]))
            status = cli_common.call(
                runs.train_dynamic, arch_config, settings=cli_common.resolved_flags(),
                start_from=None if evaluator is None else evaluator.start_weights)
            if status:
                return status
        with open(report_path) as f:
            report = json.load(f)
        dynamic = report["dynamic"]
        trained.append({"tokens": list(record["tokens"]), "supernet_score": record["reward"],
                        "trained_accuracy": dynamic["accuracy"],
                        "flops_ratio": dynamic["flops_ratio"]})
        fileio.write_json(os.path.join(out, "trained_archs.json"), trained)
    tau = search.kendall_tau([t["supernet_score"] for t in trained],
                      [t["trained_accuracy"] for t in trained])
    print(f"Kendall tau between supernet score and trained accuracy over {len(trained)} "
          f"architectures: {tau:.3f}; wrote {os.path.join(out, 'trained_archs.json')}",
          flush=True)
    if FLAGS.results_name:
        results = search_results.read(FLAGS.results_dir, FLAGS.results_name)
        key = search_results.RANKING_KEYS[FLAGS.start_from]
        results[key] = search_results.ranking_entry(trained, FLAGS.start_from, tau)
        path = search_results.write(results, FLAGS.results_dir, FLAGS.results_name)
        print(f"wrote the ranking into {path}.json/.md", flush=True)
    return 0


def _supernet_evaluator(config, out: str):
    """The supernet evaluator of search_comparison.py's set-up for the static model and data
    of `config` (a TrainDynamicConfig), its supernet trained in (or loaded from)
    `<out>/supernet`; and the space."""
    import keras

    import s2dnas_tf as s2d
    from s2dnas_tf import data, evaluators, search

    if config.preprocessing != "none":
        raise ValueError("--start_from=supernet takes a base model that does its own input "
                         f"preprocessing (--preprocessing=none). Received: "
                         f"--preprocessing={config.preprocessing}")
    base = keras.saving.load_model(config.base_model)
    splits = data.load_dataset_for(config.data, base)
    space = s2d.SearchSpace.from_model(base, num_stages=config.num_stages,
                                       channel_multiple=config.channel_multiple,
                                       block_skipping=config.block_skipping)
    evaluator = evaluators.SupernetEvaluator(
        config.base_model,
        splits,
        cli_common.train_config(
            FLAGS.flag_values_dict(),
            output_dir=os.path.join(out, "supernet"),
            epochs=FLAGS.supernet_epochs,
            learning_rate=FLAGS.supernet_learning_rate,
            distill_weight=config.train.distill_weight,
            distill_temperature=config.train.distill_temperature,
        ),
        search.RewardConfig(kind="budget", flops_budget=config.flops_budget, cost=config.cost),
        space=space,
        bn_images=FLAGS.bn_images,
    )
    return evaluator, space


if __name__ == "__main__":
    cli_common.run(main)
