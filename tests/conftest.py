"""Shared test set-up: quiet TensorFlow, the TensorFlow backend, and the real-data path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Under `-n N` (N >= 2) each worker's TensorFlow, and the scripts it starts, use one thread
# per op pool: N workers already fill N cores, and pools sized to every core in every worker
# spend the run switching between threads. Set before TensorFlow loads; an explicit setting
# (e.g. a script's --latency_threads) still wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= 2:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pathlib

import pytest

# The real CIFAR-10 copies the project's tests read (../shared/data, beside the checkout).
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA


# The extended tier: checks that repeat what a default-run test checks, at full size or over
# more model families or methods. They took 20 of the suite's 48 test-minutes on a slower
# 2-core machine, so the default run (README's test command) skips them; run them before a
# change to the rewriter's rules, the supernet, the training strategies or the experiments'
# benchmark and ranking scripts lands (WORKSPACE.md, "Tests"):
# `python -m pytest -n 2 --extended` runs every tier.
def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true", default=False,
                     help="Also run the tests marked extended (full-size and per-family "
                          "repeats of default-run tests).")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended tier: run with --extended")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)
