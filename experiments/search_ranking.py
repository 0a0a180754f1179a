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

Then `experiments/search_comparison.py ... --trained_archs=<output_dir>/trained_archs.json`
puts the ranking into the search results. Each training resumes where a killed one stopped;
a finished one is read back, not redone.
"""

import json
import os

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_run_flags("train_dynamic", helps={
    "base_model": "The trained static model (.keras).",
    "output_dir": "Where the trained architectures and trained_archs.json go.",
    "overwrite": "Train again architectures already trained in output_dir.",
})
flags.DEFINE_string("search_dir", None,
                    "A search_comparison.py output directory (its */search_log.jsonl).")
flags.DEFINE_integer("num_archs", 8, "Architectures to train.", lower_bound=2)
flags.mark_flags_as_required(["base_model", "output_dir", "search_dir"])


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
                             "from --search_dir.")
        chosen = pick_spread(read_candidates(FLAGS.search_dir), FLAGS.num_archs)
    except ValueError as e:
        return cli_common.usage_error(str(e))
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    trained = []
    for k, record in enumerate(chosen):
        run_dir = os.path.join(out, f"arch{k}")
        report_path = os.path.join(run_dir, "report.json")
        print(f"arch {k + 1}/{len(chosen)}: tokens {record['tokens']}, supernet score "
              f"{record['reward']:.4f}", flush=True)
        if FLAGS.overwrite or not os.path.isfile(report_path):
            arch_config = dataclasses.replace(
                config, output_dir=run_dir, tokens=list(record["tokens"]))
            status = cli_common.call(runs.train_dynamic, arch_config,
                                     settings=cli_common.resolved_flags())
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
    return 0


if __name__ == "__main__":
    cli_common.run(main)
