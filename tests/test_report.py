"""The run report (DESIGN §10) and the train_base -> train_dynamic pipeline end to end."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from s2dnas_tf import calibration, report

ROOT = pathlib.Path(__file__).resolve().parents[1]


def constructed(n=400, seed=0):
    """3 stages: stage 1 right and confident on the first half, unsure elsewhere; stage 2
    right on 3/4; stage 3 right everywhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    probs = np.full((3, n, 4), 0.1)
    for s, right in enumerate([n // 2, 3 * n // 4, n]):
        wrong = (labels + 1) % 4
        target = np.where(np.arange(n) < right, labels, wrong)
        conf = 0.95 if s == 0 else 0.7
        probs[s, np.arange(n), target] = conf
        probs[s] /= probs[s].sum(-1, keepdims=True)
    # Stage 1 is only confident where it is right (elsewhere: wrong, probability 0.4).
    rest = np.arange(n // 2, n)
    probs[0, rest] = 0.2
    probs[0, rest, (labels[rest] + 1) % 4] = 0.4
    return probs, labels


def test_build_report_fields_and_honest_split():
    probs, labels = constructed()
    stage_flops = [10, 30, 100]
    result = report.build_report(
        dataset="toy", model="m", static_accuracy=1.0, static_flops=100,
        stage_flops=stage_flops, val_probs=probs, val_labels=labels,
        test_probs=probs, test_labels=labels, flops_budget_ratio=0.6,
    )
    assert result["num_stages"] == 3
    assert result["static"] == {"accuracy": 1.0, "flops": 100}
    dyn = result["dynamic"]
    assert dyn["avg_flops"] <= 60 + 1e-9
    assert dyn["flops_ratio"] == pytest.approx(dyn["avg_flops"] / 100)
    assert sum(dyn["exit_fractions"]) == pytest.approx(1.0)
    assert dyn["stage_flops"] == stage_flops
    best = calibration.calibrate_for_budget(probs, labels, stage_flops, 60)
    assert dyn["accuracy"] == best.accuracy
    # Oracle: half exit at 1, a quarter at 2, the rest at 3 -> 0.5*10 + 0.25*30 + 0.25*100
    assert result["oracle"] == {"accuracy": 1.0, "avg_flops": pytest.approx(37.5)}
    flops = [p["avg_flops"] for p in result["curve"]]
    assert flops == sorted(flops) and all("threshold_set" in p for p in result["curve"])
    assert result["stage_accuracy"] == [0.5, 0.75, 1.0]
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
