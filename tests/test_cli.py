"""The experiments/ command-line contract: exit code 2 and one clear line on bad input."""

import json
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
    # TensorFlow's native start-up lines (oneDNN, CUDA probing, absl) stay off the terminal.
    for line in ("oneDNN", "cuda", "InitializeLog", "cpu_feature_guard"):
        assert line not in result.stderr, result.stderr


def test_describe_with_a_channel_multiple():
    result = run_script(
        "describe.py", "--model=resnet20", "--channel_multiple=8", "--tokens=4,1,0,7,6,3,0,0"
    )
    assert result.returncode == 0, result.stderr
    assert "channels [16], in steps of [8]" in result.stdout
    assert "channel counts multiples of 8" in result.stdout
    # 5/8, 2/8 and 1/8 of 16, 32 and 64 channels, rounded to blocks of 8.
    assert "stage 1: 8/8  8/8  8/8" in result.stdout


def test_describe_with_block_skipping():
    result = run_script(
        "describe.py", "--model=resnet20", "--block_skipping",
        "--tokens=2,2,2,4,4,4,0,0,3,2,2,1,0,0",
    )
    assert result.returncode == 0, result.stderr
    assert "block skipping over 7 identity blocks" in result.stdout
    assert "skips the last 3 block(s) of 32x32, 2 block(s) of 16x16" in result.stdout
    refused = run_script("describe.py", "--model=resnet20", "--block_skipping",
                         "--tokens=2,2,2,4,4,4,0,0,0,0,0,1,0,0")
    assert refused.returncode == 2 and "no more identity blocks" in refused.stderr


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


@pytest.mark.parametrize("script", ["search.py", "train_dynamic.py"])
def test_a_base_model_that_is_no_keras_archive_exits_2_and_writes_nothing(tmp_path, script):
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("not a model\n")
    out = tmp_path / "run"
    result = run_script(script, f"--base_model={not_keras}", f"--output_dir={out}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{script}: base_model must be a Keras model file"), last
    assert str(not_keras) in last and "Traceback" not in result.stderr
    assert not out.exists()


def test_the_benchmark_shares_the_runs_flags_with_its_own_defaults():
    """One definition per flag: benchmark.py changes the defaults of the flags it shares
    with search.py (its recipe), search.py keeps its own."""
    search = run_script("search.py", "--helpfull")
    benchmark = run_script("benchmark.py", "--helpfull")
    assert "--num_candidates:" in search.stdout and "--num_candidates:" in benchmark.stdout

    def default(text, name):
        """The "(default: ...)" of --name in absl's help ("None": absl prints none)."""
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"--{name}:"))
        end = next(i for i in range(at + 1, len(lines)) if lines[i].strip().startswith("--"))
        found = [line.strip() for line in lines[at:end] if line.strip().startswith("(default:")]
        return found[0][len("(default: '"):-2] if found else "None"

    for name, in_search, in_benchmark in [("num_candidates", "100", "300"),
                                          ("candidate_steps", "None", "60"),
                                          ("epochs", "30", "10"), ("base_epochs", "30", "15"),
                                          ("channel_multiple", "1", "1")]:
        assert default(search.stdout, name) == in_search, name
        assert default(benchmark.stdout, name) == in_benchmark, name


def _tiny_rgb_folder(root, corrupt=None):
    """root/{train,test}/{a,b}/000i.png, 10x12 RGB; `corrupt` names a file to break."""
    import numpy as np
    import tensorflow as tf

    for split in ("train", "test"):
        for c, name in enumerate(("a", "b")):
            os.makedirs(root / split / name)
            for i in range(3):
                pixels = np.full((10, 12, 3), 60 * c + i, np.uint8)
                tf.io.write_file(str(root / split / name / f"{i:04d}.png"),
                                 tf.io.encode_png(pixels))
    if corrupt:
        (root / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.mark.parametrize("case", ["corrupt image", "grey model"])
def test_bad_streamed_data_exits_2_naming_the_file_and_writes_nothing(tmp_path, case):
    """A corrupt image anywhere in a streamed folder, or images whose channels the model
    does not take: exit 2, one line naming the file, no output folder."""
    import keras

    grey = case == "grey model"
    root = _tiny_rgb_folder(tmp_path / "imgs", corrupt=None if grey else "test/b/0001.png")
    inputs = keras.Input((10, 12, 1 if grey else 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    keras.Model(inputs, keras.layers.Dense(2, name="logits")(x), name="tiny").save(
        tmp_path / "tiny.keras")
    out = tmp_path / "run"
    # One entry point each: they load data through the same runs.py code.
    for script in ["train_dynamic.py" if grey else "search.py"]:
        result = run_script(script, f"--base_model={tmp_path / 'tiny.keras'}",
                            "--dataset=image_folder", f"--data_dir={root}",
                            f"--output_dir={out}", "--num_stages=2")
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        if grey:
            assert "takes images with 1 channels but dataset 'image_folder' has 3-channel" in last
            assert str(root / "train" / "a" / "0000.png") in last
        else:
            assert "Cannot decode image" in last and str(root / "test/b/0001.png") in last
        assert not out.exists()


def test_search_comparison_with_block_skipping_and_a_noskip_searcher(tmp_path):
    """search_comparison.py --block_skipping: one supernet of the space with depth, random
    search over it and over the architectures that skip nothing, each scored by it."""
    from tests import helpers

    helpers.save_tiny_digits_base(tmp_path / "base.keras")
    result = run_script(
        "search_comparison.py", "--dataset=digits", f"--base_model={tmp_path / 'base.keras'}",
        "--num_stages=2", "--block_skipping", "--supernet_epochs=1", "--batch_size=64",
        "--num_candidates=3", "--search_batch_size=1", "--searchers=random,random_noskip",
        "--seeds=0", "--bn_images=64", f"--output_dir={tmp_path / 'run'}",
        f"--results_dir={tmp_path / 'results'}", "--results_name=cmp", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results" / "cmp.json").read_text())
    skipping, plain = data["searchers"]["random"][0], data["searchers"]["random_noskip"][0]
    assert skipping["candidates"] == plain["candidates"] == 3
    assert len(skipping["best_tokens"]) == 7 and len(plain["best_tokens"]) == 4
    refused = run_script("search_comparison.py", "--dataset=digits",
                         f"--base_model={tmp_path / 'base.keras'}", "--searchers=random_noskip",
                         f"--output_dir={tmp_path / 'other'}")
    assert refused.returncode == 2 and "with --block_skipping" in refused.stderr
