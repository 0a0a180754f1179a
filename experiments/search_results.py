"""The search comparison's results files (`<results_dir>/<name>.{json,md,png}`), written by
experiments/search_comparison.py (the searches) and experiments/search_ranking.py (the
supernet's ranking against trained architectures), each keeping what the other wrote.

JSON shape: {"searchers": {"rl": [{"seed", "best_reward", "best_tokens", "candidates",
"seconds", "rewards", "entropy"}, ...], "random": [...]}, "ranking": {"kendall_tau",
"start_from", "archs": [{"tokens", "supernet_score", "trained_accuracy"}, ...]}, ...}.
"ranking" is the ranking against architectures trained the way search.py trains its chosen
net with the supernet evaluator (from the supernet's weights); a ranking against
trainings from the static model's weights is kept beside it as "ranking_from_static".
"""

import json
import os

RANKING_KEYS = {"supernet": "ranking", "static": "ranking_from_static"}


def read(results_dir: str, name: str) -> dict:
    """The results JSON, or {} when there is none yet."""
    path = os.path.join(results_dir, name + ".json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        results = json.load(f)
    ranking = results.get("ranking")
    if ranking and ranking.get("kendall_tau") is not None and "start_from" not in ranking:
        # Written before rankings said where their trainings started: from the static model.
        results["ranking_from_static"] = {**ranking, "start_from": "static"}
        del results["ranking"]
    return results


def ranking_entry(trained: list[dict], start_from: str, kendall_tau: float) -> dict:
    return {"kendall_tau": kendall_tau, "start_from": start_from,
            "archs": [{"tokens": t["tokens"], "supernet_score": t["supernet_score"],
                       "trained_accuracy": t["trained_accuracy"]} for t in trained]}


def write(results: dict, results_dir: str, name: str) -> str:
    """Writes `results` as <name>.json, .md and .png (atomically each); returns the path
    without extension."""
    from s2dnas_tf import fileio

    base_path = os.path.join(results_dir, name)
    fileio.write_json(base_path + ".json", results)
    fileio.write_text(base_path + ".md", markdown(results))
    if results.get("searchers"):
        plot(results, base_path + ".png")
    return base_path


def markdown(results: dict) -> str:
    import numpy as np

    lines = ["# Search comparison (supernet evaluator)", ""]
    reward = results.get("reward")
    if reward:
        unit = "FLOPs" if reward["cost"] == "flops" else f"predicted {reward['cost']} time"
        lines += [f"Reward: validation accuracy at an average {unit} of {reward['budget']:g} "
                  "times the static model's.", ""]
    lines += ["| searcher | seeds | best reward (mean) | spread (max - min) | candidates "
              "| s/candidate |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in results.get("searchers", {}).items():
        if not runs:
            continue
        best = np.array([r["best_reward"] for r in runs])
        cands = sum(r["candidates"] for r in runs)
        secs = sum(r["seconds"] for r in runs)
        lines.append(f"| {name} | {len(runs)} | {best.mean():.4f} | {best.max() - best.min():.4f} "
                     f"| {cands} | {secs / max(1, cands):.2f} |")
    for start_from, key in RANKING_KEYS.items():
        ranking = results.get(key)
        if not ranking or ranking.get("kendall_tau") is None:
            if key == "ranking":
                lines += ["", "Kendall tau (supernet score vs trained accuracy): not measured"]
            continue
        start = {"supernet": "the supernet's", "static": "the static model's"}[
            ranking.get("start_from", start_from)]
        lines += ["", f"Kendall tau (supernet score vs accuracy at the budget after training "
                  f"from {start} weights): {ranking['kendall_tau']:.3f}", "",
                  "| tokens | supernet score | trained accuracy |", "| --- | --- | --- |"]
        lines += [f"| {a['tokens']} | {a['supernet_score']:.4f} | {a['trained_accuracy']:.4f} |"
                  for a in ranking["archs"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from s2dnas_tf import fileio

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"rl": "tab:blue", "random": "tab:orange"}
    for name, runs in results["searchers"].items():
        for r in runs:
            best = np.maximum.accumulate(r["rewards"])
            ax.plot(np.arange(1, len(best) + 1), best, color=colors.get(name), alpha=0.8,
                    label=f"{name} seed {r['seed']}")
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("best reward so far")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
