"""experiments/search_ranking.py and `search.kendall_tau`: the supernet's ranking checked
against architectures trained in full."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from s2dnas_tf import search
from tests import helpers
from s2dnas_tf.space import SearchSpace

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "checkpoints" / "cifar10_resnet20.keras"


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "search_ranking.py"), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_kendall_tau_against_hand_counts():
    assert search.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert search.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 6 pairs: 5 concordant, 1 discordant -> (5 - 1) / 6.
    assert search.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # With ties (tau-b): scipy.stats.kendalltau's documented example.
    assert search.kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(
        -0.47140452079103173
    )
    with pytest.raises(ValueError, match="same length"):
        search.kendall_tau([1, 2], [1, 2, 3])


def _write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.write('{"torn": ')  # a killed search's last line


def test_pick_spread_takes_the_nearest_unpicked_to_evenly_spaced_rewards():
    code = (
        "import json, sys; sys.path.insert(0, 'experiments'); import search_ranking; "
        "c = [{'tokens': [k], 'reward': r} for k, r in "
        "enumerate([0.2, 0.21, 0.5, 0.52, 0.8, 0.79, 0.35])]; "
        "print(json.dumps([[x['tokens'][0] for x in search_ranking.pick_spread(c, n)] "
        "for n in (2, 3, 4)]))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    # 2: 0.2 and 0.8; 3: and 0.5; 4 (0.2, 0.4, 0.6, 0.8): 0.35 nearest 0.4, 0.52 nearest 0.6.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[0, 4], [0, 2, 4], [0, 6, 3, 4]]


def test_bad_search_dir_exits_2(tmp_path):
    result = _run(f"--base_model={BASE}", f"--search_dir={tmp_path / 'none'}",
                  f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is not a directory" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_too_few_architectures_within_the_budget_exit_2(tmp_path):
    _write_log(tmp_path / "search" / "rl_seed0" / "search_log.jsonl", [
        {"tokens": [0, 1], "reward": 0.5, "budget_met": True},
        {"tokens": [1, 1], "reward": 0.9, "budget_met": False},
    ])
    result = _run(f"--base_model={BASE}", f"--search_dir={tmp_path / 'search'}",
                  f"--output_dir={tmp_path / 'out'}", "--num_archs=2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the search logs hold 1." in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, expected", [
    ([], "Give exactly one of --search_dir and --archs"),
    (["--search_dir=x", "--archs=y"], "Give exactly one of --search_dir and --archs"),
    (["--archs={tmp}/none.json"], "is not a readable JSON file"),
    (["--archs={tmp}/empty.json"], "holds no architectures"),
    (["--archs={tmp}/unscored.json"], "without a supernet_score"),
])
def test_bad_architecture_sources_exit_2(tmp_path, args, expected):
    (tmp_path / "empty.json").write_text('{"ranking": {"archs": []}}')
    (tmp_path / "unscored.json").write_text('[{"tokens": [0, 1]}]')
    result = _run(f"--base_model={BASE}", f"--output_dir={tmp_path / 'out'}",
                  *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.extended  # an experiments script's whole run: over 2 minutes on a slow machine
def test_trains_the_spread_and_writes_the_ranking(tmp_path):
    base = helpers.save_tiny_digits_base(tmp_path / "base.keras")
    space = SearchSpace.from_model(base, num_stages=2)
    tokens = []
    for seed in range(20):
        t = space.sample(seed).tokens
        if t not in tokens:
            tokens.append(t)
    rewards = np.linspace(0.2, 0.8, 5)
    # Two searches (read in name order); the second log repeats an architecture (its first
    # record counts) and holds one over the budget (never picked).
    _write_log(tmp_path / "search" / "random_seed0" / "search_log.jsonl", [
        {"tokens": tokens[i], "reward": float(rewards[i]), "budget_met": True}
        for i in (0, 2, 4)])
    _write_log(tmp_path / "search" / "rl_seed0" / "search_log.jsonl", [
        {"tokens": tokens[1], "reward": float(rewards[1]), "budget_met": True},
        {"tokens": tokens[0], "reward": 0.99, "budget_met": True},
        {"tokens": tokens[5], "reward": 1.0, "budget_met": False},
    ])
    out = tmp_path / "ranking"
    results = [f"--results_dir={tmp_path}", "--results_name=search"]
    result = _run(f"--base_model={tmp_path / 'base.keras'}", f"--search_dir={tmp_path / 'search'}",
                  f"--output_dir={out}", "--num_stages=2", "--num_archs=2", "--epochs=1",
                  "--steps_per_epoch=2", "--batch_size=32", "--verbose=0", *results)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((out / "trained_archs.json").read_text())
    # Two evenly spaced over [0.2, 0.8]: the lowest and the highest (not the 0.99 repeat,
    # whose first record counts, nor the 1.0 over the budget). What three or more evenly
    # spaced values pick is checked by test_pick_spread_takes_the_nearest_unpicked_...
    assert [t["tokens"] for t in trained] == [tokens[0], tokens[4]]
    assert [t["supernet_score"] for t in trained] == pytest.approx([0.2, 0.8])
    for k, t in enumerate(trained):
        report = json.loads((out / f"arch{k}" / "report.json").read_text())
        assert t["trained_accuracy"] == report["dynamic"]["accuracy"]
        assert json.loads((out / f"arch{k}" / "arch.json").read_text())["tokens"] == t["tokens"]
    assert "Kendall tau" in result.stdout
    # Started again: the finished trainings are read back, not redone.
    again = _run(f"--base_model={tmp_path / 'base.keras'}", f"--search_dir={tmp_path / 'search'}",
                 f"--output_dir={out}", "--num_stages=2", "--num_archs=2", "--epochs=1",
                 "--steps_per_epoch=2", "--batch_size=32", "--verbose=0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "trained_archs.json").read_text()) == trained
    # The same architectures (--archs) trained from a supernet's weights: the supernet is
    # trained once into the output directory, scores every architecture again, and each
    # training starts from its view. In the space with depth (--block_skipping): the first
    # one's stage 1 also skips ResNet-8's identity block.
    from_supernet = tmp_path / "from_supernet"
    with_skips = [dict(t, tokens=t["tokens"] + [skip, 0, 0])
                  for t, skip in zip(trained, (1, 0))]
    (tmp_path / "with_skips.json").write_text(json.dumps(with_skips))
    result = _run(f"--base_model={tmp_path / 'base.keras'}",
                  f"--archs={tmp_path / 'with_skips.json'}", "--block_skipping",
                  f"--output_dir={from_supernet}", "--start_from=supernet", "--num_stages=2",
                  "--supernet_epochs=1", "--bn_images=64", "--epochs=1", "--steps_per_epoch=2",
                  "--batch_size=32", "--verbose=0", *results)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (from_supernet / "supernet" / "supernet.keras").is_file()
    rescored = json.loads((from_supernet / "trained_archs.json").read_text())
    assert [t["tokens"] for t in rescored] == [t["tokens"] for t in with_skips]
    assert json.loads((from_supernet / "arch0" / "arch.json").read_text())["skips"] == [
        [1, 0, 0]]
    assert all(np.isfinite(t["supernet_score"]) for t in rescored)
    assert [t["supernet_score"] for t in rescored] != [t["supernet_score"] for t in trained]
    # Written into the search results as well, beside the ranking from the static weights.
    written = json.loads((tmp_path / "search.json").read_text())
    assert written["ranking_from_static"]["start_from"] == "static"
    assert [a["tokens"] for a in written["ranking_from_static"]["archs"]] == [
        t["tokens"] for t in trained]
    assert written["ranking"]["start_from"] == "supernet"
    assert [a["supernet_score"] for a in written["ranking"]["archs"]] == [
        t["supernet_score"] for t in rescored]
    text = (tmp_path / "search.md").read_text()
    assert "from the supernet's weights" in text and "from the static model's weights" in text
