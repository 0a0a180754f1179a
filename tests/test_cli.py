"""The experiments/ command-line contract: exit code 2 and one clear line on bad input."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_describe_prints_space_and_stage_flops():
    result = run_script("describe.py", "--model=resnet20", "--num_stages=3")
    assert result.returncode == 0, result.stderr
    assert "419,904 architectures" in result.stdout
    assert "stage 3: cumulative" in result.stdout
    assert "max abs logit difference 0.00e+00" in result.stdout


def test_describe_with_a_channel_multiple():
    result = run_script(
        "describe.py", "--model=resnet20", "--channel_multiple=8", "--tokens=4,1,0,7,6,3,0,0"
    )
    assert result.returncode == 0, result.stderr
    assert "channels [16], in steps of [8]" in result.stdout
    assert "channel counts multiples of 8" in result.stdout
    # 5/8, 2/8 and 1/8 of 16, 32 and 64 channels, rounded to blocks of 8.
    assert "stage 1: 8/8  8/8  8/8" in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=nope"], "--model must be one of"),
        (["--channel_multiple=0"], "--channel_multiple must be an int >= 1"),
        (["--num_stages=0"], "--num_stages must be >= 1"),
        (["--tokens=1,2"], "takes 8 tokens"),
        (["--model=/nonexistent/m.keras"], "does not exist"),
    ],
)
def test_describe_bad_input_exits_2(args, expected):
    result = run_script("describe.py", *args)
    assert result.returncode == 2
    assert expected in result.stderr
