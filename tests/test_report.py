"""The run report (DESIGN §10) and the train_base -> train_dynamic pipeline end to end."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from s2dnas_tf import calibration, report
from s2dnas_tf.models import build_model
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[1]


def constructed(n=400, seed=0, right_fractions=(0.5, 0.75, 1.0), stage1_confidence=0.95):
    """Stage outputs [3, n, 4] with a known answer.

    Stage s is right on the first `right_fractions[s]` of the samples and wrong (on the next
    class) elsewhere. Stage 1 is confident where it is right (max probability
    `stage1_confidence` / (`stage1_confidence` + 0.3): 0.76 by default) and unsure where it
    is wrong (0.4); stages 2 and 3 have max probability 0.7 everywhere.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    probs = np.full((3, n, 4), 0.1)
    for s, fraction in enumerate(right_fractions):
        right = int(fraction * n)
        wrong = (labels + 1) % 4
        target = np.where(np.arange(n) < right, labels, wrong)
        conf = stage1_confidence if s == 0 else 0.7
        probs[s, np.arange(n), target] = conf
        probs[s] /= probs[s].sum(-1, keepdims=True)
    # Stage 1 is only confident where it is right (elsewhere: wrong, probability 0.4).
    rest = np.arange(int(right_fractions[0] * n), n)
    probs[0, rest] = 0.2
    probs[0, rest, (labels[rest] + 1) % 4] = 0.4
    return probs, labels


def test_build_report_fields_and_honest_split():
    """Thresholds come from validation, every figure from test.

    The two splits differ so that swapping them shows: on test, stage 1 is right on a
    quarter of the samples (not half) and less confident there (0.67, below validation's
    0.76), so validation's thresholds let nobody exit early on test, whereas thresholds
    calibrated on test would (the guard below checks that they would).
    """
    val_probs, val_labels = constructed()
    test_probs, test_labels = constructed(
        n=200, seed=1, right_fractions=(0.25, 0.5, 1.0), stage1_confidence=0.6
    )
    stage_flops = [10, 30, 100]
    result = report.build_report(
        dataset="toy", model="m", static_accuracy=1.0, static_flops=100,
        stage_flops=stage_flops, val_probs=val_probs, val_labels=val_labels,
        test_probs=test_probs, test_labels=test_labels, flops_budget_ratio=0.6,
    )
    assert result["num_stages"] == 3
    assert result["static"] == {"accuracy": 1.0, "flops": 100}
    dyn = result["dynamic"]
    assert dyn["stage_flops"] == stage_flops
    assert dyn["flops_ratio"] == pytest.approx(dyn["avg_flops"] / 100)
    # Validation: the confident half exits at stage 1, the rest runs to stage 3, so the
    # average is 0.5 * 10 + 0.5 * 100 = 55 <= 60 with every answer right.
    on_val = calibration.calibrate_for_budget(val_probs, val_labels, stage_flops, 60)
    assert (on_val.accuracy, on_val.avg_flops) == (1.0, 55.0)
    assert dyn["thresholds"] == list(on_val.thresholds)
    assert dyn["validation_accuracy"] == on_val.accuracy == 1.0
    assert dyn["budget_met_on_validation"] is True
    # Test, under validation's thresholds: stage 1's 0.67 is below tau_1 = 0.76 and stage
    # 2 never exits, so every sample runs to stage 3 (right, 100 FLOPs).
    assert dyn["exit_fractions"] == [0.0, 0.0, 1.0]
    assert (dyn["accuracy"], dyn["avg_flops"]) == (1.0, 100.0)
    # Guard: thresholds calibrated on test would have given another report.
    on_test = calibration.calibrate_for_budget(test_probs, test_labels, stage_flops, 60)
    assert list(on_test.exit_fractions) != dyn["exit_fractions"]
    assert on_test.avg_flops <= 60 < dyn["avg_flops"]
    # Oracle on test: a quarter exits at 1, a quarter at 2, half at 3 -> 2.5 + 7.5 + 50.
    # (On validation it would be 0.5 * 10 + 0.25 * 30 + 0.25 * 100 = 37.5.)
    assert result["oracle"] == {"accuracy": 1.0, "avg_flops": pytest.approx(60.0)}
    assert result["stage_accuracy"] == [0.25, 0.5, 1.0]
    # Curve: validation's Pareto front, each threshold set measured on test.
    val_front = calibration.accuracy_flops_curve(val_probs, val_labels, stage_flops)
    expected = sorted(
        (
            calibration.evaluate_policy(test_probs, test_labels, stage_flops, p.thresholds)
            for p in val_front
        ),
        key=lambda p: p.avg_flops,
    )
    assert [tuple(p["threshold_set"]) for p in result["curve"]] == [
        p.thresholds for p in expected
    ]
    assert [(p["accuracy"], p["avg_flops"]) for p in result["curve"]] == [
        (p.accuracy, p.avg_flops) for p in expected
    ]
    test_front = calibration.accuracy_flops_curve(test_probs, test_labels, stage_flops)
    assert {p.thresholds for p in test_front} != {p.thresholds for p in val_front}
    json.dumps(result)


