"""REINFORCE against random search, both scoring candidates from one weight-sharing supernet.

    python experiments/search_comparison.py --flagfile=experiments/configs/search_cifar10_resnet20.flags

1. trains the supernet of the static model's space once (`<output_dir>/supernet/`, reused);
2. runs each searcher (`--searchers`) with each seed (`--seeds`) for `--num_candidates`
   distinct networks, in the order rl/seed 0, random/seed 0, rl/seed 1, ... so that a run
   stopped early still holds comparable pairs (`<output_dir>/<searcher>_seed<k>/`);
3. writes `<results_dir>/<results_name>.{json,md,png}`: per searcher and seed the best reward,
   candidates, seconds and the reward of every candidate in order; the RL controller's
   entropy per update; the plot of the best reward so far against candidates.

With `--block_skipping` the supernet is that of the space with depth decisions (stages may
skip identity blocks), and a searcher named `<searcher>_noskip` (e.g. `random_noskip`) searches
the same space restricted to architectures that skip nothing (S2DNAS's width-only space),
scored by the same supernet: what the depth decision adds, with the scorer held fixed.

With `--cost=tflite --latency_budget=F` (or saved_model) the reward is the validation accuracy
at an average predicted time of F times the static model's (s2dnas_tf.cost), not at
--flops_budget; the supernet is the same, so its directory can be shared with a FLOPs run.

Every step resumes: started again, the supernet loads, each search continues from its log.
The ranking entries (Kendall tau between supernet score and trained accuracy) are
experiments/search_ranking.py's (`--results_name`); this script keeps those already in the
results file.
"""

import json
import os
import time

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
import search_results
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_flags(*cli_common.DATA_FLAGS, "batch_size", "seed", "verbose", "strategy",
                        "logical_cpus", "num_stages", "channel_multiple", "block_skipping",
                        "flops_budget",
                        "supernet_epochs", "supernet_learning_rate", "search_batch_size",
                        "cost", "latency_budget", "output_dir")
cli_common.register_budget_validator()
flags.DEFINE_string("base_model", "experiments/checkpoints/cifar10_resnet20.keras",
                    "The trained static model (.keras).")
flags.DEFINE_integer("num_candidates", 300, "Distinct networks per search.")
flags.DEFINE_list("searchers", ["rl", "random"],
                  "Searchers to compare: rl, random; with --block_skipping also rl_noskip and "
                  "random_noskip (the same searcher over the architectures that skip no block).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of each searcher.")
flags.DEFINE_integer("bn_images", 512, "Training images per candidate's BatchNorm statistics.")
flags.DEFINE_string("results_dir", "experiments/results", "Where the results go.")
flags.DEFINE_string("results_name", "search_cifar10_resnet20", "Results file name.")
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    cli_common.start_tensorflow(FLAGS.logical_cpus)
    import keras

    import s2dnas_tf as s2d
    from s2dnas_tf import data, evaluators, search, training

    try:
        seeds = [int(s) for s in FLAGS.seeds]
        known = {"rl", "random"} | (
            {"rl_noskip", "random_noskip"} if FLAGS.block_skipping else set())
        unknown = sorted(set(FLAGS.searchers) - known)
        if unknown:
            raise ValueError(f"--searchers takes {', '.join(sorted(known))} (the _noskip ones "
                             f"with --block_skipping). Received: {unknown}")
        base = keras.saving.load_model(FLAGS.base_model)
        splits = data.load_dataset_for(cli_common.data_config(FLAGS.flag_values_dict()), base)
        space = s2d.SearchSpace.from_model(
            base, num_stages=FLAGS.num_stages, channel_multiple=FLAGS.channel_multiple,
            block_skipping=FLAGS.block_skipping,
        )
    except (ValueError, OSError) as e:
        return cli_common.usage_error(str(e))
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    print(space.describe(), flush=True)
    cost, budget = cli_common.budget(FLAGS.flag_values_dict())
    reward = search.RewardConfig(kind="budget", flops_budget=budget, cost=cost)
    start = time.time()
    evaluator = evaluators.SupernetEvaluator(
        FLAGS.base_model,
        splits,
        training.TrainConfig(
            output_dir=os.path.join(out, "supernet"),
            epochs=FLAGS.supernet_epochs,
            learning_rate=FLAGS.supernet_learning_rate,
            batch_size=FLAGS.batch_size,
            distill_weight=1.0,
            strategy=FLAGS.strategy,
            seed=FLAGS.seed,
            verbose=FLAGS.verbose,
        ),
        reward,
        space=space,
        bn_images=FLAGS.bn_images,
    )
    supernet_seconds = time.time() - start
    print(f"supernet ready in {supernet_seconds:.0f} s", flush=True)

    results = {"searchers": {name: [] for name in FLAGS.searchers},
               "reward": {"cost": cost, "budget": budget},
               "supernet_seconds_this_call": supernet_seconds}
    plain = s2d.SearchSpace(space.analysis, space.num_stages, space.grid,
                            space.channel_multiple)
    depth = space.num_tokens - plain.num_tokens

    def skipping_nothing(arch):
        return evaluator(space.decode(arch.tokens + [0] * depth))

    for seed in seeds:
        for name in FLAGS.searchers:
            run_dir = os.path.join(out, f"{name}_seed{seed}")
            noskip = name.endswith("_noskip")
            summary = search.run_search(
                plain if noskip else space,
                skipping_nothing if noskip else evaluator,
                search.SearchConfig(searcher=name.split("_")[0],
                                    num_candidates=FLAGS.num_candidates,
                                    batch_size=FLAGS.search_batch_size, seed=seed),
                run_dir,
                log=lambda message: None,
            )
            with open(os.path.join(run_dir, "search_log.jsonl")) as f:
                records = [json.loads(line) for line in f if line.strip()]
            entry = {
                "seed": seed,
                "best_reward": summary["best"]["reward"],
                "best_tokens": summary["best"]["tokens"],
                "candidates": summary["evaluated"],
                "seconds": summary["seconds"],
                "rewards": [r["reward"] for r in records],
                "entropy": [u["entropy"] for u in summary["updates"]],
            }
            results["searchers"][name].append(entry)
            print(f"{name} seed {seed}: best reward {entry['best_reward']:.4f} after "
                  f"{entry['candidates']} candidates, {entry['seconds']:.0f} s", flush=True)
    previous = search_results.read(FLAGS.results_dir, FLAGS.results_name)
    for key in search_results.RANKING_KEYS.values():
        if key in previous:
            results[key] = previous[key]
    base_path = search_results.write(results, FLAGS.results_dir, FLAGS.results_name)
    print(f"wrote {base_path}.json/.md/.png", flush=True)
    return 0


if __name__ == "__main__":
    cli_common.run(main)
