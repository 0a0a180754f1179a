"""The search loop (docs/design.md §5): rewards, cache, determinism, resume; search.py end to end.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import s2dnas_tf as s2d
from s2dnas_tf import rewriter, search
from s2dnas_tf.models import build_model
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def space():
    return s2d.SearchSpace.from_model(build_model("resnet8", input_shape=(8, 8, 1)), num_stages=3)


def toy_evaluate(space, calls):
    """A known reward landscape: closeness to a target architecture (for the loop's tests;
    the real evaluation fine-tunes the candidate)."""
    target = np.array(space.default_arch().tokens)

    def evaluate(arch):
        calls.append(tuple(arch.tokens))
        distance = np.abs(np.array(arch.tokens) - target).sum()
        return {"reward": float(-distance), "val_accuracy": 0.5, "avg_flops": 1.0,
                "flops_ratio": 0.5}

    return evaluate


# --- rewards ----------------------------------------------------------------------------------


def two_stage_probs():
    labels = np.array([0, 1, 0, 1])
    probs = np.array(
        [
            [[0.9, 0.1], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45]],  # right on 0, 2
            [[0.8, 0.2], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8]],  # right everywhere
        ]
    )
    return probs, labels


def test_budget_reward_is_accuracy_at_budget():
    probs, labels = two_stage_probs()
    # static 100, stages cost 20 and 60: budget 0.5 -> 50 allows 3/4 of samples... exits at
    # stage 1 for the two confident right ones (0.9, 0.95) -> 0.5*20 + 0.5*60 = 40 <= 50.
    r = search.compute_reward(probs, labels, [20, 60], 100, search.RewardConfig("budget", 0.5))
    assert r["reward"] == 1.0 and r["budget_met"]
    assert r["avg_flops"] <= 50 and r["flops_ratio"] == r["avg_flops"] / 100


def test_budget_penalty_when_unreachable():
    probs, labels = two_stage_probs()
    r = search.compute_reward(
        probs, labels, [30, 60], 100, search.RewardConfig("budget", 0.2, budget_penalty=1.0)
    )
    # Cheapest: everyone exits at stage 1 (30 FLOPs, accuracy 0.5); overshoot 30/20 - 1 = 0.5.
    assert not r["budget_met"]
    assert r["reward"] == pytest.approx(0.5 - 0.5)


def test_linear_reward():
    probs, labels = two_stage_probs()
    r = search.compute_reward(
        probs, labels, [20, 60], 100, search.RewardConfig("linear", flops_lambda=0.5)
    )
    # Best trade-off: the confident ones exit (40 FLOPs avg, all right): 1 - 0.5 * 0.4 = 0.8.
    assert r["reward"] == pytest.approx(0.8)


def test_reward_config_validation():
    with pytest.raises(ValueError, match="reward must be one of"):
        search.RewardConfig(kind="energy").validate()
    with pytest.raises(ValueError, match=r"flops_budget must be in \(0, 1\]"):
        search.RewardConfig(flops_budget=0).validate()


# --- the loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("searcher", ["random", "rl"])
def test_same_seed_same_architectures_and_cache(tmp_path, space, searcher):
    runs = []
    for i in range(2):
        calls = []
        config = search.SearchConfig(searcher=searcher, num_candidates=10, batch_size=4, seed=3)
        summary = search.run_search(
            space, toy_evaluate(space, calls), config, str(tmp_path / f"run{i}"), log=lambda m: None
        )
        assert summary["evaluated"] == 10
        assert len(calls) == len(set(calls)) == 10  # nothing paid for twice
        runs.append(calls)
    assert runs[0] == runs[1]
    log = [json.loads(line) for line in (tmp_path / "run0" / "search_log.jsonl").open()]
    assert [tuple(r["tokens"]) for r in log] == runs[0]
    assert {"step", "tokens", "reward", "val_accuracy", "avg_flops", "seconds"} <= set(log[0])


@pytest.mark.parametrize("searcher", ["rl", "random"])
def test_token_lists_of_one_network_are_evaluated_once(tmp_path, searcher):
    """With a channel multiple, several token lists build the same network: the search pays
    for each network once and counts it once."""
    model = build_model("resnet8", input_shape=(8, 8, 1))
    # 16/32/64 channels in blocks of 16: 1/2/4 blocks, so many token lists share a network.
    coarse = s2d.SearchSpace.from_model(model, num_stages=3, channel_multiple=16)
    calls = []
    config = search.SearchConfig(searcher=searcher, num_candidates=30, batch_size=4, seed=1)
    summary = search.run_search(
        coarse, toy_evaluate(coarse, calls), config, str(tmp_path), log=lambda m: None
    )
    keys = [coarse.network_key(tokens) for tokens in calls]
    assert len(keys) == len(set(keys)) == summary["evaluated"] == 30
    # Not vacuous: the sampler did draw token lists of already evaluated networks.
    assert summary["samples"] > 30
    log = search.SearchLog(str(tmp_path / "search_log.jsonl"), key=coarse.network_key)
    assert len(log.cache) == len(log.records) == 30


@pytest.mark.parametrize("searcher", ["rl", "random"])
def test_reject_idle_stages(tmp_path, space, searcher):
    calls = []
    config = search.SearchConfig(searcher=searcher, num_candidates=8, batch_size=4, seed=2,
                                 reject_idle_stages=True)
    summary = search.run_search(
        space, toy_evaluate(space, calls), config, str(tmp_path), log=lambda m: None
    )
    assert len(calls) == 8 and summary["rejected"] > 0  # uniform draws are often idle
    assert all(space.idle_stages(space.decode(tokens)) == [] for tokens in calls)


def test_interrupted_search_resumes_without_repaying(tmp_path, space):
    """A crash in the middle of a batch (after some evaluations were logged) and a restart
    give exactly the log of an uninterrupted run, each architecture evaluated once."""
    config = search.SearchConfig(searcher="rl", num_candidates=12, batch_size=4, seed=1)
    full_calls = []
    search.run_search(space, toy_evaluate(space, full_calls), config, str(tmp_path / "full"),
                      log=lambda m: None)

    calls = []
    evaluate = toy_evaluate(space, calls)

    def crashing(arch):
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")
        return evaluate(arch)

    with pytest.raises(KeyboardInterrupt):
        search.run_search(space, crashing, config, str(tmp_path / "cut"), log=lambda m: None)
    assert len(calls) == 6
    # The torn tail of a write cut short is ignored on restart.
    with open(tmp_path / "cut" / "search_log.jsonl", "a") as f:
        f.write('{"step": 6, "tok')
    search.run_search(space, evaluate, config, str(tmp_path / "cut"), log=lambda m: None)
    assert calls == full_calls
    cut_log = [json.loads(line)["tokens"] for line in (tmp_path / "cut" / "search_log.jsonl").open()]
    full_log = [json.loads(line)["tokens"] for line in (tmp_path / "full" / "search_log.jsonl").open()]
    assert cut_log == full_log


def test_rl_beats_random_on_a_known_landscape(tmp_path, space):
    from s2dnas_tf.controller import ControllerConfig

    results = {}
    for searcher in ("rl", "random"):
        calls = []
        config = search.SearchConfig(searcher=searcher, num_candidates=64, batch_size=8, seed=0)
        summary = search.run_search(space, toy_evaluate(space, calls), config,
                                    str(tmp_path / searcher), log=lambda m: None,
                                    controller_config=ControllerConfig(learning_rate=0.03))
        log = [json.loads(line) for line in (tmp_path / searcher / "search_log.jsonl").open()]
        results[searcher] = (summary["best"]["reward"], np.mean([r["reward"] for r in log[-16:]]))
        if searcher == "rl":  # an update per batch of 8 (cached ones too); the policy narrows
            entropy = [u["entropy"] for u in summary["updates"]]
            assert len(entropy) >= 8 and entropy[-1] < entropy[0] / 2, entropy
            # It started from the space's prior (SearchConfig.space_prior's default).
            state = json.loads((tmp_path / searcher / "controller.json").read_text())
            assert state["controller"]["log_prior"] == [
                list(row) for row in space.token_log_prior()]
        else:
            assert summary["updates"] == []
    assert results["rl"][1] > results["random"][1], results


@pytest.mark.parametrize("searcher", ["random", "rl"])
def test_inadmissible_architectures_are_never_evaluated(tmp_path, space, searcher):
    calls, seen = [], []

    def admissible(arch):
        seen.append(tuple(arch.tokens))
        return arch.tokens[0] <= 2  # stage 1 sees at most 3/8 of the first group

    config = search.SearchConfig(searcher=searcher, num_candidates=8, batch_size=4, seed=0)
    summary = search.run_search(space, toy_evaluate(space, calls), config, str(tmp_path),
                                log=lambda m: None, admissible=admissible)
    assert summary["evaluated"] == 8 == len(calls)
    assert all(tokens[0] <= 2 for tokens in calls)
    # Uniform samples break the rule often; each rejection is counted, none evaluated.
    assert summary["rejected"] > 0
    assert any(tokens[0] > 2 for tokens in seen)
    log = [json.loads(line) for line in (tmp_path / "search_log.jsonl").open()]
    assert [tuple(r["tokens"]) for r in log] == calls


def test_a_resumed_constrained_rl_search_keeps_its_rejection_count(tmp_path, space):
    """The rejected samples are part of the saved state: a restart must not count them
    against the sample limit (which only counts the admissible ones)."""
    config = search.SearchConfig(
        searcher="rl", num_candidates=4, batch_size=2, seed=0, max_samples_factor=2
    )

    def admissible(arch):
        return arch.tokens[0] == 0  # 1 in 8 uniform samples

    full_calls, lines = [], []
    full = search.run_search(space, toy_evaluate(space, full_calls), config,
                             str(tmp_path / "full"), log=lines.append, admissible=admissible)
    assert full["evaluated"] == 4 and full["rejected"] > full["samples"] // 2
    # An update taught with inadmissible samples says so (a mean reward of 0 is not a failure).
    assert any(line.startswith("[rl] update:") and "samples inadmissible, reward 0 each" in line
               for line in lines), lines

    calls = []
    evaluate = toy_evaluate(space, calls)

    def crashing(arch):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return evaluate(arch)

    with pytest.raises(KeyboardInterrupt):
        search.run_search(space, crashing, config, str(tmp_path / "cut"),
                          log=lambda m: None, admissible=admissible)
    saved = json.loads((tmp_path / "cut" / "controller.json").read_text())
    assert saved["rejected"] > 0
    resumed = search.run_search(space, evaluate, config, str(tmp_path / "cut"),
                                log=lambda m: None, admissible=admissible)
    assert resumed["evaluated"] == 4
    assert calls == full_calls
    assert (resumed["samples"], resumed["rejected"]) == (full["samples"], full["rejected"])
    # The controller's update history (entropy per update) survives the restart.
    assert resumed["updates"] == full["updates"] and len(full["updates"]) >= 2
    assert all(u["entropy"] > 0 for u in full["updates"])


def test_a_constraint_that_excludes_everything_is_an_error(tmp_path, space):
    config = search.SearchConfig(searcher="random", num_candidates=3, max_samples_factor=2)
    with pytest.raises(RuntimeError, match="none was admissible"):
        search.run_search(space, toy_evaluate(space, []), config, str(tmp_path),
                          log=lambda m: None, admissible=lambda arch: False)


def test_first_stage_flops_cap(space):
    model = build_model("resnet8", input_shape=(8, 8, 1))
    arch = space.default_arch()
    net = s2d.transform(model, arch)
    ratio = s2d.stage_flops(net)[0] / s2d.count_flops(model)
    assert 0 < ratio < 0.5
    assert search.first_stage_flops_cap(model, ratio + 1e-9)(arch)
    assert not search.first_stage_flops_cap(model, ratio * 0.99)(arch)
    # Only stage 1's fractions matter: another stage-2 / concat choice, same verdict.
    cap = search.first_stage_flops_cap(model, ratio + 1e-9)
    other = space.decode(arch.tokens[: space.num_groups] + [7] * space.num_groups + [1, 2])
    assert cap(other) and len(cap.ratios) == 1
    with pytest.raises(ValueError, match=r"max_ratio must be in \(0, 1\]"):
        search.first_stage_flops_cap(model, 0.0)
    with pytest.raises(TypeError, match="max_ratio must be a number"):
        search.first_stage_flops_cap(model, "0.25")


def test_search_config_validation():
    with pytest.raises(ValueError, match="searcher must be one of"):
        search.SearchConfig(searcher="evolution").validate()
    with pytest.raises(TypeError, match="space_prior must be True or False"):
        search.SearchConfig(space_prior="yes").validate()


# --- the evaluator and the runs (s2dnas_tf.evaluators, s2dnas_tf.runs) -----------------------


@pytest.fixture(scope="module")
def digits():
    from s2dnas_tf import data

    return data.load_dataset(data.DataConfig())


def test_finetune_evaluator_scores_a_candidate_and_writes_nothing(tmp_path, space, digits):
    from s2dnas_tf import evaluators, training

    base = build_model("resnet8", input_shape=(8, 8, 1))  # the space's model
    base_path = tmp_path / "base.keras"
    base.save(base_path)
    # Not ephemeral as given: the evaluator makes it so (candidates share no resume state).
    config = training.TrainConfig(str(tmp_path / "candidates"), epochs=1, batch_size=32,
                                  steps_per_epoch=2, augment=False, verbose=0,
                                  distill_weight=1.0)
    reward = search.RewardConfig("budget", flops_budget=0.5)
    arch = space.default_arch()
    records = []
    for given in (str(base_path), base):  # from its file (teacher loaded) or the model
        evaluate = evaluators.make_evaluator("finetune", given, digits, config, reward)
        assert isinstance(evaluate, evaluators.FinetuneEvaluator)
        record = evaluate(arch)
        assert set(record) == {"reward", "val_accuracy", "avg_flops", "flops_ratio",
                               "thresholds", "budget_met"}
        assert 0 <= record["val_accuracy"] <= 1 and len(record["thresholds"]) == 2
        assert record["flops_ratio"] == pytest.approx(record["avg_flops"] / s2d.count_flops(base))
        records.append(record)
    # The same candidate scored twice gets the same reward, to the bit: what makes a search
    # killed and resumed (test_interrupted_search_resumes_without_repaying) the search that
    # was not interrupted.
    assert records[0] == records[1]
    assert not (tmp_path / "candidates").exists()
    with pytest.raises(ValueError, match=r"evaluator must be one of \['finetune', 'supernet'"):
        evaluators.make_evaluator("fine-tune", base, digits, config, reward)
    with pytest.raises(ValueError, match="needs the SearchSpace"):
        evaluators.make_evaluator("supernet", base, digits, config, reward)
    with pytest.raises(ValueError, match="registered already"):
        evaluators.register_evaluator("finetune")(evaluators.FinetuneEvaluator)
    with pytest.raises(ValueError, match="outputs 3 classes"):  # a base that does not fit
        evaluators.FinetuneEvaluator(
            build_model("resnet8", num_classes=3, input_shape=(8, 8, 1)), digits, config,
            reward,
        )


def test_a_time_cost_scores_candidates_by_predicted_tflite_ms(tmp_path, space, digits,
                                                              monkeypatch):
    """`RewardConfig(cost="tflite")`: the budget and the reward count each exit path's
    predicted ms (op times measured once into the cache, then looked up), the record keeps
    the FLOPs of the chosen thresholds beside them."""
    from s2dnas_tf import cost, evaluators, training

    monkeypatch.setenv("S2DNAS_CACHE_DIR", str(tmp_path / "cache"))
    base = build_model("resnet8", input_shape=(8, 8, 1))  # the space's model
    config = training.TrainConfig(epochs=1, batch_size=32, steps_per_epoch=2, augment=False,
                                  verbose=0)
    reward = search.RewardConfig("budget", flops_budget=0.6, cost="tflite")
    arch = space.default_arch()
    evaluate = evaluators.FinetuneEvaluator(base, digits, config, reward)
    record = evaluate(arch)
    assert record["cost"] == "tflite" and len(record["path_ms"]) == 3
    assert 0 < record["path_ms"][0] < record["path_ms"][1] < record["path_ms"][2]
    assert record["ms_ratio"] == pytest.approx(record["avg_ms"] / evaluate.static_cost)
    # The reward is the ms-budget calibration of the same outputs ...
    table = cost.OpTimeTable()  # the cache the evaluator filled
    assert table.ops and cost.static_cost(base, "tflite", table) == evaluate.static_cost
    net = s2d.transform(base, arch)
    assert cost.exit_path_costs(net, "tflite", table) == record["path_ms"]
    assert table.measured == 0  # every op of this arch was in the cache
    # ... and the FLOPs are those of the thresholds it chose.
    assert record["flops_ratio"] == pytest.approx(
        record["avg_flops"] / s2d.count_flops(base))
    assert record["budget_met"] is (record["avg_ms"] <= 0.6 * evaluate.static_cost + 1e-9)
    with pytest.raises(ValueError, match="cost must be one of"):
        search.RewardConfig(cost="gpu").validate()


def test_runs_refuse_unusable_input_before_writing(tmp_path):
    from s2dnas_tf import runs, training

    not_keras = tmp_path / "model.keras"
    not_keras.write_text("not a model")
    out = tmp_path / "run"
    with pytest.raises(runs.InputError, match="must be a Keras model file"):
        runs.run_search(runs.SearchRunConfig(output_dir=str(out), base_model=str(not_keras)))
    with pytest.raises(runs.InputError, match="model must be one of"):
        runs.run_search(runs.SearchRunConfig(output_dir=str(out), model="resnet1000"))
    with pytest.raises(runs.InputError, match="num_candidates"):
        runs.run_search(runs.SearchRunConfig(
            output_dir=str(out), search=search.SearchConfig(num_candidates=0)))
    with pytest.raises(runs.InputError, match="model must be one of"):
        runs.train_base(runs.TrainBaseConfig(output_dir=str(out), model="nope"))
    base_path = tmp_path / "base.keras"
    build_model("resnet8", input_shape=(8, 8, 1)).save(base_path)
    with pytest.raises(runs.InputError, match="takes 8 tokens"):
        runs.train_dynamic(runs.TrainDynamicConfig(str(out), str(base_path), tokens=[1, 2]))
    with pytest.raises(runs.InputError, match="one weight per stage"):
        runs.train_dynamic(runs.TrainDynamicConfig(
            str(out), str(base_path), train=training.TrainConfig(stage_weights=[1.0])))
    assert not out.exists()
    out.mkdir()
    (out / "report.json").write_text("{}")
    with pytest.raises(runs.FinishedRunError, match="holds a finished run"):
        runs.train_dynamic(runs.TrainDynamicConfig(str(out), str(base_path)))
    assert sorted(os.listdir(out)) == ["report.json"]


# --- experiments/search.py --------------------------------------------------------------------


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))


SMALL = ["--dataset=digits", "--model=resnet8", "--base_epochs=3", "--num_candidates=3",
         "--search_batch_size=2", "--supernet_epochs=1", "--epochs=1", "--batch_size=32",
         "--verbose=0"]


def test_latency_refuses_a_directory_without_a_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "latency.py"), f"--run_dir={tmp_path}"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 2
    assert "--run_dir must be a finished run directory" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num_stages=0"], "--num_stages must be >= 1"),
        (["--flops_budget=0"], "--flops_budget must be in (0, 1]"),
        (["--flops_budget=1.5"], "--flops_budget must be in (0, 1]"),
        (["--model=resnet1000"], "model must be one of"),
        (["--dataset=imagenet"], "dataset"),
        (["--base_model=/missing.keras"], "--base_model must be an existing .keras file"),
        (["--searcher=evolution"], "searcher"),
        (["--max_first_stage_flops=0"], "--max_first_stage_flops must be in (0, 1]"),
        (["--max_first_stage_flops=2"], "--max_first_stage_flops must be in (0, 1]"),
    ],
)
def test_search_flag_errors_exit_2(tmp_path, args, expected):
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "search.py"), f"--output_dir={tmp_path}",
         *args],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    # One line says what is accepted (TensorFlow's own start-up lines may precede it).
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # whole search runs, minutes each
def test_search_killed_and_restarted_continues(tmp_path):
    # A given base model (search.py training its own is the quickstart's path).
    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "experiments" / "search.py"), f"--output_dir={out}",
               f"--base_model={tmp_path / 'base.keras'}", "--num_candidates=4",
               *[a for a in SMALL if not a.startswith("--num_candidates")]]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log_path = out / "search_log.jsonl"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if log_path.exists() and len(log_path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the search did not evaluate two candidates in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    before = [json.loads(l) for l in log_path.read_text().splitlines() if l.strip()]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming:" in result.stdout
    after = [json.loads(l) for l in log_path.read_text().splitlines()]
    assert [r["tokens"] for r in after[: len(before)]] == [r["tokens"] for r in before]
    assert len(after) == 4 and len({tuple(r["tokens"]) for r in after}) == 4
    for name in ("config.json", "search_log.jsonl", "arch.json", "report.json", "report.md",
                 "curve.png", "model.tflite", "saved_model/resnet8/1/saved_model.pb"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["evaluated"] == 4
    # That the resumed search is the one that was not interrupted follows from the
    # controller's resume (test_interrupted_search_resumes_without_repaying) and a
    # candidate's reward being the same each time it is scored
    # (test_finetune_evaluator_scores_a_candidate_and_writes_nothing).
    # A finished run is not overwritten without --overwrite.
    again = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_a_first_stage_cap_below_the_thinnest_first_stage_is_refused(tmp_path):
    """search.py --max_first_stage_flops below what the space's thinnest first stage costs:
    exit 2 before anything is trained or written. (That every evaluated architecture obeys
    a cap is checked on the quickstart's run, which searches with one.)"""
    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    too_low = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "search.py"), *SMALL,
         f"--base_model={tmp_path / 'base.keras'}", f"--output_dir={tmp_path / 'refused'}",
         "--max_first_stage_flops=0.001"],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert too_low.returncode == 2
    assert "even the space's thinnest first stage costs more" in too_low.stderr
    assert not (tmp_path / "refused" / "search_log.jsonl").exists()