def test_unreachable_budget_falls_back_to_cheapest_and_says_so(tmp_path):
    probs, labels = constructed()
    result = report.build_report(
        dataset="toy", model="m", static_accuracy=1.0, static_flops=100,
        stage_flops=[20, 30, 100], val_probs=probs, val_labels=labels,
        test_probs=probs, test_labels=labels, flops_budget_ratio=0.1,
    )
    assert result["dynamic"]["budget_met_on_validation"] is False
    assert result["dynamic"]["exit_fractions"] == [1.0, 0.0, 0.0]
    report.write_report(result, str(tmp_path))
    assert "could not be met" in (tmp_path / "report.md").read_text()


def test_write_report_files(tmp_path):
    probs, labels = constructed()
    result = report.build_report(
        dataset="toy", model="m", static_accuracy=1.0, static_flops=100,
        stage_flops=[10, 30, 100], val_probs=probs, val_labels=labels,
        test_probs=probs, test_labels=labels, flops_budget_ratio=0.5,
        arch={"readable": "3 stage(s) ..."},
    )
    paths = report.write_report(result, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["curve.png", "report.json", "report.md"]
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(result))
    md = (tmp_path / "report.md").read_text()
    assert "| static |" in md and "| oracle |" in md and "3 stage(s)" in md
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_bad_budget_is_refused():
    probs, labels = constructed()
    with pytest.raises(ValueError, match="flops_budget_ratio must be in"):
        report.build_report(
            dataset="toy", model="m", static_accuracy=1.0, static_flops=100,
            stage_flops=[10, 30, 100], val_probs=probs, val_labels=labels,
            test_probs=probs, test_labels=labels, flops_budget_ratio=1.5,
        )


