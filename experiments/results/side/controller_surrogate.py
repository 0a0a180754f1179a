"""The RL controller's settings tried on a surrogate reward (issue 18), in seconds per search.

    python experiments/results/side/controller_surrogate.py LOG[,LOG...] NAME=SETTINGS ...
    e.g. ... runs/search_v2/rl_seed0/search_log.jsonl,runs/search_v2/random_seed0/search_log.jsonl \
             "default={}" "uniform={'space_prior': False}" "norm={'normalize_rewards': True}"

SETTINGS are ControllerConfig fields, and space_prior and batch_size (SearchConfig's,
default True and 4).
The surrogate is a ridge regression of a real supernet search log's rewards (CIFAR-10
ResNet-20, 3 stages) on the tokens (one-hot), the architecture's cumulative stage FLOPs ratios
and whether stage 1 alone is over the 0.5 budget, plus a fixed per-architecture residual drawn
with the fit's residual spread. Random search and each setting run 300-candidate searches
(`search.run_search`, batch 4) for seeds 0-3; printed: the best reward per seed, the mean
reward of the last 100 candidates and the controller's entropy at the first and last update. A surrogate only ranks settings cheaply;
the real comparison is experiments/search_comparison.py.
"""

import ast
import hashlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import s2dnas_tf as s2d  # noqa: E402
from s2dnas_tf import controller, rewriter, search  # noqa: E402
from s2dnas_tf.flops import count_flops  # noqa: E402

BASE = "experiments/checkpoints/cifar10_resnet20.keras"
LAST_MEANS = []  # each run's mean reward over its last 100 candidates


def main(log_path, settings):
    base = keras.saving.load_model(BASE)
    space = s2d.SearchSpace.from_model(base, num_stages=3)
    static = count_flops(base)
    records = []
    for path in log_path.split(","):  # one log or several, comma-separated
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    choices = space.token_choices()

    def features(tokens):
        row = []
        for token, n in zip(tokens, choices):
            row.extend(np.eye(n)[token])
        ratios = np.array(rewriter.plan(space, space.decode(tokens)).stage_flops()) / static
        return np.array(row + list(ratios) + [float(ratios[0] > 0.5), 1.0])

    x = np.stack([features(r["tokens"]) for r in records])
    y = np.array([r["reward"] for r in records])
    w = np.linalg.solve(x.T @ x + 0.1 * np.eye(x.shape[1]), x.T @ y)
    noise = float((y - x @ w).std())
    print(f"fit on {len(y)} records: reward std {y.std():.4f}, residual std {noise:.4f}, "
          f"max {y.max():.4f}", flush=True)

    def surrogate(arch):
        tokens = arch.tokens
        seed = int(hashlib.md5(str(list(tokens)).encode()).hexdigest()[:8], 16)
        reward = float(features(tokens) @ w + noise * np.random.default_rng(seed).normal())
        return {"reward": reward, "val_accuracy": reward, "avg_flops": 0.0,
                "flops_ratio": 0.5, "thresholds": [], "budget_met": True}

    def run(searcher, seed, config=None, space_prior=True, batch_size=4):
        with tempfile.TemporaryDirectory() as d:
            summary = search.run_search(
                space, surrogate,
                search.SearchConfig(searcher=searcher, num_candidates=300,
                                    batch_size=batch_size, seed=seed,
                                    space_prior=space_prior),
                d, log=lambda message: None, controller_config=config)
            with open(os.path.join(d, "search_log.jsonl")) as f:
                rewards = [json.loads(line)["reward"] for line in f if line.strip()]
        entropy = [u["entropy"] for u in summary.get("updates", [])]
        LAST_MEANS.append(float(np.mean(rewards[-100:])))
        return summary["best"]["reward"], (entropy[0], entropy[-1]) if entropy else None

    seeds = range(4)
    rows = [("random", None)] + [
        (name, ast.literal_eval(value)) for name, value in (s.split("=", 1) for s in settings)]
    for name, kwargs in rows:
        start = time.time()
        LAST_MEANS.clear()
        if kwargs is None:
            out = [run("random", s) for s in seeds]
        else:
            kwargs = dict(kwargs)
            prior = kwargs.pop("space_prior", True)  # SearchConfig settings
            batch = kwargs.pop("batch_size", 4)
            out = [run("rl", s, controller.ControllerConfig(seed=s, **kwargs), prior, batch)
                   for s in seeds]
        best = [b for b, _ in out]
        entropy = "" if kwargs is None else " entropy " + " ".join(
            f"{e[0]:.1f}->{e[1]:.1f}" for _, e in out)
        print(f"{name}: best {np.mean(best):.4f} +- {np.std(best):.4f} "
              f"({' '.join(f'{b:.4f}' for b in best)}) last-100 mean {np.mean(LAST_MEANS):.4f}"
              f"{entropy} [{time.time() - start:.0f} s]",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