@pytest.mark.slow  # whole search runs, minutes each
def test_quickstart_end_to_end(tmp_path):
    """README's quickstart: the whole pipeline on the built-in digits_overlap, as users run
    it (the supernet evaluator included), then its run read back by the other tools."""
    out = tmp_path / "quickstart"
    start = time.time()
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "search.py"),
         f"--flagfile={ROOT / 'experiments' / 'configs' / 'quickstart.flags'}",
         f"--output_dir={out}"],
        capture_output=True, text=True, env=_env(), timeout=900, cwd=ROOT,
    )
    seconds = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    # The terminal shows the run's output, not TensorFlow's notices (start-up, retracing).
    for line in ("oneDNN", "cuda", "InitializeLog", "tf.function retracing", "NodeDef"):
        assert line not in result.stderr, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"] == "digits_overlap" and report["num_stages"] == 3
    assert report["search"]["evaluated"] == 30
    assert report["static"]["accuracy"] > 0.85
    # Calibrated for 50% of the static FLOPs on validation; measured on test.
    assert report["dynamic"]["flops_ratio"] <= 0.6
    assert report["dynamic"]["accuracy"] > 0.8
    # Dynamic inference shows: most images leave at the cheap stage 1, and the later stages
    # answer some (on plain digits stage 1 answered all of them).
    exits = report["dynamic"]["exit_fractions"]
    assert exits[0] >= 0.5 and sum(exits[1:]) >= 0.03, exits
    assert len(report["curve"]) >= 3
    # Scored from the supernet, kept in the run directory, in well under a second each.
    assert (out / "supernet" / "supernet.keras").exists()
    assert report["search"]["seconds_per_candidate"] < 5
    records = [json.loads(l) for l in (out / "search_log.jsonl").read_text().splitlines()]
    assert len(records) == 30
    # Every candidate obeys --max_first_stage_flops=0.15.
    import keras

    base = keras.saving.load_model(out / "base" / "model.keras")
    space = s2d.SearchSpace.from_model(base, num_stages=3)
    static = s2d.count_flops(base)
    for record in records:
        plan = rewriter.plan(space, space.decode(record["tokens"]))
        assert plan.stage_flops()[0] / static <= 0.15, record["tokens"]
    # The net trained and reported is the log's best-rewarded candidate, every stage of it
    # adding channels (--reject_idle_stages).
    best = max(records, key=lambda r: r["reward"])
    arch = json.loads((out / "arch.json").read_text())
    assert arch["tokens"] == best["tokens"] and report["arch"]["tokens"] == best["tokens"]
    assert report["search"]["best_reward"] == best["reward"]
    assert space.idle_stages(space.decode(best["tokens"])) == []
    # The kept supernet is reused, not trained again, and gives the best candidate the reward
    # the search logged (what a resumed or repeated search relies on).
    from s2dnas_tf import data, evaluators, training

    flags_used = json.loads((out / "config.json").read_text())
    splits = data.load_dataset(data.DataConfig(
        name="digits_overlap", seed=flags_used["seed"],
        validation_fraction=flags_used["validation_fraction"]))
    trained_at = (out / "supernet" / "supernet.keras").stat().st_mtime
    rescorer = evaluators.SupernetEvaluator(
        str(out / "base" / "model.keras"), splits,
        training.TrainConfig(output_dir=str(out / "supernet"), epochs=1, verbose=0,
                             seed=flags_used["seed"], batch_size=flags_used["batch_size"]),
        search.RewardConfig(kind="budget", flops_budget=0.5), space=space,
    )
    assert (out / "supernet" / "supernet.keras").stat().st_mtime == trained_at
    rescored = rescorer(space.decode(best["tokens"]))
    assert rescored["reward"] == pytest.approx(best["reward"], abs=1e-6)
    assert rescored["flops_ratio"] == pytest.approx(best["flops_ratio"], abs=1e-9)
    print(f"quickstart wall time {seconds:.0f} s")
    # Its exported models, timed one image at a time (measured, never asserted fast).
    timed = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "latency.py"), f"--run_dir={out}",
         "--num_images=64", "--warmup=5"],
        capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT,
    )
    assert timed.returncode == 0, timed.stderr[-3000:]
    latency = json.loads((out / "report.json").read_text())["latency"]
    assert latency["num_images"] == 64
    for kind in ("static", "dynamic"):  # serving_default on one batch of 64
        assert latency["savedmodel_b64"][kind]["mean_ms_per_image"] > 0
    assert "savedmodel batch 64:" in timed.stdout
    for runtime in ("savedmodel", "tflite"):
        for kind in ("static", "dynamic"):
            assert latency[runtime][kind]["median_ms"] > 0
            assert latency[runtime][kind]["mean_ms"] > 0
    assert sum(latency["exit_fractions"]) == pytest.approx(1.0)
    assert len(latency["exit_fractions"]) == 3
    for runtime in ("savedmodel", "tflite"):  # a median for each stage an image stopped at
        by_exit = latency[runtime]["dynamic"]["median_ms_by_exit"]
        assert [m is not None for m in by_exit] == [f > 0 for f in latency["exit_fractions"]][
            : len(by_exit)]
    assert "dynamic median by exit stage" in timed.stdout
    for line in ("oneDNN", "cuda", "InitializeLog"):  # TensorFlow started quietly
        assert line not in timed.stderr, timed.stderr[-2000:]
    # export/export_run.py: SavedModel + float and int8 TFLite, with the int8 cost stated.
    exported = tmp_path / "served"
    args = [sys.executable, str(ROOT / "export" / "export_run.py"), f"--run_dir={out}",
            f"--export_dir={exported}", "--name=digits", "--thresholds=0.95,0.95", "--int8",
            "--num_images=60"]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (exported / "digits" / "1" / "saved_model.pb").exists()
    summary = json.loads((exported / "digits.int8.json").read_text())
    assert summary["num_images"] == 60 and summary["float_accuracy"] > 0.8
    # Full int8 costs little: nearly the float model's accuracy, mostly the same exits.
    assert abs(summary["int8_cost_points"]) <= 10 and summary["same_exit_stage"] >= 0.8
    assert summary["int8_tflite_bytes"] < summary["float_tflite_bytes"]
    again = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 2 and "--overwrite" in again.stderr.strip().splitlines()[-1]