def _run(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_train_dynamic_end_to_end_tiny(tmp_path):
    """The fast tier's run of train_dynamic.py (the slow test below also trains the base
    and checks accuracies): a few steps of a 2-stage net from an untrained base, then
    calibration, the report and the exports, every file in place."""
    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    run_dir = tmp_path / "dynamic"
    result = _run("train_dynamic.py", f"--base_model={tmp_path / 'base.keras'}",
                  "--num_stages=2", "--epochs=1", "--steps_per_epoch=2", "--batch_size=32",
                  f"--output_dir={run_dir}", "--verbose=0", "--flops_budget=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dynamic: test accuracy" in result.stdout
    for name in ("config.json", "arch.json", "report.json", "report.md", "curve.png",
                 "multistage.keras", "model.tflite"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "saved_model").rglob("saved_model.pb"))
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["dataset"] == "digits" and rep["num_stages"] == 2
    assert rep["dynamic"]["flops_budget_ratio"] == 0.5
    assert len(rep["dynamic"]["thresholds"]) == 1 and len(rep["stage_accuracy"]) == 2
    net = keras.saving.load_model(run_dir / "multistage.keras")
    assert len(net.outputs) == 2


def test_train_dynamic_with_a_stage_skipping_a_block(tmp_path):
    """--block_skipping: the tokens end with the skips; stage 1 skips ResNet-8's identity
    block, trains, calibrates and exports; the SavedModel answers as the Keras net."""
    import tensorflow as tf

    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    run_dir = tmp_path / "dynamic"
    result = _run("train_dynamic.py", f"--base_model={tmp_path / 'base.keras'}",
                  "--num_stages=2", "--block_skipping", "--tokens=3,3,3,0,1,0,0",
                  "--epochs=1", "--steps_per_epoch=2", "--batch_size=32",
                  f"--output_dir={run_dir}", "--verbose=0", "--flops_budget=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    arch = json.loads((run_dir / "arch.json").read_text())
    assert arch["skips"] == [[1, 0, 0]] and "skips the last 1 block(s)" in arch["readable"]
    net = keras.saving.load_model(run_dir / "multistage.keras")
    names = [layer.name for layer in net.layers]
    assert "stage2_resnet8_stage1_block1_conv1" in names
    assert "stage1_resnet8_stage1_block1_conv1" not in names
    (saved,) = (run_dir / "saved_model").rglob("saved_model.pb")
    loaded = tf.saved_model.load(str(saved.parent))
    x = helpers.images(net, n=6, scale=16.0)
    logits = [np.asarray(o) for o in net(x)]
    out = loaded.signatures["serving_with_thresholds"](
        images=tf.constant(x), thresholds=tf.constant([2.0]))  # nothing exits early
    np.testing.assert_allclose(out["logits"].numpy(), logits[1], atol=1e-4)
    out = loaded.signatures["serving_with_thresholds"](
        images=tf.constant(x), thresholds=tf.constant([0.0]))  # everything exits at 1
    np.testing.assert_allclose(out["logits"].numpy(), logits[0], atol=1e-4)


@pytest.mark.parametrize("runtime", ["tflite", "saved_model"])
def test_train_dynamic_calibrates_for_a_time_budget(tmp_path, monkeypatch, runtime):
    """--cost=tflite|saved_model --latency_budget: the thresholds meet a budget of predicted
    time on validation, and the report says so (its "cost" entry, report.md)."""
    monkeypatch.setenv("S2DNAS_CACHE_DIR", str(tmp_path / "cache"))
    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    run_dir = tmp_path / "dynamic"
    args = [f"--base_model={tmp_path / 'base.keras'}", "--num_stages=2", "--epochs=1",
            "--steps_per_epoch=2", "--batch_size=32", f"--output_dir={run_dir}",
            "--verbose=0", f"--cost={runtime}", "--latency_budget=0.7"]
    result = _run("train_dynamic.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{runtime} time (predicted)" in result.stdout
    rep = json.loads((run_dir / "report.json").read_text())
    cost = rep["cost"]
    assert cost["cost"] == runtime and cost["budget_ratio"] == 0.7 and cost["predicted"]
    assert len(cost["path_ms"]) == 2 and 0 < cost["path_ms"][0] < cost["path_ms"][1]
    assert rep["dynamic"]["flops_budget_ratio"] is None  # the budget was in time
    if rep["dynamic"]["budget_met_on_validation"]:
        assert cost["validation_expected_ms"] <= 0.7 * cost["static_ms"] + 1e-9
    # Test time per image: the path times weighted by the test exits.
    expected = sum(f * t for f, t in zip(rep["dynamic"]["exit_fractions"], cost["path_ms"]))
    assert cost["expected_ms"] == pytest.approx(expected)
    assert all("avg_ms" in p for p in rep["curve"])
    assert f"{runtime} time (predicted from op times)" in (run_dir / "report.md").read_text()
    # ... and measured: the exported dynamic and static models timed in turns on the
    # runtime, over the first test images (their own exits).
    assert cost["measured_images"] == 200  # digits' test split holds more
    assert cost["measured_ms"] > 0 and cost["measured_static_ms"] > 0
    assert len(cost["measured_path_ms"]) == 2
    assert any(t is not None and t > 0 for t in cost["measured_path_ms"])
    assert f"Time ({runtime}, batch 1, measured on the exported models" in (
        run_dir / "report.md").read_text()
    assert f"{runtime} time (measured on" in result.stdout
    # The op times were measured into the cache the run was pointed at.
    assert list((tmp_path / "cache").glob(f"{runtime}_ops_*.json"))


@pytest.mark.parametrize("args, expected", [
    (["--cost=tflite"], "--cost=tflite needs --latency_budget"),
    (["--latency_budget=0.5"], "--latency_budget applies with --cost=tflite or saved_model"),
])
def test_inconsistent_budget_flags_exit_2(tmp_path, args, expected):
    base = build_model("resnet8", input_shape=(8, 8, 1), width_multiplier=0.5)
    base.save(tmp_path / "base.keras")
    for script in ("train_dynamic.py", "search.py"):
        out = tmp_path / script
        result = _run(script, f"--base_model={tmp_path / 'base.keras'}",
                      f"--output_dir={out}", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        assert expected in result.stderr.strip().splitlines()[-1]
        assert not out.exists()


@pytest.mark.slow
def test_base_then_dynamic_pipeline_on_digits(tmp_path):
    base_dir, run_dir = tmp_path / "base", tmp_path / "dynamic"
    result = _run("train_base.py", "--model=resnet8", "--epochs=3", "--batch_size=32",
                  f"--output_dir={base_dir}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    base_report = json.loads((base_dir / "base_report.json").read_text())
    assert base_report["test_accuracy"] > 0.5 and base_report["flops"] > 0
    args = [f"--base_model={base_dir / 'model.keras'}", "--epochs=2", "--batch_size=32",
            f"--output_dir={run_dir}", "--verbose=0", "--flops_budget=0.5"]
    result = _run("train_dynamic.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dynamic: test accuracy" in result.stdout
    for name in ("config.json", "arch.json", "report.json", "report.md", "curve.png",
                 "multistage.keras", "model.tflite"):
        assert (run_dir / name).exists(), name
    rep = json.loads((run_dir / "report.json").read_text())
    for key in ("dataset", "model", "num_stages", "static", "dynamic", "oracle", "curve",
                "search"):
        assert key in rep
    assert rep["dataset"] == "digits" and rep["num_stages"] == 3
    assert 0 <= rep["dynamic"]["accuracy"] <= 1
    assert json.loads((run_dir / "config.json").read_text())["flops_budget"] == 0.5
    # A finished run is not overwritten without --overwrite.
    again = _run("train_dynamic.py", *args)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--base_model=/nope.keras", "--output_dir=x"], "--base_model must be an existing"),
        (["--flops_budget=1.5"], "--flops_budget must be in (0, 1]"),
        (["--num_stages=0"], "--num_stages must be >= 1"),
        (["--dataset=imagenet"], "dataset"),
        (["--channel_multiple=0"], "--channel_multiple must be an int >= 1"),
        ([f"--base_model={ROOT / 'experiments' / 'checkpoints' / 'cifar10_resnet20.keras'}",
          "--early_exit", "--channel_multiple=8", "--output_dir=x"],
         "applies to S2DNAS architectures"),
    ],
)
def test_train_dynamic_flag_errors_exit_2(args, expected, tmp_path):
    result = _run("train_dynamic.py", *args)
    assert result.returncode == 2
    assert expected in result.stderr
